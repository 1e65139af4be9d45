"""Integrated gradients of the task head's prediction with respect to the neurons of sites, in the
live model (Sundararajan et al. 2017; as used for "knowledge neurons" by Dai et al. 2021).

For an example (a word, for ``task=tagger``) with prediction ``f`` (the gold class's probability,
its logit, or its log-probability = minus the loss), the attribution of unit ``u`` of site ``s`` is

    IG_u = (a_u - a'_u) * integral_0^1 df/da_u (a' + alpha (a - a')) d alpha

where ``a`` is the site's activation and ``a'`` the baseline: zero (or each unit's mean over the
store's training rows) **at the target position only** (``positions=target``: the tokens of the
example's own word, or for a causal LM the positions that predict them, one before each; the other
positions keep their real values, as Dai et al. do) or at every
position (``positions=all``: the whole site scaled, as Captum's layer attribution does). The
attribution of a unit sums its per-token attributions over the scaled tokens, so completeness holds
per example: ``sum_u IG_u = f(a) - f(a')`` up to the quadrature error of ``steps`` points
(``riemann_left``: alpha = 0, 1/K, ..., (K-1)/K as in the original; ``gauss_legendre``: K Gauss
nodes, exact for polynomial paths of degree < 2K).

Each site gets its own path (the other sites keep their values). Batching: the blocks below the
site come from the live model's prefix cache; one forward and one backward pass then handle many
(example, step) copies of a batch at once: copy ``(i, k)`` scales, at step ``k``, the ``i``-th
example of **every** sentence of the batch (sentences are independent), so a batch of sentences
with at most ``S`` examples each needs ``S x K`` copies, cut into chunks of ``chunk_tokens``. A batch
holds one sentence by default (``sentences_per_pass``): sentences of different lengths and word
counts in one batch pay for padding and for idle copies (about half the copies on EWT test).

The live model changes every subword token of a word, while the store's rows are word-level
aggregates: the attribution of a word is the sum over its tokens.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..methods.base import Method, RunContext
from ..ranking import NeuronRanking
from .live import LiveModel

log = logging.getLogger(__name__)

__all__ = ["integrated_gradients", "path_points", "IGResult", "AttributionMethod", "coarse_neurons", "refine_neurons",
           "knowledge_neurons", "knowledge_effects", "RULES", "OBJECTIVES", "POSITIONS", "BASELINES"]

RULES = ("riemann_left", "gauss_legendre")
OBJECTIVES = ("prob", "logit", "loss")
POSITIONS = ("target", "all")
BASELINES = ("zero", "mean")


def path_points(steps: int, rule: str = "riemann_left") -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` of a ``steps``-point quadrature of [0, 1]."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) < 1:
        raise ConfigError(f"steps={steps!r}: integrated gradients needs at least 1 step (an integer >= 1)")
    K = int(steps)
    if rule == "riemann_left":
        return np.arange(K, dtype=np.float64) / K, np.full(K, 1.0 / K)
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(K)
        return (x + 1.0) / 2.0, w / 2.0
    raise ConfigError(f"rule={rule!r}: expected one of {', '.join(RULES)}")


def _f(h, objective: str) -> torch.Tensor:
    """What is attributed: the gold class's probability, logit or log-probability (= -loss)."""
    if objective == "prob":
        return h.prob
    if objective == "logit":
        return h.logit
    if objective == "loss":
        return -h.loss
    raise ConfigError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")


@dataclass
class IGResult:
    """Per-example integrated gradients over a split: ``rows`` (the examples, sorted), per site the
    attributions ``[n, units]``, ``f_actual [n]`` and the baseline's ``f_baseline[site] [n]``;
    ``tokens`` (when asked for): per site, per example row, the per-token attributions
    ``[windows of its sentence, T, units]``."""

    rows: np.ndarray
    labels: np.ndarray
    attributions: dict[str, np.ndarray]
    f_actual: np.ndarray
    f_baseline: dict[str, np.ndarray]
    tokens: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)

    def completeness(self, site: str | None = None) -> np.ndarray:
        """Per example: sum of the attributions minus (f(actual) - f(baseline)) (one site, or summed
        over sites against the sum of their differences)."""
        sites = [site] if site is not None else list(self.attributions)
        tot = sum(self.attributions[s].sum(1) for s in sites)
        delta = sum(self.f_actual - self.f_baseline[s] for s in sites)
        return tot - delta

    def completeness_error(self, site: str | None = None) -> float:
        """mean |sum of attributions - (f(actual) - f(baseline))| / mean |f(actual) - f(baseline)|,
        over the examples and sites."""
        sites = [site] if site is not None else list(self.attributions)
        err = np.concatenate([np.abs(self.completeness(s)) for s in sites])
        d = np.concatenate([np.abs(self.f_actual - self.f_baseline[s]) for s in sites])
        return float(err.mean() / max(d.mean(), 1e-12)) if len(err) else float("nan")


def _check_sites(live: LiveModel, sites: Sequence[str]) -> None:
    if not sites:
        raise ConfigError("integrated gradients: no site to attribute to")
    live.check_sites(list(sites))
    for s in sites:
        if live.site(s).units is None:
            raise ConfigError(f"site {s!r}: its number of units is unknown")


def integrated_gradients(live: LiveModel, sites: Sequence[str], *, split: str = "train",
                         max_sentences: int | None = None, steps: int = 20, rule: str = "riemann_left",
                         objective: str = "prob", positions: str = "target",
                         baselines: Mapping[str, np.ndarray] | None = None, chunk_tokens: int = 4096,
                         max_copies: int | None = None, sentences_per_pass: int = 1, keep_tokens: bool = False,
                         progress: bool = False, cache: bool = True) -> IGResult:
    """Integrated gradients of every example of ``split`` (see the module docstring).

    ``baselines``: per site, the baseline value of each unit (default zeros); ``chunk_tokens``: the
    padded tokens of one forward / backward pass (copies x windows x length), ``max_copies`` at most
    that many (example, step) copies per pass; ``sentences_per_pass``: sentences whose copies share a
    pass (1, the default: each sentence at its own length with exactly one copy per word and step;
    more sentences pad to the longest and give the shorter ones idle copies); ``keep_tokens``: also
    return per-token attributions (small inputs only); ``cache=False``: rerun the blocks below the
    site instead of replaying them (for checks)."""
    alphas, weights = path_points(steps, rule)
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if positions not in POSITIONS:
        raise ConfigError(f"positions={positions!r}: expected one of {', '.join(POSITIONS)}")
    if live.head.level != "word":
        raise ConfigError(f"integrated gradients needs a word-level task head (task=tagger or lm); "
                          f"the {live.head.kind} head scores sentences")
    sites = list(dict.fromkeys(sites))
    _check_sites(live, sites)
    units = {s: int(live.site(s).units) for s in sites}
    base_vec = {}
    for s in sites:
        v = np.zeros(units[s]) if baselines is None or s not in baselines else np.asarray(baselines[s], np.float64)
        if v.shape != (units[s],):
            raise ConfigError(f"baseline of site {s!r}: shape {v.shape}, expected ({units[s]},)")
        base_vec[s] = v
    ex = live.examples(split, max_sentences)
    n = len(ex.ids)
    if n == 0:
        raise ConfigError(f"split {split!r} has no example for the task head {live.head.kind}")
    attr = {s: np.zeros((n, units[s])) for s in sites}
    f1 = np.full(n, np.nan)
    f0 = {s: np.full(n, np.nan) for s in sites}
    toks: dict[str, dict[int, np.ndarray]] = {s: {} for s in sites} if keep_tokens else {}
    corpus = live.corpus
    if int(sentences_per_pass) < 1:
        raise ConfigError(f"sentences_per_pass={sentences_per_pass!r}: expected at least 1")
    batches = corpus.batches(live.sentences(split, max_sentences), batch_tokens=live.batch_tokens,
                             max_batch_sentences=int(sentences_per_pass))
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="attribution", unit="batch", leave=False)
    zero_at = np.flatnonzero(alphas == 0.0)
    dev = live.device
    for batch in it:
        b = batch.to(dev)
        with torch.no_grad():
            h0 = live.record_prefix(b)
        ids = np.asarray(h0.ids)
        if len(ids) == 0:
            continue
        pos = ex.positions(ids)
        f1[pos] = _f(h0, objective)[0].detach().double().cpu().numpy()
        # slot of each example: its index among the examples of its sentence
        sent_of = np.searchsorted(b.sentences, corpus.row_sentence[ids])
        slot = np.zeros(len(ids), np.int64)
        for s_loc in np.unique(sent_of):
            sel = np.flatnonzero(sent_of == s_loc)
            slot[sel] = np.arange(len(sel))
        S = int(slot.max()) + 1
        table = np.full((S, len(b.sentences)), -1, np.int64)  # slot, local sentence -> example (local index)
        table[slot, sent_of] = np.arange(len(ids))
        win_sent = b.window_sentence.cpu().numpy()
        B, T = b.input_ids.shape
        ex_of_win = torch.from_numpy(table[:, win_sent]).to(dev)  # [S, B] local example explained, -1: none
        row_of_ex = torch.from_numpy(ids).to(dev)
        slot_t = torch.from_numpy(slot).to(dev)
        amask = b.attention_mask.bool()
        for s in sites:
            trow = _target_rows(live, b, s)  # [B, T]: the example each position's activation predicts
            start = live.site_start(s) if cache else 0
            base = torch.as_tensor(base_vec[s], device=dev)
            copies = [(i, k) for i in range(S) for k in range(len(alphas))]
            m_max = max(1, int(chunk_tokens) // max(1, B * T))
            if max_copies:
                m_max = min(m_max, int(max_copies))
            got0 = np.zeros(len(ids), bool)
            for a in range(0, len(copies), m_max):
                part = copies[a:a + m_max]
                ci = torch.tensor([c[0] for c in part], device=dev)
                al = torch.tensor([alphas[c[1]] for c in part], device=dev)
                wt = torch.tensor([weights[c[1]] for c in part], device=dev)
                res = _pass(live, b, s, base, ci, al, ex_of_win, row_of_ex, trow, amask, positions, start,
                            objective, slot_t, grad=True, tokens=keep_tokens)
                contrib, fvals = res
                m = len(part)
                # contrib [m, B, H]: to the example each (copy, window) explains
                e = ex_of_win[ci]  # [m, B]
                ok = e >= 0
                w = (contrib * wt.view(m, 1, 1).to(contrib.dtype))[ok]  # [N, H]
                acc = torch.zeros(len(ids), units[s], dtype=torch.float64, device=dev)
                acc.index_add_(0, e[ok], w.double())
                attr[s][pos] += acc.cpu().numpy()
                if keep_tokens:
                    _keep(toks[s], res.tokens, e, wt, ids, B)
                k_of = np.array([c[1] for c in part])
                for j in np.flatnonzero(np.isin(k_of, zero_at)):
                    sel = (slot == part[j][0])
                    f0[s][pos[sel]] = fvals[j][sel]
                    got0 |= sel
            if not got0.all():  # the baseline's f when alpha=0 is not among the path's points
                for a in range(0, S, m_max):
                    ci = torch.arange(a, min(S, a + m_max), device=dev)
                    al = torch.zeros(len(ci), device=dev, dtype=torch.float64)
                    with torch.no_grad():
                        res = _pass(live, b, s, base, ci, al, ex_of_win, row_of_ex, trow, amask, positions, start,
                                    objective, slot_t, grad=False)
                    for j, i in enumerate(ci.tolist()):
                        sel = slot == i
                        f0[s][pos[sel]] = res[1][j][sel]
    if np.isnan(f1).any():
        raise ConfigError("integrated gradients: some examples of the split were not scored by the task head")
    return IGResult(ex.ids.copy(), ex.labels.copy(), {s: attr[s] for s in sites}, f1, f0, toks)


def _target_rows(live: LiveModel, b, site: str) -> torch.Tensor:
    """``[B, T]``: per position of batch ``b``, the row of the word whose prediction the site's
    activation at that position makes (-1: none): the word's own tokens for a tagger and a masked LM
    (its masked tokens); for a causal LM (and the decoder of an encoder-decoder) the positions that
    predict the word's tokens, one before each of them (a word's own tokens cannot change its
    prediction there)."""
    trow = b.token_row
    head = live.head
    if getattr(head, "kind", "") != "lm" or getattr(head, "lm", "") not in ("causal", "seq2seq"):
        return trow
    if head.lm == "seq2seq" and not site.startswith("decoder."):
        return trow  # the encoder reads the word itself
    p = head._plan(live, b)
    flat = torch.full((trow.numel(),), -1, dtype=trow.dtype, device=trow.device)
    src, pos = p["src"].to(trow.device), p["pos"].to(trow.device)
    flat[src] = trow.reshape(-1)[pos]
    return flat.view(trow.shape)


class _PassOut(tuple):
    tokens: Any = None


def _pass(live: LiveModel, b, site: str, base: torch.Tensor, ci: torch.Tensor, al: torch.Tensor, ex_of_win, row_of_ex,
          trow, amask, positions: str, start: int, objective: str, slot_t: torch.Tensor, *, grad: bool,
          tokens: bool = False):
    """One forward (and backward) pass of ``m`` copies of batch ``b``: copy j scales, at ``al[j]``, the
    positions of the ``ci[j]``-th example of every sentence. Returns (per-copy, per-window summed
    grad x (a - a') ``[m, B, H]``, per-copy f of every example of the batch ``[m, n]`` numpy)."""
    m = len(ci)
    B, T = b.input_ids.shape
    e = ex_of_win[ci]  # [m, B]
    if positions == "target":
        want = torch.where(e >= 0, row_of_ex[e.clamp(min=0)], torch.full_like(e, -2))  # global row explained
        mask = (trow.unsqueeze(0) == want.unsqueeze(-1)) & (trow.unsqueeze(0) >= 0)  # [m, B, T]
    else:
        mask = amask.unsqueeze(0) & (e >= 0).unsqueeze(-1)
    keep: dict[str, torch.Tensor] = {}
    # only the scaled positions are touched: their flat index in [m * B * T] and their copy's alpha
    flat = mask.reshape(-1).nonzero().flatten()  # [P]
    a_of = al.repeat_interleave(B * T)[flat] if len(flat) else al[:0]

    def fn(t: torch.Tensor) -> torch.Tensor:
        H = t.shape[-1]
        x = t.detach().reshape(m * B * T, H)
        bb = base.to(x.dtype)
        diff = x[flat] - bb  # [P, H]
        interp = (bb + a_of.to(x.dtype).view(-1, 1) * diff).detach()
        if grad:
            interp.requires_grad_(True)
        keep["leaf"], keep["diff"] = interp, diff
        return x.index_put((flat,), interp).reshape(t.shape)  # (a copy: t may be the prefix cache's)

    h, _ = live.forward(b, {site: fn}, start=start, expand=m, grad=grad)
    if "leaf" not in keep:
        raise ConfigError(f"the attribution hook at site {site!r} never fired")
    fv = _f(h, objective)  # [m, n]
    sel = (slot_t.view(1, -1) == ci.view(-1, 1))  # copy j explains the examples of slot ci[j]
    fnp = fv.detach().double().cpu().numpy()
    if not grad:
        return _PassOut((None, fnp))
    F = (fv * sel.to(fv.dtype)).sum()
    if not F.requires_grad:
        raise ConfigError(f"site {site!r} does not reach the task head's prediction (no gradient)")
    (g,) = torch.autograd.grad(F, [keep["leaf"]])
    rows = g * keep["diff"]  # [P, H]: per scaled token
    H = rows.shape[-1]
    cw = flat // T  # (copy, window) of each scaled token
    summed = torch.zeros(m * B, H, dtype=rows.dtype, device=rows.device).index_add_(0, cw, rows)
    out = _PassOut((summed.view(m, B, H), fnp))
    if tokens:
        per_tok = torch.zeros(m * B * T, H, dtype=rows.dtype, device=rows.device)
        out.tokens = per_tok.index_put_((flat,), rows.detach()).view(m, B, T, H)
    return out


def _keep(store: dict[int, np.ndarray], per_tok: torch.Tensor, e: torch.Tensor, wt: torch.Tensor, ids: np.ndarray,
          B: int) -> None:
    """Accumulate per-token attributions ``[m, B, T, H]`` into ``store[row] [B, T, H]`` (the windows of
    the batch; only those of the row's sentence are non-zero)."""
    m = per_tok.shape[0]
    for j in range(m):
        for ex_local in torch.unique(e[j][e[j] >= 0]).tolist():
            wins = (e[j] == ex_local)
            val = per_tok[j] * wins.view(B, 1, 1).to(per_tok.dtype) * float(wt[j])
            r = int(ids[ex_local])
            arr = val.double().cpu().numpy()
            store[r] = store[r] + arr if r in store else arr


# -- the method ---------------------------------------------------------------------------------------------
class AttributionMethod(Method):
    """Neurons ranked by their integrated-gradients attribution to the task head's prediction.

    Each example of the live corpus's ``split`` (a word, ``task=tagger``) gets one attribution per
    unit of the data's sites (see :func:`integrated_gradients`); the ranking of the concept (its
    value's words: ``concept.value=NOUN``, or ``concept_value``; every example when the concept has
    no value) orders the neurons by their mean attribution over the concept's words (``rank_by:
    mean``) or by the share of those words where the neuron's attribution reaches ``threshold`` x
    the example's largest attribution (``rank_by: share``, Dai et al.'s coarse neurons). A ranking
    per concept value (every label of the live corpus's split) is written next to ``ranking.json``.

    Args:
        steps: points on the path (>= 1); ``rule``: ``riemann_left`` | ``gauss_legendre``.
        objective: ``prob`` (the gold class's probability) | ``logit`` | ``loss`` (attributes the
            gold class's log-probability, minus the loss, so that a positive attribution supports the
            gold class in every case).
        baseline: ``zero`` | ``mean`` (each unit's mean over the store's training rows).
        positions: ``target`` (the example's own tokens) | ``all`` (every position).
        split / max_sentences: the live corpus's examples attributed (its first 200 sentences by
            default: each word costs ``steps`` forward and backward passes of the blocks above the site).
        chunk_tokens: padded tokens per forward / backward pass.
        save_examples: write the per-example attributions (float16) to ``attribution.npz``.
    """

    name = "attribution"

    def __init__(self, steps: int = 20, rule: str = "riemann_left", objective: str = "prob", baseline: str = "zero",
                 positions: str = "target", rank_by: str = "mean", threshold: float = 0.2, split: str = "train",
                 max_sentences: int | None = 200, concept_value: Any = None, chunk_tokens: int = 4096,
                 save_examples: bool = True):
        self.steps = steps
        self.rule = rule
        self.objective = objective
        self.baseline = baseline
        self.positions = positions
        self.rank_by = rank_by
        self.threshold = threshold
        self.split = split
        self.max_sentences = max_sentences
        self.concept_value = concept_value
        self.chunk_tokens = chunk_tokens
        self.save_examples = save_examples

    def _check(self) -> None:
        path_points(self.steps, self.rule)
        for key, val, ok in (("objective", self.objective, OBJECTIVES), ("baseline", self.baseline, BASELINES),
                             ("positions", self.positions, POSITIONS), ("rank_by", self.rank_by, ("mean", "share"))):
            if val not in ok:
                raise ConfigError(f"method.{key}={val!r}: expected one of {', '.join(ok)}")
        if not 0 <= float(self.threshold) <= 1:
            raise ConfigError(f"method.threshold={self.threshold!r}: expected a share of the largest attribution in [0, 1]")

    def fit(self, data, context: RunContext | None = None) -> "AttributionMethod":
        context = RunContext.ensure(context)
        self._check()
        if context.live is None:
            raise ConfigError("method=attribution needs the live model: set task= (tagger or lm)")
        live: LiveModel = context.live()
        sites = list(data.sites)
        nps = {s: int(data.neurons_per_site[s]) for s in sites}
        live.check_sites(sites, nps)
        cols = np.asarray(data.columns, dtype=np.int64)
        starts = np.cumsum([0] + [nps[s] for s in sites])
        # only the sites that hold some of the data's columns get a path
        used = [s for i, s in enumerate(sites) if ((cols >= starts[i]) & (cols < starts[i + 1])).any()]
        baselines = None
        if self.baseline == "mean":
            from .interventions import NeuronStats

            stats = NeuronStats(data, "train", pool_size=0)
            baselines = {}
            for i, s in enumerate(sites):
                v = np.zeros(nps[s])
                u = cols[(cols >= starts[i]) & (cols < starts[i + 1])] - starts[i]
                v[u] = stats.mean[stats.positions([(s, int(x)) for x in u])]
                baselines[s] = v
        res = integrated_gradients(live, used, split=self.split, max_sentences=self.max_sentences, steps=int(self.steps),
                                   rule=self.rule, objective=self.objective, positions=self.positions,
                                   baselines=baselines, chunk_tokens=int(self.chunk_tokens))
        self.result_ = res
        full = np.concatenate([res.attributions[s] if s in res.attributions else np.zeros((len(res.rows), nps[s]))
                               for s in sites], axis=1)  # [n, all units of the sites]
        A = full[:, cols]
        self.attributions_ = A
        labels = np.array([None if x is None else str(x) for x in res.labels], dtype=object)
        vals = _values(live, data, self.concept_value)
        on = np.array([x is not None and x in vals for x in labels], bool) if vals else np.ones(len(labels), bool)
        if not on.any():
            raise ConfigError(f"no example of the concept {sorted(vals or [])} in split {self.split!r} of the live corpus")
        self.rankings_ = {}
        extra = {"objective": self.objective, "steps": int(self.steps), "rule": self.rule, "baseline": self.baseline,
                 "positions": self.positions, "rank_by": self.rank_by}
        self.ranking_ = self._rank(A, on, data, context, dict(extra, examples=int(on.sum())))
        for v in sorted({x for x in labels if x is not None}):
            sel = labels == v
            r = self._rank(A, sel, data, context, dict(extra, examples=int(sel.sum())))
            base = (getattr(data, "concept_name", "") or "").split("=")[0] or live.concept_name or "concept"
            r.concept = f"{base}={v}"
            self.rankings_[v] = r
        metrics: dict[str, float] = {"attribution/completeness_error": res.completeness_error(),
                                     "attribution/examples": int(on.sum()),
                                     "attribution/examples_all": int(len(res.rows)),
                                     "attribution/f_actual": float(np.mean(res.f_actual[on]))}
        for s in used:
            metrics[f"attribution/completeness_error/{s}"] = res.completeness_error(s)
        metrics.update({k: v for k, v in live.head.metrics.items() if isinstance(v, (int, float))})
        self.metrics_ = metrics
        return self

    def _rank(self, A: np.ndarray, sel: np.ndarray, data, context, extra) -> NeuronRanking:
        mean = A[sel].mean(0)
        mx = A[sel].max(1, keepdims=True)
        share = ((A[sel] >= float(self.threshold) * mx) & (mx > 0)).mean(0)
        score = mean if self.rank_by == "mean" else share + 1e-9 * np.sign(mean) * np.minimum(np.abs(mean), 1.0)
        return self.ranking_from_scores(score, data, context, extra=extra)

    def write(self, run_dir, stem: str = "") -> list[Path]:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        out = []
        if self.save_examples:
            p = run_dir / f"{stem}attribution.npz"
            res = self.result_
            labels = np.array(["" if x is None else str(x) for x in res.labels])
            np.savez(p, rows=res.rows.astype(np.int64), labels=labels, f_actual=res.f_actual,
                     attributions=self.attributions_.astype(np.float16),
                     **{f"f_baseline/{s}": v for s, v in res.f_baseline.items()},
                     completeness=res.completeness())
            out.append(p)
        d = run_dir / f"{stem}attribution_rankings"
        d.mkdir(exist_ok=True)
        for v, r in self.rankings_.items():
            out.append(r.to_json(d / f"{_safe(v)}.json"))
        return out


def _safe(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", str(v)) or "_"


def _values(live: LiveModel, data, concept_value) -> set[str] | None:
    if concept_value is not None:
        vals = [concept_value] if isinstance(concept_value, str) else list(concept_value)
        return {str(v) for v in vals}
    from .live import concept_values_of

    return live.concept_values or concept_values_of(None, str(getattr(data, "concept_name", "") or ""))


# -- knowledge neurons (Dai et al. 2021) --------------------------------------------------------------------
def coarse_neurons(attributions: np.ndarray, t: float = 0.2) -> np.ndarray:
    """Per example, the neurons whose attribution exceeds ``t`` x that example's largest attribution:
    a bool ``[n, F]`` (an example whose largest attribution is not positive has none)."""
    A = np.asarray(attributions, dtype=np.float64)
    if A.ndim != 2:
        raise ConfigError(f"attributions of shape {A.shape}: expected [examples, neurons]")
    if not 0 <= t <= 1:
        raise ConfigError(f"t={t!r}: expected a share of the largest attribution in [0, 1]")
    mx = A.max(1, keepdims=True) if A.shape[1] else np.zeros((len(A), 1))
    return (A > t * mx) & (mx > 0)


def refine_neurons(coarse: np.ndarray, p: float = 0.7, *, keep: tuple[int, int] = (2, 5), step: float = 0.05,
                   max_iter: int = 100) -> tuple[np.ndarray, float]:
    """The neurons shared by at least a share ``p`` of one concept's examples (``coarse``: bool
    ``[n, F]`` of its examples), with ``p`` adapted as in the original procedure: raised by ``step``
    while more than ``keep[1]`` neurons pass, lowered while fewer than ``keep[0]`` do (never below
    ``step`` nor above 1, and never back to a value already tried, so it ends). Returns the neurons
    (column indices, most shared first) and the final ``p``."""
    C = np.asarray(coarse, dtype=bool)
    if C.ndim != 2 or len(C) == 0:
        raise ConfigError("refine_neurons: no example of the concept")
    lo, hi = int(keep[0]), int(keep[1])
    if not 0 <= lo <= hi:
        raise ConfigError(f"keep={keep!r}: expected (min, max) counts with min <= max")
    share = C.mean(0)
    tried: set[int] = set()
    q = float(p)
    for _ in range(int(max_iter)):
        key = int(round(q / step))
        tried.add(key)
        n = int((share >= q - 1e-12).sum())
        if n > hi and q + step <= 1 + 1e-9 and int(round((q + step) / step)) not in tried:
            q += step
        elif n < lo and q - step >= step - 1e-9 and int(round((q - step) / step)) not in tried:
            q -= step
        else:
            break
    sel = np.flatnonzero(share >= q - 1e-12)
    order = sel[np.lexsort((sel, -share[sel]))]
    return order, round(q, 10)


def knowledge_neurons(attributions: np.ndarray, labels: Sequence[Any], *, t: float = 0.2, p: float = 0.7,
                      keep: tuple[int, int] = (2, 5), step: float = 0.05) -> dict[str, dict[str, Any]]:
    """Dai et al.'s procedure on per-example attributions ``[n, F]`` with one label (concept value) per
    example: coarse neurons per example (:func:`coarse_neurons`), refined per label to those shared by
    a share ``p`` of its examples, ``p`` adapted until each label keeps ``keep`` neurons
    (:func:`refine_neurons`). Returns ``{label: {"neurons": columns, "p": p, "examples": n}}``."""
    labels = np.array([None if x is None else str(x) for x in labels], dtype=object)
    A = np.asarray(attributions)
    if len(labels) != len(A):
        raise ConfigError(f"{len(labels)} labels for {len(A)} examples")
    C = coarse_neurons(A, t)
    out = {}
    for v in sorted({x for x in labels if x is not None}):
        sel = labels == v
        cols, q = refine_neurons(C[sel], p, keep=keep, step=step)
        out[v] = {"neurons": cols, "p": q, "examples": int(sel.sum())}
    return out


def knowledge_effects(live: LiveModel, neurons: Mapping[str, Sequence[tuple[str, int]]], *, split: str = "test",
                      max_sentences: int | None = None, factors: Mapping[str, float] | None = None) -> dict[str, float]:
    """Suppression (x0) and enhancement (x2) of each concept value's knowledge neurons at the words'
    own tokens (every word's tokens at once, specials untouched), reported as the mean relative change
    of the gold class's probability on the value's own words and on the other words:
    ``kn/{op}/{value}/own`` and ``kn/{op}/{value}/other`` (``-0.3``: 30% lower), with
    ``kn/{value}/neurons`` the number of neurons. ``factors``: the operations (default
    ``{"suppress": 0.0, "enhance": 2.0}``)."""
    factors = dict(factors or {"suppress": 0.0, "enhance": 2.0})
    ex = live.examples(split, max_sentences)
    labels = np.array([None if x is None else str(x) for x in ex.labels], dtype=object)
    out: dict[str, float] = {}
    batches = live.batches(split, max_sentences)
    base = np.full(len(ex.ids), np.nan)
    for b in batches:
        with torch.no_grad():
            h, _ = live.forward(b)
        base[ex.positions(h.ids)] = h.prob[0].double().cpu().numpy()
    for v, ns in neurons.items():
        ns = [(str(s), int(u)) for s, u in ns]
        if not ns:
            continue
        live.check_sites(sorted({s for s, _ in ns}))
        own = labels == str(v)
        other = np.array([x is not None for x in labels]) & ~own
        out[f"kn/{v}/neurons"] = len(ns)
        for op, fac in factors.items():
            new = np.full(len(ex.ids), np.nan)
            for b in batches:
                bb = b.to(live.device)
                mask = (bb.token_row >= 0).unsqueeze(-1)
                fns = {}
                for s in sorted({s for s, _ in ns}):
                    idx = torch.tensor([u for x, u in ns if x == s], device=live.device)

                    def fn(t, _i=idx):
                        t = t.clone()
                        t[..., _i] = torch.where(mask, t[..., _i] * fac, t[..., _i])
                        return t

                    fns[s] = fn
                with torch.no_grad():
                    h, _ = live.forward(bb, fns)
                new[ex.positions(h.ids)] = h.prob[0].double().cpu().numpy()
            rel = (new - base) / np.maximum(base, 1e-12)
            out[f"kn/{op}/{v}/own"] = float(rel[own].mean()) if own.any() else float("nan")
            out[f"kn/{op}/{v}/other"] = float(rel[other].mean()) if other.any() else float("nan")
    return out
