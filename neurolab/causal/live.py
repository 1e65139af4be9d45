"""The live model: the model behind a store, run on the corpus with hooks at the store's site names.

A :class:`LiveModel` holds the model (frozen, eval mode), its tokenizer, a task head
(:mod:`neurolab.causal.heads`: what the model predicts, scored per word or per sentence) and a
corpus tokenised, aligned and batched as extraction does (:class:`~neurolab.causal.words.LiveCorpus`).
It answers four questions, each over the sentences of a split (optionally the first ``max_sentences``):

* :meth:`LiveModel.run`: the head's predictions with no intervention and under each of several
  :class:`~neurolab.causal.interventions.InterventionSet` (a curve), per example;
* :meth:`LiveModel.sweep`: exact leave-one-out, many single-neuron ablations of one site per forward
  pass (the batch repeated once per neuron);
* :meth:`LiveModel.first_order`: gradient x (ablated - actual) at every unit of several sites from one
  forward and one backward pass;
* :meth:`LiveModel.forward`: one batch with any hook functions (what other causal methods build on:
  gates, attribution paths); :meth:`LiveModel.record_prefix` runs a batch plainly and keeps its blocks'
  outputs, after which ``forward(batch, fns, start=live.site_start(site), expand=m)`` reruns only the
  blocks above ``site`` for ``m`` copies of the batch.

**Cached prefix.** An intervention at ``layers.{l}`` (output of block ``l``) or inside block ``l``
changes nothing below it. :meth:`run` and :meth:`sweep` run the model once per batch with no
intervention, keep every block's output, and for each intervention replay the blocks below the
lowest intervened site from that cache (the blocks' ``forward`` return their cached outputs) so only
the blocks above are computed again. A set that touches ``embeddings`` reruns every block.

**Checks.** Every hook of an intervention must fire, and a set with ``k > 0`` neurons must change
the head's output somewhere in the split: either failure raises
:class:`~neurolab.causal.interventions.InterventionError`. A site above the head's site (which then
never influences the task) is refused up front.

**Sites.** Names are the store's (:mod:`neurolab.models.sites`). For models whose transformers
output applies a final norm to the last hidden state (GPT-2, T5), ``layers.{L-1}`` here is that
norm's output, the value the store holds, rather than the block's raw output.

Example::

    >>> from neurolab.causal import LiveModel, TaggerHead, make_set        # doctest: +SKIP
    >>> head = TaggerHead(site="layers.5").fit(data_of_layer5)            # doctest: +SKIP
    >>> live = LiveModel.from_corpus(model, tok, head, corpus, splits, concept)   # doctest: +SKIP
    >>> res = live.run([make_set("zero", [("layers.3", 17)])], split="test")     # doctest: +SKIP
    >>> res.accuracy(0), res.accuracy(None)   # ablated, base                      # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..models.hooks import intervene
from ..models.loading import model_identity, model_max_length
from ..models.sites import Site, find_blocks, resolve_sites, site_table
from .interventions import (Fired, InterventionError, InterventionSet, SCOPES, hook_fn, unit_sweep_fn)
from .words import LiveBatch, LiveCorpus

log = logging.getLogger(__name__)

__all__ = ["LiveModel", "RunResult", "HeadOut", "base_concept", "concept_values_of", "OBJECTIVES"]

OBJECTIVES = ("loss", "logit", "prob")
FINAL_NORMS = ("ln_f", "final_layer_norm", "norm", "final_layernorm", "ln_final", "final_norm")


class _Stop(Exception):
    """Raised by the head's capture hook to end a forward pass once the head has its input."""


@dataclass
class HeadOut:
    """Per-example outputs of a head for one batch; tensors ``[m, n]`` (``m`` copies of the batch)."""

    ids: np.ndarray  # global example ids (rows, or sentences), [n]
    loss: torch.Tensor
    logit: torch.Tensor  # the gold class's logit (LM: mean over the word's tokens)
    prob: torch.Tensor  # the gold class's probability (LM: geometric mean over tokens)
    correct: torch.Tensor  # bool
    pred: torch.Tensor  # long (-1 where the head has no class prediction)
    signal: torch.Tensor  # [m, ...] raw output, compared to detect a change
    p_target: torch.Tensor | None = None
    #: class logits ``[m, n, C]`` (tagger, classifier), or the LM's logits at its scored tokens
    #: ``[m, N, vocab]`` (``token_example`` maps each scored token to its example); for divergences
    logits: torch.Tensor | None = None
    token_example: torch.Tensor | None = None

    def objective(self, name: str) -> torch.Tensor:
        """What an ablation increases: ``loss``, ``-logit`` or ``-prob`` of the gold class."""
        if name == "loss":
            return self.loss
        if name == "logit":
            return -self.logit
        if name == "prob":
            return -self.prob
        raise ConfigError(f"objective {name!r}: expected one of {', '.join(OBJECTIVES)}")


@dataclass
class Examples:
    """The examples of a split (word rows or sentences), sorted, with their labels."""

    ids: np.ndarray
    labels: np.ndarray  # object: label strings (None: unlabelled)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ids, ids)

    def mask(self, values: set[str] | None, negate: bool = False) -> np.ndarray:
        if values is None:
            return np.zeros(len(self.ids), bool) if not negate else np.ones(len(self.ids), bool)
        inside = np.array([lab is not None and str(lab) in values for lab in self.labels], dtype=bool)
        if negate:
            labelled = np.array([lab is not None for lab in self.labels], dtype=bool)
            return labelled & ~inside
        return inside


class _Acc:
    def __init__(self, n: int, keep_target: bool):
        self.loss = np.full(n, np.nan)
        self.correct = np.zeros(n, bool)
        self.pred = np.full(n, -1, np.int64)
        self.p_target = np.full(n, np.nan) if keep_target else None

    def put(self, pos: np.ndarray, h: HeadOut, j: int = 0) -> None:
        self.loss[pos] = h.loss[j].detach().double().cpu().numpy()
        self.correct[pos] = h.correct[j].cpu().numpy()
        self.pred[pos] = h.pred[j].cpu().numpy()
        if self.p_target is not None and h.p_target is not None:
            self.p_target[pos] = h.p_target[j].detach().double().cpu().numpy()


@dataclass
class RunResult:
    """Per-example outcomes of :meth:`LiveModel.run`: ``base`` (no intervention) and one per set."""

    examples: Examples
    base: _Acc
    sets: list[_Acc]
    names: list[str]
    touched: list[int] = field(default_factory=list)

    def _pick(self, j: int | None) -> _Acc:
        return self.base if j is None else self.sets[j]

    def accuracy(self, j: int | None = None, mask: np.ndarray | None = None) -> float:
        a = self._pick(j).correct
        a = a if mask is None else a[mask]
        return float(a.mean()) if len(a) else float("nan")

    def loss(self, j: int | None = None, mask: np.ndarray | None = None) -> float:
        a = self._pick(j).loss
        a = a if mask is None else a[mask]
        return float(a.mean()) if len(a) else float("nan")

    def metric(self, name: str, j: int | None = None, mask: np.ndarray | None = None) -> float:
        if name == "acc":
            return self.accuracy(j, mask)
        if name == "loss":
            return self.loss(j, mask)
        raise ConfigError(f"metric {name!r}: expected acc or loss")


def base_concept(concept):
    """The concept without its one-vs-rest value (``upos=NOUN`` -> ``upos``): a tagger is trained on
    the full column; the value then names the concept's words."""
    if concept is None or getattr(concept, "_binary_set", None) is None:
        return concept
    c = copy.copy(concept)
    c.value, c.values, c._binary_set, c.positive = None, None, None, None
    c.name = c.default_name() if hasattr(c, "default_name") else str(concept.name).split("=")[0]
    return c


def concept_values_of(concept=None, ranking_concept: str = "") -> set[str] | None:
    """The labels that make a word one of the concept's words: the concept's ``value``/``values``,
    else the part after ``=`` of a ranking's concept name (``upos=NOUN`` -> {NOUN}), else None."""
    s = getattr(concept, "_binary_set", None) if concept is not None else None
    if s:
        return {str(v) for v in s}
    if ranking_concept and "=" in ranking_concept:
        return set(ranking_concept.split("=", 1)[1].split("|"))
    return None


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if not torch.is_tensor(p) or not p.is_floating_point():
            continue
        h.update(name.encode())
        h.update(p.detach().reshape(-1)[:2048].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class LiveModel:
    """The model, its task head and a corpus, run with hooks (see the module docstring).

    Args:
        model: a transformers model (``AutoModel``, or one with the head's LM / classification head).
        tokenizer: its fast tokenizer.
        head: a :class:`~neurolab.causal.heads.TaskHead` (fitted or loaded when it is trained).
        words: the sentences (lists of words), corpus order.
        labels: per sentence, per word: the head's target label of each word (None: unlabelled);
            for a sentence-level head, one label per sentence (``sentence_labels``).
        concept_labels: per sentence, per word: the run concept's labels, which name the concept's
            words (default: ``labels``); ``concept_sentence_labels`` for a sentence-level concept.
        splits: sentence ids of ``train`` / ``dev`` / ``test`` (default: every sentence is ``test``).
        concept_name: the name of the concept the head predicts, checked against a saved head.
        concept_values: concept labels that make a word one of the concept's words (``{"NOUN"}``).
        aggregation: how tokens make a word row (the store's: ``mean`` by default).
        max_length, stride: windowing (default: the model's limit, half-window stride).
        batch_tokens, max_batch_sentences: batch size (padded tokens, windows).
        device: ``auto`` | ``cpu`` | ``cuda[:i]``.
        seed: seeds the head's random choices (masked positions) and nothing else.
    """

    def __init__(self, model, tokenizer, head, *, words: Sequence[Sequence[str]],
                 labels: Sequence[Sequence[Any]] | None = None, sentence_labels: Sequence[Any] | None = None,
                 concept_labels: Sequence[Sequence[Any]] | None = None,
                 concept_sentence_labels: Sequence[Any] | None = None, splits: Mapping[str, Sequence[int]] | None = None, concept_name: str = "",
                 concept_values: set[str] | None = None, aggregation: str = "mean", max_length: int | None = None,
                 stride: int | None = None, batch_tokens: int = 4096, max_batch_sentences: int = 128,
                 device: str | torch.device | None = "cpu", seed: int = 0, model_cfg: Any = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = _device(device)
        self.model.to(self.device)
        self.enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self.corpus = LiveCorpus(words, tokenizer, max_length=model_max_length(model, tokenizer, max_length),
                                 stride=stride, aggregation=aggregation)
        self.aggregation = aggregation
        self.sentence_labels = None if sentence_labels is None else np.asarray(list(sentence_labels), dtype=object)
        if self.sentence_labels is not None:
            if len(self.sentence_labels) != self.corpus.num_sentences:
                raise ConfigError(f"{len(self.sentence_labels)} sentence labels for {self.corpus.num_sentences} sentences")
            self.labels = self.sentence_labels[self.corpus.row_sentence] if self.corpus.num_rows else np.empty(0, object)
        elif labels is not None:
            self.labels = self.corpus.row_values(labels)
        else:
            self.labels = np.full(self.corpus.num_rows, None, dtype=object)
        self.concept_sentence_labels = None
        if concept_sentence_labels is not None:
            self.concept_sentence_labels = np.asarray(list(concept_sentence_labels), dtype=object)
            self.concept_labels = (self.concept_sentence_labels[self.corpus.row_sentence] if self.corpus.num_rows
                                   else np.empty(0, object))
        elif concept_labels is not None:
            self.concept_labels = self.corpus.row_values(concept_labels)
        else:
            self.concept_labels = self.labels
            self.concept_sentence_labels = self.sentence_labels
        n = self.corpus.num_sentences
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in (splits or {"test": np.arange(n)}).items()}
        if "val" in self.splits and "dev" not in self.splits:
            self.splits["dev"] = self.splits["val"]
        self.concept_name = str(concept_name)
        self.concept_values = None if concept_values is None else {str(v) for v in concept_values}
        self.batch_tokens = int(batch_tokens)
        self.max_batch_sentences = int(max_batch_sentences)
        self.seed = int(seed)
        self.model_cfg = model_cfg
        self.name = str(getattr(model, "neurolab_name", "") or getattr(model.config, "_name_or_path", "") or "")
        self._identity: dict | None = None
        self._blocks = self._find_blocks()
        self._site_cache: dict[str, Site] = {}
        self._batches: dict[tuple, list[LiveBatch]] = {}
        self._examples: dict[tuple, Examples] = {}
        self._rowmasks: dict[tuple, np.ndarray] = {}
        self._donors: dict[tuple, np.ndarray] = {}
        self._cache_out: list[Any] = [None] * len(self._blocks)
        self._tiled: dict[tuple[int, int], Any] = {}
        self.head = head
        head.attach(self)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_corpus(cls, model, tokenizer, head, corpus, splits=None, concept=None, *, head_concept=None,
                    **kw) -> "LiveModel":
        """A live model over a :class:`~neurolab.corpus.types.Corpus` and a concept: the concept
        without its value gives the head's targets (unless ``head_concept`` is another concept) and
        the concept's labels; ``concept.value`` picks the concept's words."""
        base = base_concept(concept)
        target = head_concept if head_concept is not None else base

        def split_level(c):
            if c is None:
                return None, None
            lab = c.labels(corpus)
            return (None, lab) if getattr(c, "level", "word") == "sentence" else (lab, None)

        labels, sentence_labels = split_level(target)
        if head_concept is not None:
            c_lab, c_sent = split_level(base)
            kw.setdefault("concept_labels", c_lab)
            kw.setdefault("concept_sentence_labels", c_sent)
        kw.setdefault("concept_name", getattr(target, "name", "") if target is not None else "")
        kw.setdefault("concept_values", concept_values_of(concept))
        return cls(model, tokenizer, head, words=corpus.words(), labels=labels, sentence_labels=sentence_labels,
                   splits=splits, **kw)

    @property
    def identity(self) -> dict:
        """The model's identity (name, fingerprint of config and files, a digest of the weights)."""
        if self._identity is None:
            ident = model_identity(self.model, self.model_cfg)
            ident["weights"] = _weights_digest(self.model)
            self._identity = ident
        return self._identity

    def check_store(self, store) -> None:
        """Refuse a store extracted with another model than this one (when the store records it)."""
        rec = (getattr(store, "identity", None) or {}).get("model")
        if not isinstance(rec, dict) or not rec.get("fingerprint"):
            return
        mine = model_identity(self.model, self.model_cfg)
        for key in ("fingerprint", "random_init", "init_seed"):
            if key in rec and key in mine and rec[key] != mine[key]:
                raise ConfigError(
                    f"the store {getattr(store, 'path', '')} was extracted with model {rec.get('name')!r} "
                    f"({key} {rec[key]!r}); the live model is {mine.get('name')!r} ({key} {mine[key]!r})")

    # -- sites ------------------------------------------------------------------------------------
    def _find_blocks(self) -> list[tuple[str | None, int, str, torch.nn.Module]]:
        out = []
        for stack in (("encoder", "decoder") if self.enc_dec else (None,)):
            path, blocks = find_blocks(self.model, stack)
            out += [(stack, i, f"{path}.{i}", b) for i, b in enumerate(blocks)]
        return out

    def _g(self, stack: str | None, i: int) -> int:
        for g, (st, j, _, _) in enumerate(self._blocks):
            if st == stack and j == i:
                return g
        raise ConfigError(f"no block {i} in stack {stack}")

    def site(self, name: str) -> Site:
        """The hook :class:`Site` of a site name (ConfigError naming the valid sites if unknown)."""
        if isinstance(name, Site):
            return name
        s = self._site_cache.get(name)
        if s is not None:
            return s
        (s,) = resolve_sites(self.model, [name])
        if s.kind == "hidden" and s.index and s.index == self._num_layers(s.stack):
            norm = self._final_norm(s)
            if norm is not None:
                s = Site(s.name, "output", s.stack, s.index, norm, s.units)
        self._site_cache[name] = s
        return s

    def _num_layers(self, stack) -> int:
        return sum(1 for st, _, _, _ in self._blocks if st == stack)

    def _final_norm(self, s: Site) -> str | None:
        """The module whose output is the stack's last hidden state when it is not the last block's
        output (GPT-2's ``ln_f``, T5's ``final_layer_norm``), checked on a two-word input."""
        last = self._blocks[self._g(s.stack, s.index - 1)][2]
        root = last.rsplit(".", 2)[0] if last.count(".") >= 2 else ""
        mods = dict(self.model.named_modules())
        for nm in FINAL_NORMS:
            path = f"{root}.{nm}" if root else nm
            if path not in mods:
                continue
            ids = torch.tensor([self.corpus.plan.prefix + self.tokenizer(["a", "b"], is_split_into_words=True,
                                add_special_tokens=False)["input_ids"] + self.corpus.plan.suffix], device=self.device)
            got: dict[str, torch.Tensor] = {}
            h = mods[path].register_forward_hook(lambda m, a, o: got.__setitem__("n", o[0] if isinstance(o, tuple) else o))
            try:
                with torch.no_grad():
                    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "output_hidden_states": True}
                    if self.enc_dec:
                        kw["decoder_input_ids"] = ids
                    out = self.model(**kw)
            finally:
                h.remove()
            if self.enc_dec:
                hs = out.encoder_hidden_states if s.stack == "encoder" else out.decoder_hidden_states
            else:
                hs = out.hidden_states
            if hs is not None and "n" in got and got["n"].shape == hs[-1].shape and torch.equal(got["n"], hs[-1]):
                return path
        return None

    def site_order(self, name: str) -> tuple[int, int] | None:
        """Where a site lies in the forward pass (comparable between sites), None for module paths
        outside the blocks."""
        s = self.site(name)
        if s.kind == "hidden" and s.index == 0:
            return (self._g(s.stack, 0), 0)
        if s.kind == "hidden":
            return (self._g(s.stack, s.index - 1), 3)
        if s.kind == "output" and s.index is not None:  # redirected last layer
            return (self._g(s.stack, s.index - 1), 4)
        if s.kind == "input":
            return (self._g(s.stack, s.index), 1 if s.name.endswith(".attn") else 2)
        for g, (_, _, path, _) in enumerate(self._blocks):
            if s.module.startswith(path + "."):
                return (g, 2)
        return None

    def site_start(self, name: str) -> int:
        """Index (execution order) of the first block an intervention at ``name`` changes."""
        order = self.site_order(name)
        if order is None:
            return 0
        g, sub = order
        return g + 1 if sub >= 3 else g

    def check_sites(self, names: Sequence[str], units: Mapping[str, int] | None = None) -> None:
        """Refuse sites the model lacks (naming its sites), unit counts that differ, and sites that lie
        above the head's site (they cannot change its output)."""
        table = site_table(self.model)
        for n in names:
            try:
                s = self.site(n)
            except ConfigError:
                raise ConfigError(f"site {n!r} is not a site of model {self.name or type(self.model).__name__} "
                                  f"(its sites: {', '.join(list(table)[:16])}{' ...' if len(table) > 16 else ''})") from None
            if units is not None and n in units and s.units is not None and int(units[n]) != int(s.units):
                raise ConfigError(f"site {n!r} has {s.units} units in model {self.name!r}, the ranking {units[n]}")
        limit = self.head.top_site_order()
        if limit is not None:
            for n in names:
                o = self.site_order(n)
                if o is not None and o > limit:
                    raise ConfigError(f"site {n!r} lies above the task head's site {self.head.site!r}: an "
                                      "intervention there cannot change the task's output")

    # -- batches, examples, scopes -------------------------------------------------------------------
    def sentences(self, split: str, max_sentences: int | None = None) -> np.ndarray:
        key = "dev" if split == "val" else split
        if key not in self.splits:
            raise ConfigError(f"split {split!r}: the live corpus has splits {sorted(self.splits)}")
        s = np.sort(self.splits[key])
        return s[: int(max_sentences)] if max_sentences else s

    def batches(self, split: str = "test", max_sentences: int | None = None) -> list[LiveBatch]:
        key = (split, max_sentences)
        if key not in self._batches:
            self._batches[key] = self.corpus.batches(self.sentences(split, max_sentences), batch_tokens=self.batch_tokens,
                                                     max_batch_sentences=self.max_batch_sentences)
        return self._batches[key]

    def examples(self, split: str = "test", max_sentences: int | None = None) -> Examples:
        """The split's examples (the head decides which words / sentences are scored)."""
        key = (split, max_sentences)
        if key not in self._examples:
            ids = [self.head.examples(self, b)[0] for b in self.batches(split, max_sentences)]
            ids = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
            classes = set(getattr(self.head, "classes", []) or [])
            if classes and self.head.kind != "lm":
                sent = self.sentences(split, max_sentences)
                own = self.sentence_labels[sent] if self.head.level == "sentence" and self.sentence_labels is not None \
                    else self.labels[self.corpus.rows_of(sent)]
                unseen = [x for x in own if x is not None and str(x) not in classes]
                if unseen:
                    from collections import Counter

                    log.warning("split %s: %d labelled examples have a label the %s head does not know and are not "
                                "scored: %s", split, len(unseen), self.head.kind, dict(Counter(map(str, unseen)).most_common(8)))
            if self.head.level == "sentence":
                labs = (self.concept_sentence_labels[ids] if self.concept_sentence_labels is not None
                        else np.full(len(ids), None, dtype=object))
            else:
                labs = self.concept_labels[ids]
            self._examples[key] = Examples(ids, labs)
        return self._examples[key]

    def row_mask(self, scope: str, *, share: float = 1.0, seed: int = 0, target: str | None = None,
                 split: str | None = None, max_sentences: int | None = None) -> np.ndarray | None:
        """Bool per row: the words in ``scope`` (None for ``all``: every token, specials included)."""
        if scope not in SCOPES:
            raise ConfigError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
        key = (scope, float(share), int(seed), target, split, max_sentences)
        if key in self._rowmasks:
            return self._rowmasks[key]
        R = self.corpus.num_rows
        labelled = np.array([x is not None for x in self.concept_labels], dtype=bool)
        if scope == "all":
            m = None
        elif scope == "words":
            m = np.ones(R, bool)
        elif scope == "evaluated":
            if split is None:
                raise ConfigError("scope 'evaluated' needs the split under evaluation")
            ex = self.examples(split, max_sentences)
            m = np.zeros(R, bool)
            if self.head.level == "sentence":
                m[self.corpus.rows_of(ex.ids)] = True
            else:
                m[ex.ids] = True
        elif scope in ("concept", "non_concept"):
            if not self.concept_values:
                raise ConfigError(f"scope {scope!r} needs the concept's value (e.g. concept.value=NOUN, or a ranking "
                                  "of concept upos=NOUN)")
            inside = np.array([x is not None and str(x) in self.concept_values for x in self.concept_labels], dtype=bool)
            m = inside if scope == "concept" else labelled & ~inside
        else:  # non_target
            if target is None:
                raise ConfigError("scope 'non_target' needs a target class")
            m = labelled & np.array([x is not None and str(x) != target for x in self.concept_labels], dtype=bool)
        if share < 1.0:
            keep = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5C0]).random(R) < share
            m = keep if m is None else (m & keep)
        self._rowmasks[key] = m
        return m

    def token_mask(self, batch: LiveBatch, rows: np.ndarray | None) -> torch.Tensor:
        """``[B, T]`` bool: the tokens of the words ``rows`` marks (None: every real token)."""
        if rows is None:
            return batch.attention_mask.bool()
        tr = batch.token_row
        sel = torch.from_numpy(rows)[tr.clamp(min=0).cpu()].to(tr.device)
        return sel & (tr >= 0)

    def donors(self, pool_rows: int, seed: int) -> np.ndarray:
        """Per row: the index of its donor word in a resample pool (seeded, independent of batching)."""
        key = (pool_rows, seed)
        if key not in self._donors:
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xD0])
            self._donors[key] = rng.integers(pool_rows, size=self.corpus.num_rows).astype(np.int64)
        return self._donors[key]

    # -- hooks and forward passes ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _record(self) -> Iterator[None]:
        """Keep every block's output of the forward pass inside (the prefix cache)."""
        self._cache_out = [None] * len(self._blocks)
        self._tiled = {}
        handles = []

        def rec(g, module, args, out):
            self._cache_out[g] = out

        try:
            for g, (_, _, _, b) in enumerate(self._blocks):
                handles.append(b.register_forward_hook(partial(rec, g)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _cached(self, g: int, expand: int, *args, **kwargs):
        out = self._cache_out[g]
        if out is None:
            raise InterventionError(f"block {self._blocks[g][2]} has no cached output for this batch")
        if expand == 1:
            return out
        key = (g, expand)
        if key not in self._tiled:
            self._tiled[key] = _tile(out, expand, self._batch_size)
        return self._tiled[key]

    @contextlib.contextmanager
    def _replay(self, start: int, expand: int) -> Iterator[None]:
        """Blocks before ``start`` return their cached outputs instead of computing them."""
        stubbed = []
        try:
            for g in range(min(start, len(self._blocks))):
                b = self._blocks[g][3]
                b.forward = partial(self._cached, g, expand)
                stubbed.append(b)
            yield
        finally:
            for b in stubbed:
                del b.forward

    def model_inputs(self, batch: LiveBatch, expand: int = 1) -> dict[str, Any]:
        kw = dict(self.head.model_inputs(self, batch))
        if expand > 1:
            kw = {k: (v.repeat(expand, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else v) for k, v in kw.items()}
        if getattr(self.model.config, "use_cache", None) is not None:
            kw["use_cache"] = False
        kw["return_dict"] = True
        return kw

    def forward(self, batch: LiveBatch, fns: Mapping[str, Callable] | None = None, *, start: int = 0, expand: int = 1,
                grad: bool = False, capture: Sequence[str] = (), target: int | None = None
                ) -> tuple[HeadOut, dict[str, torch.Tensor]]:
        """One forward pass of ``batch`` (repeated ``expand`` times) with hook functions ``fns``
        (site name -> ``fn(t) -> t'``, applied before the head reads its site), blocks before
        ``start`` replayed from the prefix cache. Returns the head's outputs and the activations of
        the ``capture`` sites (after the interventions). ``grad``: build the autograd graph."""
        batch = batch.to(self.device)
        self._batch_size = int(batch.input_ids.shape[0])
        captured: dict[str, torch.Tensor] = {}
        read = list(self.head.read_sites())
        want = list(dict.fromkeys(read + list(capture)))
        stop_at = read[-1] if (read and self.head.early_exit and not capture) else None
        caps = {}
        for name in want:
            def rec(t, _n=name):
                captured[_n] = t
                if _n == stop_at:
                    raise _Stop
                return t

            caps[self.site(name)] = rec
        groups: dict[Site, list[Callable]] = {}
        for name, fn in (fns or {}).items():
            groups.setdefault(self.site(name), []).append(fn)
        composed = {s: (fs[0] if len(fs) == 1 else _compose(fs)) for s, fs in groups.items()}
        kw = self.model_inputs(batch, expand)
        with contextlib.ExitStack() as st:
            st.enter_context(torch.enable_grad() if grad else torch.no_grad())
            if start > 0:
                st.enter_context(self._replay(start, expand))
            st.enter_context(intervene(self.model, composed))
            st.enter_context(intervene(self.model, caps))
            try:
                out = self.model(**kw)
            except _Stop:
                out = None
        h = self.head.score(self, batch, out, captured, expand=expand, target=target)
        return h, {k: v for k, v in captured.items() if k in capture}

    def _set_fns(self, S: InterventionSet, batch: LiveBatch, split: str, max_sentences, expand: int = 1
                 ) -> tuple[dict[str, Callable], list[Fired], int]:
        rows = self.row_mask(S.scope, share=S.share, seed=S.seed, target=S.meta.get("target"), split=split,
                             max_sentences=max_sentences)
        mask = self.token_mask(batch, rows)
        fns: dict[str, Callable] = {}
        fired = []
        for item in S.items:
            f = Fired()
            donor = None
            if item.op == "resample":
                d = torch.from_numpy(self.donors(len(item.pool), S.seed))
                donor = d[batch.token_row.clamp(min=0).cpu()]
            fn = hook_fn(item, mask, f, donor=donor, expand=expand)
            fns[item.site] = _compose([fns[item.site], fn]) if item.site in fns else fn
            fired.append(f)
        return fns, fired, int(mask.sum())

    def prefix_state(self, start: int) -> tuple[list[Any], int]:
        """The recorded outputs of the blocks before ``start`` (what ``forward(..., start=start)``
        replays for the batch last passed to :meth:`record_prefix`) and their size in bytes: kept by a
        caller that reruns many batches, and given back with :meth:`use_prefix`."""
        state = list(self._cache_out[:max(0, int(start))])
        return state, _nbytes(state)

    def use_prefix(self, state: list[Any]) -> None:
        """Make ``state`` (from :meth:`prefix_state`, for the batch about to be run) the prefix cache."""
        self._cache_out = list(state) + [None] * (len(self._blocks) - len(state))
        self._tiled = {}

    def record_prefix(self, batch: LiveBatch, target: int | None = None) -> HeadOut:
        """Run ``batch`` with no intervention, keeping every block's output for later
        ``forward(batch, ..., start=...)`` calls on the same batch; returns the head's outputs."""
        with self._record():
            h, _ = self.forward(batch, target=target)
        return h

    # -- curves --------------------------------------------------------------------------------------
    def run(self, sets: Sequence[InterventionSet], split: str = "test", *, max_sentences: int | None = None,
            target: str | None = None, check: bool = True, progress: bool = False, cache: bool = True) -> RunResult:
        """The head's outcome on every example of ``split`` with no intervention and under each set.

        Batches are the outer loop: each batch is run once plainly (its blocks' outputs cached) and
        then once per set, from the first block the set changes (``cache=False``: every block, for
        comparison). ``target``: also keep p(target)."""
        sets = list(sets)
        for S in sets:
            self.check_sites(S.sites)
            for item in S.items:
                s = self.site(item.site)
                if s.units is not None and len(item.units) and int(item.units.max()) >= int(s.units):
                    raise ConfigError(f"unit {int(item.units.max())} is out of range for site {item.site} "
                                      f"({s.units} units)")
        tcode = self.head.class_index(target) if target is not None else None
        ex = self.examples(split, max_sentences)
        n = len(ex.ids)
        if n == 0:
            raise ConfigError(f"split {split!r} has no example for the task head {self.head.kind}")
        base = _Acc(n, tcode is not None)
        accs = [_Acc(n, tcode is not None) for _ in sets]
        starts = [min((self.site_start(i.site) for i in S.items), default=0) if cache else 0 for S in sets]
        changed = [False] * len(sets)
        touched = [0] * len(sets)
        batches = self.batches(split, max_sentences)
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="live", unit="batch", leave=False)
        for batch in it:
            h0 = self.record_prefix(batch, target=tcode)
            pos = ex.positions(h0.ids)
            base.put(pos, h0)
            for j, S in enumerate(sets):
                fns, fired, nt = self._set_fns(S, batch, split, max_sentences)
                h, _ = self.forward(batch, fns, start=starts[j], target=tcode)
                for f, item in zip(fired, S.items):
                    if f.calls == 0:
                        raise InterventionError(
                            f"the hook of intervention {S.kind or 'set'} at site {item.site!r} never fired: the forward "
                            f"pass of the task head {self.head.kind} does not reach that site")
                touched[j] += nt
                if S.k > 0 and not changed[j] and nt > 0:
                    changed[j] = not torch.equal(h.signal, h0.signal)
                accs[j].put(ex.positions(h.ids), h)
        if check:
            for j, S in enumerate(sets):
                if S.k == 0:
                    continue
                if touched[j] == 0:
                    raise ConfigError(f"intervention {S.name or S.kind} (scope {S.scope!r}) touched no token of split "
                                      f"{split!r}: the scope selects no word there")
                if not changed[j]:
                    raise InterventionError(
                        f"intervention {S.name or S.kind} on {S.k} neurons at {sorted(set(S.sites))} changed no output "
                        f"of the task head {self.head.kind} over {n} examples of split {split!r}: a silent no-op")
        return RunResult(ex, base, accs, [S.name for S in sets], touched)

    def activations(self, sites: Sequence[str], split: str = "test", *, max_sentences: int | None = None,
                    fns: Mapping[str, Callable] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Word rows of ``sites`` over the split's sentences, aggregated as extraction aggregates them:
        ``(rows, {site: float32 [len(rows), units]})`` (with the hook functions ``fns`` applied)."""
        names = list(sites)
        rows_all, parts = [], {s: [] for s in names}
        from .words import aggregate

        for batch in self.batches(split, max_sentences):  # (no early exit while capturing)
            _, cap = self.forward(batch, fns, capture=names)
            b = batch.to(self.device)
            rows_all.append(b.rows)
            for s in names:
                if s not in cap:
                    raise InterventionError(f"site {s!r} was not reached by the forward pass")
                parts[s].append(aggregate(cap[s], b, self.aggregation)[0].float().cpu().numpy())
        rows = np.concatenate(rows_all) if rows_all else np.zeros(0, np.int64)
        order = np.argsort(rows, kind="stable")
        return rows[order], {s: np.concatenate(v)[order] if v else np.zeros((0, 0), np.float32) for s, v in parts.items()}

    # -- exact leave-one-out ---------------------------------------------------------------------------
    def sweep(self, site: str, units: Sequence[int], values: Sequence[float] | float = 0.0, *, split: str = "train",
              objective: str = "loss", on: np.ndarray | None = None, scope: str = "all", expand: int = 16,
              max_sentences: int | None = None, check: bool = True, cache: bool = True) -> np.ndarray:
        """Exact leave-one-out: for each unit of ``site``, the mean increase of the head's ``objective``
        over the examples (all, or those where the bool mask ``on`` over :meth:`examples` is true) when
        that unit alone is set to its value (0, or one per unit) at the tokens of ``scope``. ``expand``
        single-neuron ablations share one forward pass (the batch repeated); the blocks below the site
        come from the prefix cache."""
        units = np.asarray(units, dtype=np.int64).reshape(-1)
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        if vals.size == 1:
            vals = np.full(len(units), float(vals[0]))
        if len(vals) != len(units):
            raise ConfigError(f"sweep: {len(vals)} values for {len(units)} units")
        self.check_sites([site])
        s = self.site(site)
        if s.units is not None and len(units) and (units.min() < 0 or units.max() >= s.units):
            raise ConfigError(f"sweep: units out of range for site {site} ({s.units} units)")
        ex = self.examples(split, max_sentences)
        sel_all = np.ones(len(ex.ids), bool) if on is None else np.asarray(on, bool)
        n_sel = int(sel_all.sum())
        if n_sel == 0:
            raise ConfigError("sweep: no example to measure the objective on")
        start = self.site_start(site) if cache else 0
        rows = self.row_mask(scope, split=split, max_sentences=max_sentences)
        total = np.zeros(len(units))
        moved = np.zeros(len(units), bool)
        expand = max(1, int(expand))
        for batch in self.batches(split, max_sentences):
            h0 = self.record_prefix(batch)
            pos = ex.positions(h0.ids)
            sel = torch.from_numpy(sel_all[pos]).to(self.device)
            f0 = h0.objective(objective)[0].double()
            mask = self.token_mask(batch.to(self.device), rows)
            if not bool(mask.any()):
                continue
            for a in range(0, len(units), expand):
                u, v = units[a:a + expand], vals[a:a + expand]
                fired = Fired()
                fn = unit_sweep_fn(site, u, v, mask, fired)
                h, _ = self.forward(batch, {site: fn}, start=start, expand=len(u))
                if fired.calls == 0:
                    raise InterventionError(f"the sweep's hook at {site!r} never fired")
                f = h.objective(objective).double()  # [m, n]
                total[a:a + len(u)] += ((f - f0) * sel).sum(1).cpu().numpy()
                moved[a:a + len(u)] |= (h.signal != h0.signal.expand_as(h.signal)).reshape(len(u), -1).any(1).cpu().numpy()
        if check and len(units) and not moved.any():
            raise InterventionError(f"sweep at {site!r}: no single-unit ablation changed the task head's output")
        return total / n_sel

    # -- first-order estimate ----------------------------------------------------------------------------
    def first_order(self, ablated: Mapping[str, tuple[str, np.ndarray]], *, split: str = "train",
                    objective: str = "loss", on: np.ndarray | None = None, scope: str = "all",
                    max_sentences: int | None = None) -> dict[str, np.ndarray]:
        """First-order estimate of each unit's leave-one-out effect, for every unit of every site of
        ``ablated`` (site -> ``("set", values [units])`` or ``("add", deltas [units])``):
        ``sum over scoped tokens of dF/da * (ablated - a)``, F the summed ``objective`` over the
        examples (``on``), divided by their number. One forward and one backward pass per batch."""
        names = list(ablated)
        self.check_sites(names)
        ex = self.examples(split, max_sentences)
        sel_all = np.ones(len(ex.ids), bool) if on is None else np.asarray(on, bool)
        n_sel = int(sel_all.sum())
        if n_sel == 0:
            raise ConfigError("first_order: no example to measure the objective on")
        rows = self.row_mask(scope, split=split, max_sentences=max_sentences)
        out = {s: np.zeros(int(self.site(s).units or len(ablated[s][1]))) for s in names}
        for batch in self.batches(split, max_sentences):
            b = batch.to(self.device)
            leaves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

            def add_leaf(t, _n):
                d = torch.zeros_like(t, requires_grad=True)
                leaves[_n] = (t.detach(), d)
                return t + d

            fns = {s: partial(add_leaf, _n=s) for s in names}
            h, _ = self.forward(b, fns, grad=True)
            pos = ex.positions(h.ids)
            sel = torch.from_numpy(sel_all[pos]).to(self.device)
            F = (h.objective(objective)[0] * sel).sum()
            missing = [s for s in names if s not in leaves]
            if missing:
                raise InterventionError(f"the first-order hooks at {missing} never fired")
            if not F.requires_grad:
                continue
            grads = torch.autograd.grad(F, [leaves[s][1] for s in names], allow_unused=True)
            mask = self.token_mask(b, rows).unsqueeze(-1)
            for s, g in zip(names, grads):
                if g is None:
                    continue
                a = leaves[s][0]
                op, vals = ablated[s]
                v = torch.as_tensor(np.asarray(vals, dtype=np.float64), device=a.device, dtype=a.dtype)
                diff = (v - a) if op == "set" else v.expand_as(a)
                out[s] += ((g * diff) * mask).sum((0, 1)).double().cpu().numpy()
        return {s: v / n_sel for s, v in out.items()}


def _compose(fns: Sequence[Callable]) -> Callable:
    def fn(t):
        for f in fns:
            t = f(t)
        return t

    return fn


def _nbytes(x: Any) -> int:
    """Bytes of the tensors in ``x`` (a tensor, or tuples / lists / mappings of them)."""
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    return 0


def _tile(out, m: int, B: int):
    if torch.is_tensor(out):
        return out.repeat(m, *([1] * (out.dim() - 1))) if out.dim() and out.shape[0] == B else out
    if isinstance(out, tuple):
        return tuple(_tile(o, m, B) for o in out)
    if isinstance(out, list):
        return [_tile(o, m, B) for o in out]
    return out


def _device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    d = str(device or "auto")
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={d}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(d)
