"""Non-negative matrix factorisation of activations (survey §3.5; the view of Alammar's Ecco).

The activations of the words of one or more sentences, ``A [words, neurons]`` (the chosen sites
concatenated), are made non-negative (``negative``: ``clip`` sets negative values to 0, the default,
as the feed-forward activations after GELU are nearly non-negative; ``shift`` subtracts each
neuron's minimum over these words; ``abs`` takes magnitudes) and factorised with scikit-learn's NMF
into ``k`` factors, ``A ~ W H`` with ``W [words, k]`` (how strongly each word expresses each
factor) and ``H [k, neurons]`` (which neurons make up each factor). Factors are numbered by
decreasing total weight over the words, and scaled so that each row of ``H`` peaks at 1.

:func:`nmf_page` renders a self-contained HTML view: each word coloured by its dominant factor
(opacity by its strength), every factor's top neurons, and for each of those neurons its
top-activating words over the whole store (concept search), so a factor can be read both ways.
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["NMFResult", "factorize", "nmf_page", "NEGATIVE", "top_words"]

NEGATIVE = ("clip", "shift", "abs")

#: factor colours (colour-blind-safe first, then more)
PALETTE = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#EE8866",
           "#44BB99", "#FFAABB", "#99DDFF", "#AAAA00", "#77AADD", "#EEDD88", "#DDDDDD", "#000000"]


@dataclass
class NMFResult:
    W: np.ndarray              # [words, k]
    H: np.ndarray              # [k, neurons]
    names: list[str]           # neuron names (site:unit) of H's columns
    reconstruction_error: float
    relative_error: float
    extra: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.H.shape[0]

    def dominant(self) -> np.ndarray:
        """The strongest factor of every word (-1 where all factors are 0)."""
        d = self.W.argmax(axis=1)
        d[self.W.max(axis=1) <= 0] = -1
        return d

    def top_neurons(self, factor: int, n: int = 10) -> list[tuple[int, float]]:
        h = self.H[factor]
        order = np.lexsort((np.arange(len(h)), -h))[:n]
        return [(int(i), float(h[i])) for i in order if h[i] > 0]


def nonnegative(A: np.ndarray, how: str = "clip") -> np.ndarray:
    if how not in NEGATIVE:
        raise ConfigError(f"negative={how!r}; expected one of {list(NEGATIVE)}")
    A = np.asarray(A, dtype=np.float64)
    if how == "clip":
        return np.maximum(A, 0.0)
    if how == "abs":
        return np.abs(A)
    return A - A.min(axis=0, keepdims=True)


def factorize(A: np.ndarray, k: int, *, names: Sequence[str] | None = None, negative: str = "clip", seed: int = 0,
              max_iter: int = 1000, init: str = "nndsvda", tol: float = 1e-5) -> NMFResult:
    """NMF of ``A [words, neurons]`` into ``k`` factors (see the module docstring)."""
    from sklearn.decomposition import NMF

    A = np.asarray(A)
    if A.ndim != 2 or A.shape[0] == 0:
        raise ConfigError(f"NMF needs a [words, neurons] matrix with at least one word, got shape {A.shape}")
    k = int(k)
    if not 1 <= k <= min(A.shape):
        raise ConfigError(f"k={k} factors: expected 1 <= k <= min(words, neurons) = {min(A.shape)}")
    X = nonnegative(A, negative)
    model = NMF(n_components=k, init=init, random_state=int(seed), max_iter=int(max_iter), tol=tol)
    W = model.fit_transform(X)
    H = model.components_
    # canonical order and scale: factors by total weight; each H row peaks at 1
    peak = H.max(axis=1)
    peak[peak <= 0] = 1.0
    H = H / peak[:, None]
    W = W * peak[None, :]
    order = np.lexsort((np.arange(k), -W.sum(axis=0)))
    W, H = W[:, order], H[order]
    err = float(np.linalg.norm(X - W @ H))
    rel = err / max(float(np.linalg.norm(X)), 1e-300)
    names = list(names) if names is not None else [str(i) for i in range(A.shape[1])]
    return NMFResult(W, H, names, err, rel, {"n_iter": int(model.n_iter_), "negative": negative, "seed": int(seed)})


def top_words(store: Any, corpus: Any, sites: Sequence[str], columns: Sequence[int], k: int = 8,
              chunk_rows: int = 8192) -> dict[int, list[tuple[str, float, int]]]:
    """Concept search for a few columns: the ``k`` words of the whole store with the largest
    activation of each column (``{column: [(word, value, row), ...]}``)."""
    import torch

    from ..methods.stats import TopActivations

    cols = np.asarray(sorted(set(int(c) for c in columns)), np.int64)
    if len(cols) == 0:
        return {}
    top = TopActivations(len(cols), int(k))
    for a in range(0, store.num_tokens, chunk_rows):
        b = min(a + chunk_rows, store.num_tokens)
        X = store.read(slice(a, b), sites)[:, cols]
        top.update(torch.from_numpy(np.ascontiguousarray(X)), torch.arange(a, b, dtype=torch.int64))
    vals, rows = (t.numpy() for t in top.compute())
    sent, word = store.sentence_ids, store.word_ids
    out = {}
    for j, c in enumerate(cols):
        lst = []
        for v, r in zip(vals[:, j], rows[:, j]):
            if r < 0:
                continue
            s, w = int(sent[r]), int(word[r])
            lst.append((corpus.sentences[s].words[w] if s < len(corpus.sentences) else "?", float(v), int(r)))
        out[int(c)] = lst
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:21px} h2{font-size:16px;margin-top:22px} .sub{color:#666;font-size:13px}
.sent{line-height:2.2;font-size:15px;margin:4px 0} .w{padding:3px 4px;border-radius:3px;margin:0 1px}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6} .sw{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:middle}
.n{font-family:monospace} .tw{color:#555;font-size:12px} details{margin:2px 0}
"""


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    return f"rgba({r},{g},{b},{max(0.0, min(1.0, alpha)):.3f})"


def nmf_page(result: NMFResult, sentences: Sequence[Sequence[str]], *, title: str = "NMF factors",
             subtitle: str = "", top_n: int = 10, concept: dict[int, list[tuple[str, float, int]]] | None = None) -> str:
    """The HTML view. ``sentences``: the words of each factorised sentence, in row order (their word
    counts sum to the rows of ``result.W``); ``concept``: top words per neuron column (:func:`top_words`)."""
    W = result.W
    dom = result.dominant()
    colmax = W.max(axis=0)
    colmax[colmax <= 0] = 1.0
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_CSS}</style>"
             f"</head><body><h1>{esc(title)}</h1><div class='sub'>{esc(subtitle)}</div>"]
    parts.append("<h2>Sentences</h2><div class='sub'>each word in the colour of its strongest factor "
                 "(opacity: its strength relative to that factor's maximum); hover for all factors</div>")
    at = 0
    for words in sentences:
        spans = []
        for w in words:
            f = int(dom[at])
            if f >= 0:
                colour = _rgba(PALETTE[f % len(PALETTE)], 0.15 + 0.85 * W[at, f] / colmax[f])
                tip = ", ".join(f"F{j}: {W[at, j]:.3g}" for j in range(W.shape[1]))
                spans.append(f"<span class='w' style='background:{colour}' title='{esc(tip)}'>{esc(w)}</span>")
            else:
                spans.append(f"<span class='w' title='no factor'>{esc(w)}</span>")
            at += 1
        parts.append(f"<div class='sent'>{' '.join(spans)}</div>")
    parts.append("<h2>Factors</h2><table><tr><th>factor</th><th>words dominated</th><th>top neurons "
                 "(weight in the factor; top words over the corpus)</th></tr>")
    for f in range(result.k):
        share = float((dom == f).mean()) if len(dom) else 0.0
        rows = []
        for col, h in result.top_neurons(f, top_n):
            name = result.names[col]
            tw = ""
            if concept and col in concept:
                words = ", ".join(f"{esc(w)} ({v:.2f})" for w, v, _ in concept[col])
                tw = f"<details><summary class='tw'>top words</summary><div class='tw'>{words}</div></details>"
            rows.append(f"<div><span class='n'>{esc(name)}</span> {h:.2f}{tw}</div>")
        parts.append(f"<tr><td><span class='sw' style='background:{PALETTE[f % len(PALETTE)]}'></span> F{f}</td>"
                     f"<td>{share:.0%}</td><td>{''.join(rows) or '-'}</td></tr>")
    parts.append(f"</table><p class='sub'>relative reconstruction error {result.relative_error:.3f}</p></body></html>")
    return "".join(parts)
