"""Latent concepts (Dalvi et al. 2022, "Discovering latent concepts learned in BERT").

The representations of the words of one site (one store row per word occurrence) are grouped into
``K`` clusters by agglomerative clustering with Ward's criterion. Up to ``ward_max`` words are
clustered directly (scikit-learn's ``AgglomerativeClustering``); beyond that, mini-batch k-means
(seeded) first reduces them to ``kmeans_clusters`` centroids, which are then merged by Ward's
criterion *weighted by their sizes* (:func:`weighted_ward`: the exact Ward merge cost of clusters
of ``n_a`` and ``n_b`` words, ``n_a n_b / (n_a + n_b) ||c_a - c_b||^2``, so a centroid counts as
the words it holds), and each word joins the cluster of its centroid.

Each cluster is then aligned with the corpus annotations: for every annotation column (``upos``,
``xpos``, ``deprel``, ``feats.X`` ...) the cluster is *aligned* with a value when at least
``threshold`` (0.9) of its words carry that value (words without a value count against it). The
aligned share of a column is the share of clusters aligned with one of its values; clusters that no
column explains are the candidate *latent* concepts the model learned beyond the labels.
"""
from __future__ import annotations

import html
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["weighted_ward", "latent_clusters", "align_clusters", "Alignment", "latent_page"]


def weighted_ward(C: np.ndarray, weights: np.ndarray, n_clusters: int) -> np.ndarray:
    """Ward agglomeration of points ``C [m, d]`` carrying ``weights`` (cluster sizes) into
    ``n_clusters`` clusters; returns a cluster id per point (ids in order of their lowest point).

    Nearest-neighbour chain over the Ward merge costs with the Lance-Williams update, ``O(m^2)`` time
    and memory; the dendrogram is cut by applying the ``m - n_clusters`` cheapest merges. With unit
    weights this is plain Ward clustering (as ``scipy.cluster.hierarchy.ward``)."""
    C = np.asarray(C, dtype=np.float64)
    size = np.asarray(weights, dtype=np.float64).copy()
    m = len(C)
    K = int(n_clusters)
    if not 1 <= K:
        raise ConfigError(f"n_clusters={K}: expected at least 1")
    if K >= m:
        return np.arange(m, dtype=np.int64)
    sq = np.einsum("ij,ij->i", C, C)
    D = C @ C.T
    D *= -2.0
    D += sq[:, None]
    D += sq[None, :]
    np.maximum(D, 0.0, out=D)
    D *= (size[:, None] * size[None, :]) / (size[:, None] + size[None, :])
    np.fill_diagonal(D, np.inf)
    merges: list[tuple[float, int, int]] = []
    chain: list[int] = []
    active = np.ones(m, dtype=bool)
    remaining = m
    while remaining > 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        row = D[a]
        b = int(np.argmin(row))
        if len(chain) >= 2 and row[chain[-2]] <= row[b]:
            b = chain[-2]
        if len(chain) >= 2 and b == chain[-2]:
            chain.pop()
            chain.pop()
            cost = float(row[b])
            na, nb = size[a], size[b]
            new = ((na + size) * D[a] + (nb + size) * D[b] - size * cost) / (na + nb + size)
            i, j = (a, b) if a < b else (b, a)
            D[i, :] = new
            D[:, i] = new
            D[i, i] = np.inf
            D[j, :] = np.inf
            D[:, j] = np.inf
            size[i] = na + nb
            active[j] = False
            remaining -= 1
            merges.append((cost, i, j))
        else:
            chain.append(b)
    merges.sort(key=lambda t: t[0])  # stable: equal costs keep their order
    parent = np.arange(m)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, i, j in merges[: m - K]:
        ri, rj = find(i), find(j)
        parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(x) for x in range(m)])
    _, first = np.unique(roots, return_index=True)
    ids = {int(roots[f]): k for k, f in enumerate(sorted(first))}
    return np.array([ids[int(r)] for r in roots], dtype=np.int64)


def latent_clusters(X: np.ndarray, k: int, *, ward_max: int = 5000, kmeans_clusters: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, dict]:
    """Cluster ids (``0..k-1``) of the rows of ``X [words, units]`` (see the module docstring) and a
    dict describing how they were made."""
    n = len(X)
    k = int(k)
    if k < 1:
        raise ConfigError(f"k={k}: the number of latent clusters must be at least 1")
    if k > n:
        raise ConfigError(f"k={k} latent clusters but only {n} words: K must not exceed the number of words")
    t0 = time.perf_counter()
    info: dict[str, Any] = {"words": int(n), "k": k}
    if n <= ward_max:
        from sklearn.cluster import AgglomerativeClustering

        if k == n:
            labels = np.arange(n)
        else:
            labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(np.asarray(X, np.float64))
        info["method"] = "ward"
    else:
        from sklearn.cluster import MiniBatchKMeans

        m = int(kmeans_clusters) if kmeans_clusters else min(max(4 * k, 2000), int(ward_max))
        m = max(min(m, n), k)
        km = MiniBatchKMeans(n_clusters=m, random_state=int(seed), batch_size=4096, n_init=1, init="random",
                             max_no_improvement=5)
        assign = km.fit_predict(np.asarray(X, np.float32))
        counts = np.bincount(assign, minlength=m)
        used = np.flatnonzero(counts > 0)
        if len(used) < k:
            raise ConfigError(f"k={k}: mini-batch k-means left only {len(used)} non-empty centroids; lower k or "
                              "raise kmeans_clusters")
        ward = weighted_ward(km.cluster_centers_[used], counts[used], k)
        lookup = np.full(m, -1, np.int64)
        lookup[used] = ward
        labels = lookup[assign]
        info.update(method="kmeans+ward", kmeans_clusters=int(m), kmeans_used=int(len(used)))
    labels = _canonical(np.asarray(labels, np.int64))
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return labels, info


def _canonical(labels: np.ndarray) -> np.ndarray:
    uniq, first = np.unique(labels, return_index=True)
    remap = np.empty(int(labels.max()) + 1, np.int64)
    remap[uniq[np.argsort(first)]] = np.arange(len(uniq))
    return remap[labels]


@dataclass
class Alignment:
    """Per cluster and annotation column: the most frequent value, its share and whether it aligns."""

    threshold: float
    sizes: np.ndarray                     # [K]
    top: dict[str, list[str | None]]      # column -> per cluster its most frequent value
    share: dict[str, np.ndarray]          # column -> per cluster that value's share of the cluster's words
    columns: list[str] = field(default_factory=list)

    def aligned(self, column: str) -> np.ndarray:
        return self.share[column] >= self.threshold - 1e-12

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        n = float(self.sizes.sum())
        for c in self.columns:
            al = self.aligned(c)
            out[c] = {"aligned_share": float(al.mean()) if len(al) else float("nan"),
                      "aligned_clusters": int(al.sum()),
                      "aligned_words": float(self.sizes[al].sum() / n) if n else float("nan"),
                      "labels_aligned": int(len({self.top[c][i] for i in np.flatnonzero(al)}))}
        any_al = np.zeros(len(self.sizes), bool)
        for c in self.columns:
            any_al |= self.aligned(c)
        out["any"] = {"aligned_share": float(any_al.mean()) if len(any_al) else float("nan"),
                      "aligned_clusters": int(any_al.sum()),
                      "aligned_words": float(self.sizes[any_al].sum() / n) if n else float("nan")}
        return out


def align_clusters(labels: np.ndarray, codes: dict[str, np.ndarray], values: dict[str, list[str]],
                   threshold: float = 0.9) -> Alignment:
    """Align every cluster with the annotation ``codes`` (per column, one code per clustered word,
    ``-1`` = no value; ``values`` names the codes)."""
    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"align threshold={threshold!r}: expected a share in (0, 1]")
    labels = np.asarray(labels, np.int64)
    K = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=K)
    top, share = {}, {}
    for c, code in codes.items():
        code = np.asarray(code, np.int64)
        V = len(values[c])
        ok = code >= 0
        if V == 0:
            top[c], share[c] = [None] * K, np.zeros(K)
            continue
        counts = np.bincount(labels[ok] * V + code[ok], minlength=K * V).reshape(K, V)
        best = counts.argmax(axis=1)  # ties: the first value in sorted order
        bc = counts[np.arange(K), best]
        share[c] = np.divide(bc, sizes, out=np.zeros(K), where=sizes > 0)
        top[c] = [values[c][int(v)] if bc[i] > 0 else None for i, v in enumerate(best)]
    return Alignment(float(threshold), sizes, top, share, list(codes))


def latent_page(site: str, labels: np.ndarray, words: Sequence[str], alignment: Alignment, *, title: str = "",
                max_types: int = 30) -> str:
    """A self-contained HTML browser of the clusters of one site: the aligned shares, then every
    cluster with its size, its most frequent value per column (aligned ones marked) and its words."""
    esc = html.escape
    K = len(alignment.sizes)
    members: list[list[int]] = [[] for _ in range(K)]
    for i, l in enumerate(labels):
        members[int(l)].append(i)
    summ = alignment.summary()
    css = ("body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}"
           "h1{font-size:21px} h2{font-size:16px} table{border-collapse:collapse;font-size:13px}"
           "td,th{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left;vertical-align:top}"
           "th{background:#f6f6f6} .al{background:#dff0d8;border-radius:3px;padding:1px 4px}"
           ".lat{background:#fcf0d0;border-radius:3px;padding:1px 4px} .wd{font-size:12px;color:#333}"
           ".sub{color:#666;font-size:13px}")
    head = esc(title or f"Latent concepts of {site}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{head}</title><style>{css}</style></head>"
             f"<body><h1>{head}</h1><div class='sub'>{len(labels)} words, {K} clusters; a cluster is aligned "
             f"with a value when at least {alignment.threshold:.0%} of its words carry it</div>"]
    parts.append("<h2>Aligned share</h2><table><tr><th>column</th><th>clusters aligned</th><th>words in aligned "
                 "clusters</th></tr>")
    for c, s in summ.items():
        parts.append(f"<tr><td>{esc(c)}</td><td>{s['aligned_share']:.1%} ({s['aligned_clusters']})</td>"
                     f"<td>{s['aligned_words']:.1%}</td></tr>")
    parts.append("</table><h2>Clusters</h2><table><tr><th>#</th><th>words</th><th>labels</th><th>word types</th></tr>")
    order = sorted(range(K), key=lambda i: (-int(alignment.sizes[i]), i))
    for i in order:
        labs = []
        any_al = False
        for c in alignment.columns:
            v = alignment.top[c][i]
            if v is None:
                continue
            al = bool(alignment.aligned(c)[i])
            any_al |= al
            cls = " class='al'" if al else ""
            labs.append(f"<span{cls}>{esc(c)}={esc(str(v))} {alignment.share[c][i]:.0%}</span>")
        types = Counter(words[j] for j in members[i]).most_common(max_types)
        wtxt = ", ".join(f"{esc(w)}" + (f" ×{n}" if n > 1 else "") for w, n in types)
        tag = "" if any_al else " <span class='lat'>latent</span>"
        parts.append(f"<tr><td>{i}{tag}</td><td>{int(alignment.sizes[i])}</td><td>{'<br>'.join(labs) or '-'}</td>"
                     f"<td class='wd'>{wtxt}</td></tr>")
    parts.append("</table></body></html>")
    return "".join(parts)
