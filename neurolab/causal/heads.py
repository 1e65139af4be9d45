"""Task heads: what the live model predicts, whose change an intervention is measured by.

``task=`` (``conf/task/``) picks one:

* :class:`TaggerHead` (``task=tagger``): a token-classification head, a linear probe on one site of
  the frozen model (default: the store's last layer) for the run's concept (for ``upos=NOUN`` runs,
  the full ``upos`` column: the tagger predicts UPOS, NOUN names the concept's words). It is trained
  with Lightning on the store's rows (:func:`neurolab.probes.fit_probe`), reads the live model's
  activation of that site aggregated over each word's tokens as extraction aggregates them, z-scored
  with the training rows' statistics, and is saved as safetensors with its concept, model, site,
  classes and normalisation; a later run reloads it (``task.path=``) and refuses one made for another
  concept, model or site. This is the real-model path for encoders without an LM head (MiniLM).
* :class:`LMHead` (``task=lm``): the model's own language-model head: masked LM for encoders (the
  masked words sampled per sentence with the seed), next token for decoders, the decoder's next
  token for encoder-decoders (decoder inputs = the input tokens, as extraction feeds them), scored
  per word (mean loss over the word's tokens; correct when every token's top-1 is).
* :class:`ClassifierHead` (``task=classifier``): sentence level: the model's own sequence
  classification head when its checkpoint has one, else a linear probe trained on sentence rows
  (the mean of the sentence's word rows of one site).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .live import HeadOut
from .words import LiveBatch, aggregate

log = logging.getLogger(__name__)

__all__ = ["TaskHead", "TaggerHead", "LMHead", "ClassifierHead", "load_head", "default_head_site", "HEAD_FORMAT"]

HEAD_FORMAT = "neurolab-head-1"


def default_head_site(sites: Sequence[str]) -> str:
    """The last ``layers.{i}`` (or ``decoder.layers.{i}`` / ``encoder.layers.{i}``) site of a store."""
    import re

    layered = [s for s in sites if re.fullmatch(r"(?:(?:encoder|decoder)\.)?layers\.\d+", s)]
    if not layered:
        raise ConfigError(f"no layers.{{i}} site among {list(sites)}: set task.site")
    return layered[-1]


class TaskHead:
    """Base class. Subclasses say which sites they read, what the model gets as input, which words or
    sentences of a batch are examples, and how they are scored (:class:`~neurolab.causal.live.HeadOut`)."""

    kind: str = ""
    level: str = "word"  # word | sentence
    #: the transformers head the model needs (:data:`neurolab.models.loading.HEADS`), None: the bare model
    model_head: str | None = None
    early_exit: bool = True

    def __init__(self, *, batch_tokens: int = 4096, max_batch_sentences: int = 128, device: str = "auto"):
        self.batch_tokens = int(batch_tokens)
        self.max_batch_sentences = int(max_batch_sentences)
        self.device = device
        self.site: str | None = None
        self.classes: list[str] = []
        self.metrics: dict[str, float] = {}
        self.live = None

    # -- to override ---------------------------------------------------------------------------
    def attach(self, live) -> None:
        self.live = live

    def read_sites(self) -> list[str]:
        return []

    def top_site_order(self):
        """Sites after this point of the forward pass cannot change the head's output (None: any)."""
        return None

    def model_inputs(self, live, batch: LiveBatch) -> dict[str, torch.Tensor]:
        kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if live.enc_dec:
            kw["decoder_input_ids"] = batch.input_ids
            kw["decoder_attention_mask"] = batch.attention_mask
        return kw

    def examples(self, live, batch: LiveBatch) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """(global example ids, local indices, gold class indices) of the batch."""
        raise NotImplementedError

    def score(self, live, batch: LiveBatch, out, captured: Mapping[str, torch.Tensor], *, expand: int = 1,
              target: int | None = None) -> HeadOut:
        raise NotImplementedError

    def class_index(self, name: str) -> int:
        if not self.classes:
            raise ConfigError(f"the task head {self.kind} has no classes: a target class needs task=tagger or classifier")
        if str(name) not in self.classes:
            raise ConfigError(f"target class {name!r} is not a class of the {self.kind}'s concept "
                              f"{getattr(self, 'trained_for', '') or ''!r}: {', '.join(self.classes)}")
        return self.classes.index(str(name))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "site": self.site, "classes": list(self.classes)}


def _gold_codes(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    lut = {c: i for i, c in enumerate(classes)}
    return np.array([lut.get(str(x), -1) if x is not None else -1 for x in labels], dtype=np.int64)


def _class_outputs(logits: torch.Tensor, gold: torch.Tensor, ids: np.ndarray, target: int | None) -> HeadOut:
    """HeadOut of class logits ``[m, n, C]`` against gold ``[n]``."""
    logp = torch.log_softmax(logits, dim=-1)
    g = gold.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    loss = -logp.gather(-1, g).squeeze(-1)
    logit = logits.gather(-1, g).squeeze(-1)
    pred = logits.argmax(-1)
    return HeadOut(ids, loss, logit, torch.exp(-loss), pred == gold.view(1, -1), pred, logits,
                   None if target is None else torch.exp(logp[..., int(target)]), logits=logits)


# -- trained linear heads (tagger, sentence classifier) ----------------------------------------------------
class _LinearSiteHead(TaskHead):
    """A linear probe on one site of the frozen model, trained on store rows, saved as safetensors."""

    file_stem = "head"

    def __init__(self, site: str | None = None, path: str | None = None, *, epochs: int = 10, lr: float = 1e-2,
                 batch_size: Any = "auto", regularization: Mapping[str, Any] | None = None, save: bool = True,
                 concept: Any = None, **kw):
        super().__init__(**kw)
        self.site = site
        self.path = path
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = batch_size
        self.regularization = dict(regularization) if regularization else None
        self.save_head = bool(save)
        #: the concept the head predicts (a Concept or its config); None: the run's concept without its value
        self.concept = concept
        #: the name of the concept the head was trained for
        self.trained_for = ""
        self.weight: torch.Tensor | None = None  # [C, H] float64
        self.bias: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.meta: dict[str, Any] = {}
        self._dev: dict[tuple, tuple] = {}

    # -- building ---------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.weight is not None

    def set_weights(self, weight, bias, classes: Sequence[str], *, site: str | None = None, mean=None, std=None,
                    concept: str | None = None) -> "_LinearSiteHead":
        """Use given weights ``[C, H]`` / ``[C]`` (and optional z-score ``mean`` / ``std`` ``[H]``)."""
        self.weight = torch.as_tensor(np.asarray(weight, dtype=np.float64))
        self.bias = torch.as_tensor(np.asarray(bias, dtype=np.float64))
        C, H = self.weight.shape
        if self.bias.shape != (C,):
            raise ConfigError(f"head bias of shape {tuple(self.bias.shape)} for {C} classes")
        self.classes = [str(c) for c in classes]
        if len(self.classes) != C:
            raise ConfigError(f"{len(self.classes)} class names for a head of {C} classes")
        self.mean = None if mean is None else torch.as_tensor(np.asarray(mean, dtype=np.float64))
        self.std = None if std is None else torch.as_tensor(np.asarray(std, dtype=np.float64))
        if site is not None:
            self.site = site
        if concept is not None:
            self.trained_for = str(concept)
        self._dev = {}
        return self

    def fit(self, data, *, cfg=None, run_dir: str | Path | None = None, seed: int = 0) -> "_LinearSiteHead":
        """Train on a :class:`~neurolab.data.ConceptData` of one site (its train / val splits) with
        :func:`neurolab.probes.fit_probe`; the data's normalisation (``mean_`` / ``std_``) is kept."""
        from ..probes import fit_probe

        sites = list(data.sites)
        if len(sites) != 1:
            raise ConfigError(f"a {self.kind} head is trained on one site; the data have {sites}")
        if self.site is not None and self.site != sites[0]:
            raise ConfigError(f"task.site={self.site!r} but the data hold site {sites[0]!r}")
        if getattr(data, "task", "classification") != "classification":
            raise ConfigError(f"a {self.kind} head needs a classification concept")
        if len(np.asarray(data.columns)) != int(data.neurons_per_site[sites[0]]):
            raise ConfigError(f"a {self.kind} head reads every unit of its site; the data hold a subset")
        pcfg = _probe_cfg(cfg, run_dir, seed, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                          regularization=self.regularization)
        module, metrics = fit_probe(data, pcfg, save=False, prefix="task/head/")
        mean = getattr(data, "mean_", None)
        std = getattr(data, "std_", None)
        concept = str(getattr(data, "concept_name", "") or getattr(getattr(data, "concept", None), "name", "")
                      or getattr(data, "concept", "") or "")
        self.set_weights(module.linear.weight.detach().double().numpy(), module.linear.bias.detach().double().numpy(),
                         list(data.class_names), site=sites[0], mean=mean, std=std, concept=concept)
        self.metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.meta["trained_on"] = {"rows": int(len(data.row_ids("train"))), "store": str(getattr(getattr(data, "store", None), "path", "") or "")}
        return self

    def save(self, path: str | Path) -> Path:
        """``path`` (``.safetensors``: weight, bias, mean, std; the description in its metadata) and a
        readable ``.json`` copy of the description."""
        from safetensors.torch import save_file

        if not self.fitted:
            raise ConfigError(f"the {self.kind} head is not trained")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}
        if self.mean is not None:
            t["mean"], t["std"] = self.mean.contiguous(), self.std.contiguous()
        info = self.description()
        save_file(t, str(path), metadata={"neurolab": json.dumps(info)})
        with open(path.with_suffix(".json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        return path

    def description(self) -> dict[str, Any]:
        return {"format": HEAD_FORMAT, "kind": self.kind, "concept": self.trained_for, "site": self.site,
                "units": int(self.weight.shape[1]) if self.fitted else None, "classes": list(self.classes),
                "normalization": "zscore" if self.mean is not None else "none", "aggregation": self.meta.get("aggregation"),
                "model": self.meta.get("model"), "metrics": self.metrics,
                "trained_on": self.meta.get("trained_on")}

    def load(self, path: str | Path) -> "_LinearSiteHead":
        """Read a saved head (a ``.safetensors`` file, or a run directory holding ``task/<kind>.safetensors``)."""
        from safetensors import safe_open

        p = Path(str(path))
        if p.is_dir():
            p = p / "task" / f"{self.kind}.safetensors"
        if not p.exists():
            raise ConfigError(f"task.path={path}: no saved {self.kind} head there ({p})")
        with safe_open(str(p), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("neurolab", "{}"))
            t = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") != HEAD_FORMAT or meta.get("kind") != self.kind:
            raise ConfigError(f"task.path={p}: not a saved {self.kind} head (format {meta.get('format')!r}, "
                              f"kind {meta.get('kind')!r})")
        if self.site is not None and meta.get("site") != self.site:
            raise ConfigError(f"task.path={p}: the head was trained on site {meta.get('site')!r}, task.site is {self.site!r}")
        self.set_weights(t["weight"].numpy(), t["bias"].numpy(), meta["classes"], site=meta["site"],
                         mean=t.get("mean").numpy() if "mean" in t else None,
                         std=t.get("std").numpy() if "std" in t else None, concept=meta.get("concept") or "")
        self.metrics = dict(meta.get("metrics") or {})
        self.meta = {"model": meta.get("model"), "aggregation": meta.get("aggregation"), "trained_on": meta.get("trained_on"),
                     "loaded_from": str(p)}
        return self

    # -- the live side ------------------------------------------------------------------------------
    def attach(self, live) -> None:
        if not self.fitted:
            raise ConfigError(f"the {self.kind} head is not trained: fit it on the store's rows of its site, or load a "
                              "saved one (task.path=)")
        super().attach(live)
        where = self.meta.get("loaded_from") or "the head"
        if self.trained_for and live.concept_name and self.trained_for != live.concept_name:
            raise ConfigError(f"{where} was trained for concept {self.trained_for!r}; this run's head predicts "
                              f"concept {live.concept_name!r}")
        rec = self.meta.get("model")
        mine = live.identity
        if rec:
            for key in ("fingerprint", "weights"):
                if rec.get(key) and mine.get(key) and rec[key] != mine[key]:
                    raise ConfigError(f"{where} was trained on model {rec.get('name')!r} ({key} {rec[key]}); the live "
                                      f"model is {mine.get('name')!r} ({key} {mine[key]})")
        agg = self.meta.get("aggregation")
        if agg and agg != live.aggregation:
            raise ConfigError(f"{where} was trained on rows aggregated by {agg!r}; the live model aggregates by "
                              f"{live.aggregation!r}")
        live.check_sites([self.site])
        s = live.site(self.site)
        if s.units is not None and int(s.units) != int(self.weight.shape[1]):
            raise ConfigError(f"the {self.kind} head reads {self.weight.shape[1]} units of {self.site!r}; the model's "
                              f"site has {s.units}")
        self.meta.setdefault("model", {k: mine.get(k) for k in ("name", "fingerprint", "weights", "random_init")})
        self.meta.setdefault("aggregation", live.aggregation)
        if not self.trained_for:
            self.trained_for = live.concept_name

    def read_sites(self) -> list[str]:
        return [self.site]

    def top_site_order(self):
        return self.live.site_order(self.site) if self.live is not None else None

    def _params(self, device, dtype):
        key = (device, dtype)
        if key not in self._dev:
            W = self.weight.to(device=device, dtype=dtype)
            b = self.bias.to(device=device, dtype=dtype)
            mu = None if self.mean is None else self.mean.to(device=device, dtype=dtype)
            sd = None if self.std is None else self.std.to(device=device, dtype=dtype)
            self._dev[key] = (W, b, mu, sd)
        return self._dev[key]

    def logits_of(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of rows ``x [..., H]`` (raw activations), normalised as in training."""
        W, b, mu, sd = self._params(x.device, x.dtype)
        if mu is not None:
            x = (x - mu) / sd
        return x @ W.T + b


class TaggerHead(_LinearSiteHead):
    """Token classification on one site (see the module docstring). ``site``: null = the store's last
    layer; ``path``: a saved head (file or run directory) to reuse instead of training one."""

    kind = "tagger"
    level = "word"

    def examples(self, live, batch: LiveBatch):
        c = batch.extra.get("tagger_examples")
        if c is None:
            codes = _gold_codes(live.labels[batch.rows], self.classes)
            keep = np.flatnonzero(codes >= 0)
            c = (batch.rows[keep], torch.from_numpy(keep), torch.from_numpy(codes[keep]))
            batch.extra["tagger_examples"] = c
        return c

    def score(self, live, batch, out, captured, *, expand=1, target=None) -> HeadOut:
        ids, local, gold = self.examples(live, batch)
        x = captured[self.site]
        rows = aggregate(x, batch, live.aggregation, expand)  # [m, R, H]
        z = rows.index_select(1, local.to(rows.device))
        return _class_outputs(self.logits_of(z), gold.to(rows.device), ids, target)


class ClassifierHead(_LinearSiteHead):
    """Sentence classification: the model's own sequence-classification head (``own``: true, or auto
    when the checkpoint has one), else a linear probe on sentence rows (mean of the word rows) of
    ``site``."""

    kind = "classifier"
    level = "sentence"

    def __init__(self, site: str | None = None, path: str | None = None, *, own: Any = "auto", **kw):
        super().__init__(site, path, **kw)
        if own not in ("auto", True, False, "true", "false"):
            raise ConfigError(f"task.own={own!r}: expected auto, true or false")
        self.own = own if own == "auto" else own in (True, "true")
        self._own_active = False

    def use_own(self, config) -> bool:
        """Whether the model's own head is used (for ``own=auto``: its checkpoint names one)."""
        if self.own == "auto":
            archs = getattr(config, "architectures", None) or []
            return any("ForSequenceClassification" in a for a in archs)
        return bool(self.own)

    @property
    def fitted(self) -> bool:  # the own head needs no training
        return self._own_active or self.weight is not None

    def set_own(self, model) -> "ClassifierHead":
        id2 = getattr(model.config, "id2label", None) or {}
        self.classes = [str(id2[i]) for i in sorted(id2)] if id2 else [str(i) for i in range(model.config.num_labels)]
        self._own_active = True
        self.model_head = "sequence_classification"
        self.early_exit = False
        return self

    def attach(self, live) -> None:
        if self._own_active:
            TaskHead.attach(self, live)
            if not hasattr(live.model, "score") and not hasattr(live.model, "classifier"):
                log.debug("the classifier's own head is used through the model's logits output")
            return
        super().attach(live)

    def read_sites(self) -> list[str]:
        return [] if self._own_active else [self.site]

    def top_site_order(self):
        return None if self._own_active else super().top_site_order()

    def examples(self, live, batch: LiveBatch):
        c = batch.extra.get("classifier_examples")
        if c is None:
            labs = (live.sentence_labels[batch.sentences] if live.sentence_labels is not None
                    else np.full(len(batch.sentences), None, dtype=object))
            codes = _gold_codes(labs, self.classes)
            keep = np.flatnonzero(codes >= 0)
            c = (batch.sentences[keep], torch.from_numpy(keep), torch.from_numpy(codes[keep]))
            batch.extra["classifier_examples"] = c
        return c

    def score(self, live, batch, out, captured, *, expand=1, target=None) -> HeadOut:
        ids, local, gold = self.examples(live, batch)
        S = len(batch.sentences)
        dev = batch.input_ids.device
        if self._own_active:
            lg = out.logits.reshape(expand, batch.input_ids.shape[0], -1)  # per window
            ws = batch.window_sentence.to(dev)
            tot = lg.new_zeros((expand, S, lg.shape[-1])).index_add(1, ws, lg)
            cnt = torch.bincount(ws, minlength=S).to(lg.dtype).view(1, S, 1)
            logits = (tot / cnt).index_select(1, local.to(dev))
        else:
            rows = aggregate(captured[self.site], batch, live.aggregation, expand)  # [m, R, H]
            so = batch.sentence_of_row.to(dev)
            tot = rows.new_zeros((expand, S, rows.shape[-1])).index_add(1, so, rows)
            cnt = torch.bincount(so, minlength=S).to(rows.dtype).view(1, S, 1).clamp(min=1)
            logits = self.logits_of((tot / cnt).index_select(1, local.to(dev)))
        return _class_outputs(logits, gold.to(dev), ids, target)


# -- the model's own language-model head -----------------------------------------------------------------------
LM_KINDS = ("auto", "masked", "causal", "seq2seq")
_LM_HEADS = {"masked": "masked_lm", "causal": "causal_lm", "seq2seq": "seq2seq_lm"}
DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "opt", "bloom", "falcon", "qwen2", "phi",
                 "gemma", "codegen", "mpt", "olmo", "pythia"}


def lm_kind(config) -> str:
    """``masked`` | ``causal`` | ``seq2seq`` for a model config."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = " ".join(getattr(config, "architectures", None) or [])
    if getattr(config, "is_decoder", False) or "CausalLM" in archs or "LMHeadModel" in archs \
            or getattr(config, "model_type", "") in DECODER_TYPES:
        return "causal"
    return "masked"


class LMHead(TaskHead):
    """The model's own LM head, scored on the corpus words (see the module docstring).

    ``kind``: auto | masked | causal | seq2seq; ``mask_prob``: share of each sentence's words masked
    (masked LM; at least one per sentence), drawn with ``seed`` (null: the run's seed)."""

    kind = "lm"
    level = "word"
    early_exit = False

    def __init__(self, kind: str = "auto", mask_prob: float = 0.15, seed: int | None = None, **kw):
        super().__init__(**kw)
        if kind not in LM_KINDS:
            raise ConfigError(f"task.kind={kind!r}: expected one of {', '.join(LM_KINDS)}")
        if not 0 < float(mask_prob) <= 1:
            raise ConfigError(f"task.mask_prob={mask_prob}: expected a share in (0, 1]")
        self.lm = kind
        self.mask_prob = float(mask_prob)
        self.seed = seed

    def resolve(self, config) -> "LMHead":
        if self.lm == "auto":
            self.lm = lm_kind(config)
        self.model_head = _LM_HEADS[self.lm]
        return self

    def attach(self, live) -> None:
        super().attach(live)
        self.resolve(live.model.config)
        if live.model.get_output_embeddings() is None and not hasattr(live.model, "lm_head"):
            raise ConfigError(f"model {live.name!r} ({type(live.model).__name__}) has no language-model head: load it "
                              f"with its {self.model_head} head, or use task=tagger")
        if self.lm == "masked" and live.tokenizer.mask_token_id is None:
            raise ConfigError(f"the tokenizer of {live.name!r} has no mask token: a masked LM task needs one")
        if self.seed is None:
            self.seed = live.seed

    def _plan(self, live, batch: LiveBatch) -> dict[str, Any]:
        c = batch.extra.get("lm_plan")
        if c is not None:
            return c
        tr = batch.token_row.cpu().numpy()
        B, T = tr.shape
        ids = batch.input_ids.cpu().numpy()
        if self.lm == "masked":
            chosen = []
            for s in batch.sentences:
                rows = live.corpus.rows_of([int(s)])
                if not len(rows):
                    continue
                rng = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(s), 0x3A5C])
                pick = rows[rng.random(len(rows)) < self.mask_prob]
                if not len(pick):
                    pick = rows[[int(rng.integers(len(rows)))]]
                chosen.append(pick)
            ex_rows = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
            pos = np.flatnonzero(np.isin(tr.reshape(-1), ex_rows))
            src = pos
            masked = ids.copy().reshape(-1)
            masked[pos] = int(live.tokenizer.mask_token_id)
            inputs = torch.from_numpy(masked.reshape(B, T))
        else:
            flat = tr.reshape(-1)
            t_of = np.tile(np.arange(T), B)
            bad = np.unique(flat[(flat >= 0) & (t_of == 0)])
            ok = (flat >= 0) & ~np.isin(flat, bad)
            pos = np.flatnonzero(ok)
            src = pos - 1
            ex_rows = np.unique(flat[pos])
            inputs = batch.input_ids
        seg = np.searchsorted(ex_rows, tr.reshape(-1)[pos])
        gold = ids.reshape(-1)[pos]
        c = {"rows": ex_rows.astype(np.int64), "pos": torch.from_numpy(pos.astype(np.int64)),
             "src": torch.from_numpy(src.astype(np.int64)), "seg": torch.from_numpy(seg.astype(np.int64)),
             "gold": torch.from_numpy(gold.astype(np.int64)), "inputs": inputs,
             "count": torch.from_numpy(np.bincount(seg, minlength=len(ex_rows)).astype(np.float64))}
        batch.extra["lm_plan"] = c
        return c

    def model_inputs(self, live, batch: LiveBatch):
        p = self._plan(live, batch)
        ids = p["inputs"].to(batch.input_ids.device)
        kw = {"input_ids": ids, "attention_mask": batch.attention_mask}
        if live.enc_dec:
            kw["decoder_input_ids"] = batch.input_ids
            kw["decoder_attention_mask"] = batch.attention_mask
        return kw

    def examples(self, live, batch: LiveBatch):
        p = self._plan(live, batch)
        n = len(p["rows"])
        return p["rows"], torch.arange(n), torch.zeros(n, dtype=torch.long)

    def score(self, live, batch, out, captured, *, expand=1, target=None) -> HeadOut:
        if target is not None:
            raise ConfigError("a target class needs a classification head (task=tagger or classifier), not task=lm")
        p = self._plan(live, batch)
        dev = out.logits.device
        B, T = batch.input_ids.shape
        V = out.logits.shape[-1]
        lg = out.logits.reshape(expand, B * T, V).index_select(1, p["src"].to(dev))  # [m, N, V]
        gold = p["gold"].to(dev)
        logp = torch.log_softmax(lg, dim=-1)
        g = gold.view(1, -1, 1).expand(expand, -1, 1)
        tok_loss = -logp.gather(-1, g).squeeze(-1)  # [m, N]
        tok_logit = lg.gather(-1, g).squeeze(-1)
        wrong = (lg.argmax(-1) != gold.view(1, -1)).to(lg.dtype)
        n = len(p["rows"])
        seg = p["seg"].to(dev)
        cnt = p["count"].to(device=dev, dtype=lg.dtype).view(1, n)
        mean = lambda v: v.new_zeros((expand, n)).index_add(1, seg, v) / cnt
        loss = mean(tok_loss)
        correct = lg.new_zeros((expand, n)).index_add(1, seg, wrong) == 0
        pred = torch.full((expand, n), -1, dtype=torch.long, device=dev)
        return HeadOut(p["rows"], loss, mean(tok_logit), torch.exp(-loss), correct, pred, tok_loss, logits=lg,
                       token_example=seg)


# -- helpers ------------------------------------------------------------------------------------------------------
def _probe_cfg(cfg, run_dir, seed: int, *, epochs: int, lr: float, batch_size: Any, regularization):
    """A config for :func:`fit_probe`: the linear probe's defaults with the head's settings."""
    from omegaconf import OmegaConf

    from ..config import config_dir

    conf = Path(config_dir())
    probe = OmegaConf.load(conf / "probe" / "linear.yaml")
    probe.epochs = int(epochs)
    probe.batch_size = batch_size
    probe.checkpoint = False
    probe.module.optimizer.lr = float(lr)
    trainer = None
    if cfg is not None and cfg.get("trainer") is not None:
        try:
            trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
        except Exception:  # unresolved interpolations outside a Hydra run
            trainer = None
    if trainer is None:
        trainer = OmegaConf.to_container(OmegaConf.load(conf / "trainer" / "cpu.yaml"), resolve=False)
        trainer.pop("default_root_dir", None)
    trainer["max_epochs"] = int(epochs)
    trainer["enable_progress_bar"] = False
    reg = dict(regularization) if regularization else {"name": "none", "lambda_l1": 0.0, "lambda_l2": 0.0,
                                                         "l2_squared": True, "l1_mode": "subgradient"}
    out_dir = str(run_dir) if run_dir is not None else None
    if out_dir is None:
        import tempfile

        out_dir = tempfile.mkdtemp(prefix="neurolab-head-")
    return OmegaConf.create({"probe": OmegaConf.to_container(probe, resolve=False), "trainer": trainer,
                             "regularization": reg, "seed": int(seed), "paths": {"output_dir": out_dir}})


def load_head(path: str | Path) -> TaskHead:
    """A saved trained head (tagger or classifier), whichever kind the file holds."""
    from safetensors import safe_open

    p = Path(str(path))
    if p.is_dir():
        for kind in ("tagger", "classifier"):
            if (p / "task" / f"{kind}.safetensors").exists():
                p = p / "task" / f"{kind}.safetensors"
                break
    if not p.exists():
        raise ConfigError(f"{path}: no saved task head")
    with safe_open(str(p), framework="pt") as f:
        kind = json.loads((f.metadata() or {}).get("neurolab", "{}")).get("kind")
    cls = {"tagger": TaggerHead, "classifier": ClassifierHead}.get(kind)
    if cls is None:
        raise ConfigError(f"{p}: not a saved task head")
    return cls().load(p)
