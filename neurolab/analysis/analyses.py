"""The analyses of ``neurolab analyze analysis=<name>`` (one class each, built from ``conf/analysis/``).

* :class:`ClusterAnalysis` (``clusters``): correlation clusters of all neurons -> ``clusters.json``.
* :class:`RedundancyAnalysis` (``redundancy``): clusters of the whole model and of every site, the
  share of redundant neurons, site x site linear CKA -> ``redundancy.json``, ``clusters.json``,
  ``redundancy_cka.png``.
* :class:`SelectionAnalysis` (``select``): layer selection + correlation clustering + probe-ranked
  feature selection -> ``selection.json`` and ``select/*`` metrics.
* :class:`SimilarityAnalysis` (``similarity``): the store against one or more other stores of the
  same corpus -> ``similarity.json`` (CKA / SVCCA / PWCCA site x site), ``ranking_maxcorr.json``,
  ``ranking_mincorr.json``, ``ranking_linreg.json``, ``similarity.png``.
* :class:`NMFAnalysis` (``nmf``): factors of a few sentences' activations -> ``nmf.json``, ``nmf.html``.
* :class:`LatentAnalysis` (``latent``): latent concepts of each site aligned with the annotations
  -> ``latent.json``, ``latent/<site>.html``.

All statistics between neurons come from one streaming pass over the store(s)
(:func:`neurolab.analysis.correlation.stream_moments`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..ranking import NeuronRanking
from .base import Analysis, RunContext, resolve_sites, store_label
from .clusters import check_threshold

log = logging.getLogger(__name__)

__all__ = ["ClusterAnalysis", "RedundancyAnalysis", "SelectionAnalysis", "SimilarityAnalysis", "NMFAnalysis",
           "LatentAnalysis"]


def _dump(path: Path, obj: Any) -> Path:
    def default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return None if np.isnan(o) else float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON-serialisable: {type(o)}")

    def clean(o):
        if isinstance(o, float) and not np.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.ndarray):
            return clean(o.tolist())
        return o

    path.write_text(json.dumps(clean(obj), indent=1, default=default) + "\n", encoding="utf-8")
    return path


def _seed(seed: Any, context: RunContext) -> int:
    return int(context.seed if seed is None else seed)


def _corpus(context: RunContext, store):
    """The run's corpus (``cfg.corpus``), checked against the store's sentences and words."""
    from ..corpus import load_corpus

    cfg = context.cfg
    if cfg is None or cfg.get("corpus") is None:
        raise ConfigError("this analysis needs the store's corpus (corpus.path=...)")
    corpus, splits = load_corpus(cfg.corpus)
    n_sent = store.num_sentences
    if n_sent > len(corpus.sentences):
        raise ConfigError(f"store {store.path} has {n_sent} sentences but the corpus {cfg.corpus.get('path')} has "
                          f"{len(corpus.sentences)}: give the corpus the store was extracted from")
    lens = corpus.lengths()
    bad = np.flatnonzero(store.word_ids >= lens[store.sentence_ids])
    if len(bad):
        r = int(bad[0])
        raise ConfigError(f"store {store.path} row {r} is word {int(store.word_ids[r])} of sentence "
                          f"{int(store.sentence_ids[r])}, which has {int(lens[store.sentence_ids[r]])} words in the "
                          "corpus: give the corpus the store was extracted from")
    return corpus, splits


class _MomentsMixin:
    """One streaming pass over the store's chosen sites."""

    def _moments(self, store, sites: list[str]):
        from .correlation import stream_moments

        metric = stream_moments([store], [sites], chunk_rows=int(self.chunk_rows), product_dtype=self.product_dtype,
                                labels=[store_label(store)])
        return metric.moments(release=True)


class ClusterAnalysis(_MomentsMixin, Analysis):
    """Correlation clustering of the neurons of the chosen sites (``1 - |r|``, average linkage)."""

    name = "clusters"

    def __init__(self, threshold: float = 0.3, representative: str = "medoid", sites: Any = None,
                 seed: int | None = None, chunk_rows: int = 8192, product_dtype: str = "float32"):
        self.threshold = threshold
        self.representative = representative
        self.sites = sites
        self.seed = seed
        self.chunk_rows = chunk_rows
        self.product_dtype = product_dtype

    def fit(self, store, context: RunContext | None = None) -> "ClusterAnalysis":
        from .clusters import cluster_correlations

        context = RunContext.ensure(context)
        t = check_threshold(self.threshold, "analysis.threshold")
        sites = resolve_sites(store, self.sites, context)
        t0 = time.perf_counter()
        mom = self._moments(store, sites)
        t1 = time.perf_counter()
        corr = mom.correlation(inplace=True)
        self.result_ = cluster_correlations(corr, mom.groups[0].names(), t, rule=self.representative,
                                            seed=_seed(self.seed, context))
        self.sites_ = sites
        s = self.result_.summary()
        self.metrics_ = {f"clusters/{k}": v for k, v in s.items()}
        self.metrics_.update({"time/moments_s": round(t1 - t0, 3), "time/clustering_s": round(time.perf_counter() - t1, 3)})
        self.rankings_ = {}
        return self

    def write(self, run_dir) -> list[Path]:
        d = self.result_.to_json()
        d["sites"] = self.sites_
        return [_dump(Path(run_dir) / "clusters.json", d)]


class RedundancyAnalysis(_MomentsMixin, Analysis):
    """Redundancy of the whole model and of every site (Dalvi et al. 2020) and site x site linear CKA."""

    name = "redundancy"

    def __init__(self, threshold: float = 0.3, representative: str = "medoid", sites: Any = None,
                 seed: int | None = None, chunk_rows: int = 8192, product_dtype: str = "float32"):
        self.threshold = threshold
        self.representative = representative
        self.sites = sites
        self.seed = seed
        self.chunk_rows = chunk_rows
        self.product_dtype = product_dtype

    def fit(self, store, context: RunContext | None = None) -> "RedundancyAnalysis":
        from .clusters import redundancy_report, site_cka

        context = RunContext.ensure(context)
        t = check_threshold(self.threshold, "analysis.threshold")
        sites = resolve_sites(store, self.sites, context)
        mom = self._moments(store, sites)
        spans = mom.groups[0].spans()
        self.cka_ = site_cka(mom.cov, [spans[s] for s in sites])
        corr = mom.correlation(inplace=True)
        self.report_ = redundancy_report(corr, mom.groups[0].names(), spans, t, rule=self.representative,
                                         seed=_seed(self.seed, context))
        self.sites_ = sites
        self.model_ = store_label(store)
        m = {f"redundancy/{k}": v for k, v in self.report_["model"].summary().items()}
        for s, r in self.report_["sites"].items():
            summ = r.summary()
            m[f"redundancy/{s}/share_redundant"] = summ["share_redundant"]
            m[f"redundancy/{s}/clusters"] = summ["clusters"]
        off = self.cka_[~np.eye(len(sites), dtype=bool)]
        m["redundancy/cka_adjacent_mean"] = float(np.mean(np.diag(self.cka_, 1))) if len(sites) > 1 else float("nan")
        m["redundancy/cka_offdiag_mean"] = float(off.mean()) if len(off) else float("nan")
        self.metrics_ = m
        self.rankings_ = {}
        return self

    def write(self, run_dir) -> list[Path]:
        from .plots import plot_site_heatmaps

        run_dir = Path(run_dir)
        whole = self.report_["model"]
        out = {"threshold": whole.threshold, "representative_rule": whole.rule, "model": whole.summary(),
               "sites": {s: r.summary() for s, r in self.report_["sites"].items()},
               "cka": {"sites": self.sites_, "matrix": self.cka_}}
        cl = whole.to_json()
        cl["sites"] = self.sites_
        return [_dump(run_dir / "redundancy.json", out), _dump(run_dir / "clusters.json", cl),
                plot_site_heatmaps({"linear CKA": self.cka_}, self.sites_, self.sites_, run_dir / "redundancy_cka.png",
                                   title=f"{self.model_}: linear CKA between sites")]


class SelectionAnalysis(Analysis):
    """Neuron selection for feature-based transfer (:mod:`neurolab.analysis.select`) on the run's concept."""

    name = "select"

    def __init__(self, layer_delta: float = 0.01, threshold: float = 0.3, tolerance: float = 0.01,
                 representative: str = "medoid", max_steps: int = 12, min_neurons: int = 1,
                 layer_selection: bool = True, probe_overrides: dict | None = None, seed: int | None = None):
        self.layer_delta = layer_delta
        self.threshold = threshold
        self.tolerance = tolerance
        self.representative = representative
        self.max_steps = max_steps
        self.min_neurons = min_neurons
        self.layer_selection = layer_selection
        self.probe_overrides = probe_overrides
        self.seed = seed

    def fit(self, store, context: RunContext | None = None) -> "SelectionAnalysis":
        from ..data import build_datamodule
        from .select import select_neurons

        context = RunContext.ensure(context)
        check_threshold(self.threshold, "analysis.threshold")
        if context.cfg is None:
            raise ConfigError("neuron selection trains probes: it needs the run's config (probe, trainer, concept)")
        data = build_datamodule(context.cfg, store=store)
        data.setup()
        res = select_neurons(data, context.cfg, layer_delta=float(self.layer_delta), threshold=float(self.threshold),
                             tolerance=float(self.tolerance), representative=self.representative,
                             seed=_seed(self.seed, context), max_steps=int(self.max_steps),
                             min_neurons=int(self.min_neurons), probe_overrides=self.probe_overrides,
                             layer_selection=bool(self.layer_selection))
        self.result_ = res
        self.metrics_ = dict(res.metrics)
        sites, nps = list(data.sites), {s: int(data.neurons_per_site[s]) for s in data.sites}
        n = len(res.ranking_order)
        self.rankings_ = {"select": NeuronRanking.from_order(
            res.ranking_order, np.linspace(1.0, 1.0 / n, n) if n else None, sites=sites, neurons_per_site=nps,
            concept=data.concept_name,
            method="select", model=context.model, extra={"selected": int(len(res.selected))})}
        self._names = [f"{s}:{u}" for s in sites for u in range(nps[s])]
        return self

    def write(self, run_dir) -> list[Path]:
        name = self._names
        r = self.result_
        out = {"metrics": r.metrics, "layers": r.layers, "selected": [name[int(i)] for i in r.selected],
               "representatives": [name[int(i)] for i in r.ranking_order], "steps": r.steps}
        return [_dump(Path(run_dir) / "selection.json", out),
                self.rankings_["select"].to_json(Path(run_dir) / "ranking_select.json")]


def _paths(other: Any) -> list[str]:
    if other is None:
        return []
    if isinstance(other, (str, Path)):
        return [str(other)]
    return [str(o) for o in other]


def open_others(other: Any, what: str = "analysis.other") -> list:
    from ..store import ActivationStore

    paths = _paths(other)
    if not paths:
        raise ConfigError(f"{what} is not set: give the other store(s) of the same corpus ({what}=path/to/store)")
    out = []
    for p in paths:
        if not (Path(p) / "manifest.json").exists():
            raise ConfigError(f"{what}={p!r}: no activation store there (manifest.json not found)")
        out.append(ActivationStore.open(p))
    return out


def other_sites(store_b, spec: Any, sites_a: Sequence[str], context: RunContext | None) -> list[str]:
    """Sites of another model: ``spec`` if given, else the run's ``sites`` setting, else ``sites_a``'s names."""
    if spec is None and context is not None:
        spec = context.setting("sites")
    if spec is None:
        spec = list(sites_a)
    return resolve_sites(store_b, spec, None, what="analysis.other_sites")


class SimilarityAnalysis(Analysis):
    """The store against other stores of the same corpus: per-neuron MaxCorr / MinCorr / LinReg and
    site x site CKA / SVCCA / PWCCA."""

    name = "similarity"

    def __init__(self, other: Any = None, other_sites: Any = None, sites: Any = None, keep: float = 0.99,
                 measures: Sequence[str] = ("cka", "svcca", "pwcca"), linreg_reduce: str = "max",
                 chunk_rows: int = 8192, product_dtype: str = "float32"):
        self.other = other
        self.other_sites = other_sites
        self.sites = sites
        self.keep = keep
        self.measures = measures
        self.linreg_reduce = linreg_reduce
        self.chunk_rows = chunk_rows
        self.product_dtype = product_dtype

    def fit(self, store, context: RunContext | None = None) -> "SimilarityAnalysis":
        from .correlation import stream_moments
        from .multimodel import linreg_scores, maxcorr_scores, mincorr_scores, site_similarity

        context = RunContext.ensure(context)
        if not 0.0 < float(self.keep) <= 1.0:
            raise ConfigError(f"analysis.keep={self.keep!r}: expected the variance share SVCCA keeps, in (0, 1]")
        others = open_others(self.other)
        sites_a = resolve_sites(store, self.sites, context)
        sites = [sites_a] + [other_sites(o, self.other_sites, sites_a, context) for o in others]
        labels = [store_label(s) for s in [store] + others]
        metric = stream_moments([store] + others, sites, chunk_rows=int(self.chunk_rows),
                                product_dtype=self.product_dtype, labels=labels)
        mom = metric.moments(release=True)
        self.labels_ = labels
        self.paths_ = [str(store.path)] + [str(o.path) for o in others]
        self.similarity_ = [site_similarity(mom, g, keep=float(self.keep), measures=list(self.measures))
                            for g in range(1, len(mom.groups))]
        nps = mom.groups[0].neurons_per_site
        extra = {"others": self.paths_[1:], "other_models": labels[1:]}
        scores = {"maxcorr": maxcorr_scores(mom), "mincorr": mincorr_scores(mom),
                  "linreg": linreg_scores(mom, self.linreg_reduce)}
        self.rankings_ = {k: NeuronRanking.from_scores(v, sites=sites_a, neurons_per_site=nps, method=k,
                                                       model=context.model or labels[0],
                                                       extra=dict(extra, **({"reduce": self.linreg_reduce}
                                                                            if k == "linreg" else {})))
                          for k, v in scores.items()}
        m: dict[str, float] = {}
        for k, v in scores.items():
            m[f"similarity/{k}_mean"] = float(np.mean(v))
        first = self.similarity_[0]
        for meas in self.measures:
            mat = first[meas]
            for i, s in enumerate(first["sites_a"]):
                if s in first["sites_b"]:
                    m[f"similarity/{meas}/{s}"] = float(mat[i, first["sites_b"].index(s)])
        self.metrics_ = m
        return self

    def write(self, run_dir) -> list[Path]:
        from .plots import plot_site_heatmaps

        run_dir = Path(run_dir)
        first = self.similarity_[0]
        out = {"sites_a": first["sites_a"], "sites_b": first["sites_b"],
               **{m: first[m] for m in self.measures},
               "model_a": self.labels_[0], "model_b": self.labels_[1], "store_a": self.paths_[0],
               "store_b": self.paths_[1], "keep": float(self.keep),
               "others": [{"store": p, "model": lab, **{k: v for k, v in sim.items()}}
                          for p, lab, sim in zip(self.paths_[1:], self.labels_[1:], self.similarity_)]}
        paths = [_dump(run_dir / "similarity.json", out)]
        for k, r in self.rankings_.items():
            paths.append(r.to_json(run_dir / f"ranking_{k}.json"))
        for i, (lab, sim) in enumerate(zip(self.labels_[1:], self.similarity_)):
            name = "similarity.png" if i == 0 else f"similarity_{i + 1}.png"
            paths.append(plot_site_heatmaps({m: sim[m] for m in self.measures}, sim["sites_a"], sim["sites_b"],
                                            run_dir / name, label_a=self.labels_[0], label_b=lab,
                                            title=f"{self.labels_[0]} (rows) vs {lab} (columns)"))
        return [Path(p) for p in paths]


class NMFAnalysis(Analysis):
    """NMF of the activations of a few sentences into ``k`` factors (:mod:`neurolab.analysis.nmf`)."""

    name = "nmf"

    def __init__(self, k: int = 5, sentences: Sequence[int] = (0,), sites: Any = None, negative: str = "clip",
                 top_neurons: int = 10, top_words: int = 8, max_iter: int = 1000, seed: int | None = None):
        self.k = k
        self.sentences = sentences
        self.sites = sites
        self.negative = negative
        self.top_neurons = top_neurons
        self.top_words = top_words
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, store, context: RunContext | None = None) -> "NMFAnalysis":
        from ..data.source import rows_of_sentences
        from .nmf import factorize, top_words

        context = RunContext.ensure(context)
        sites = resolve_sites(store, self.sites, context)
        corpus, _ = _corpus(context, store)
        sents = [int(s) for s in ([self.sentences] if isinstance(self.sentences, int) else self.sentences)]
        bad = [s for s in sents if not 0 <= s < store.num_sentences]
        if not sents or bad:
            raise ConfigError(f"analysis.sentences={list(sents)}: expected sentence ids in [0, {store.num_sentences})")
        rows = rows_of_sentences(store, sents)
        # the rows in the order the sentences were asked for
        sid = store.sentence_ids[rows]
        rows = np.concatenate([rows[sid == s] for s in sents])
        A = store.read(rows, sites)
        names = store.neuron_names(sites)
        self.result_ = factorize(A, int(self.k), names=names, negative=self.negative, seed=_seed(self.seed, context),
                                 max_iter=int(self.max_iter))
        wid = store.word_ids[rows]
        self.words_ = [[corpus.sentences[s].words[int(w)] for w in wid[store.sentence_ids[rows] == s]] for s in sents]
        cols = sorted({c for f in range(self.result_.k) for c, _ in self.result_.top_neurons(f, int(self.top_neurons))})
        self.concept_ = top_words(store, corpus, sites, cols, int(self.top_words)) if self.top_words else {}
        self.sites_, self.sentence_ids_ = sites, sents
        self.metrics_ = {"nmf/relative_error": self.result_.relative_error, "nmf/words": int(len(rows)),
                         "nmf/k": int(self.result_.k)}
        self.rankings_ = {}
        return self

    def write(self, run_dir) -> list[Path]:
        from .nmf import nmf_page

        run_dir = Path(run_dir)
        r = self.result_
        dom = r.dominant()
        factors = []
        for f in range(r.k):
            factors.append({"factor": f, "words_dominated": float((dom == f).mean()),
                            "top_neurons": [{"name": r.names[c], "weight": h,
                                             "top_words": [w for w, _, _ in self.concept_.get(c, [])]}
                                            for c, h in r.top_neurons(f, int(self.top_neurons))]})
        at, per_sent = 0, []
        for words in self.words_:
            per_sent.append([{"word": w, "factor": int(dom[at + i]), "weights": r.W[at + i]} for i, w in enumerate(words)])
            at += len(words)
        out = {"k": r.k, "sites": self.sites_, "sentences": self.sentence_ids_, "negative": r.extra["negative"],
               "relative_error": r.relative_error, "factors": factors, "words": per_sent}
        page = nmf_page(r, self.words_, title=f"NMF factors ({r.k}) of {len(self.words_)} sentence(s)",
                        subtitle=f"sites: {', '.join(self.sites_)}; negative activations: {r.extra['negative']}",
                        top_n=int(self.top_neurons), concept=self.concept_)
        html_path = run_dir / "nmf.html"
        html_path.write_text(page, encoding="utf-8")
        return [_dump(run_dir / "nmf.json", out), html_path]


class LatentAnalysis(Analysis):
    """Latent concepts (Dalvi et al. 2022) of each chosen site, aligned with the corpus annotations."""

    name = "latent"

    def __init__(self, k: int = 500, threshold: float = 0.9, columns: Sequence[str] | None = ("upos", "xpos", "deprel"),
                 sites: Any = None, ward_max: int = 5000, kmeans_clusters: int | None = None,
                 max_words: int | None = None, seed: int | None = None):
        self.k = k
        self.threshold = threshold
        self.columns = columns
        self.sites = sites
        self.ward_max = ward_max
        self.kmeans_clusters = kmeans_clusters
        self.max_words = max_words
        self.seed = seed

    def fit(self, store, context: RunContext | None = None) -> "LatentAnalysis":
        from ..methods.annotations import AnnotationTable
        from .latent import align_clusters, latent_clusters

        context = RunContext.ensure(context)
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ConfigError(f"analysis.threshold={self.threshold!r}: expected the share of a cluster's words that "
                              "must carry a label, in (0, 1]")
        sites = resolve_sites(store, self.sites, context)
        corpus, _ = _corpus(context, store)
        seed = _seed(self.seed, context)
        cols = [c for c in (self.columns or []) if c.split(".")[0] in set(corpus.columns) | {"form"}] \
            if self.columns else None
        if self.columns and not cols:
            raise ConfigError(f"analysis.columns={list(self.columns)}: none is an annotation of the corpus "
                              f"(it has {sorted(corpus.columns)})")
        n = store.num_tokens
        rows = np.arange(n, dtype=np.int64)
        if self.max_words and n > int(self.max_words):
            rows = np.sort(np.random.default_rng(seed).choice(n, int(self.max_words), replace=False))
        if int(self.k) > len(rows):
            raise ConfigError(f"analysis.k={self.k} latent clusters but only {len(rows)} words: K must not exceed "
                              "the number of words")
        ann = AnnotationTable.from_corpus(corpus, store.sentence_ids[rows], store.word_ids[rows], cols)
        self.words_ = [corpus.sentences[int(s)].words[int(w)] for s, w in
                       zip(store.sentence_ids[rows], store.word_ids[rows])]
        self.results_ = {}
        m: dict[str, float] = {}
        for s in sites:
            X = store.read(rows if len(rows) < n else slice(0, n), [s])
            labels, info = latent_clusters(X, int(self.k), ward_max=int(self.ward_max),
                                           kmeans_clusters=self.kmeans_clusters, seed=seed)
            al = align_clusters(labels, ann.codes, ann.values, float(self.threshold))
            self.results_[s] = (labels, al, info)
            for col, summ in al.summary().items():
                m[f"latent/{s}/{col}/aligned"] = summ["aligned_share"]
            m[f"time/latent/{s}_s"] = info["seconds"]
            log.info("latent concepts of %s: %s", s, {c: round(v["aligned_share"], 3) for c, v in al.summary().items()})
        self.sites_ = sites
        self.metrics_ = m
        self.rankings_ = {}
        return self

    def write(self, run_dir) -> list[Path]:
        from .latent import latent_page

        run_dir = Path(run_dir)
        pages = run_dir / "latent"
        pages.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {"k": int(self.k), "threshold": float(self.threshold), "aligned_share": {}, "sites": {}}
        paths, links = [], []
        for s, (labels, al, info) in self.results_.items():
            summ = al.summary()
            out["aligned_share"][s] = {c: v["aligned_share"] for c, v in summ.items()}
            out["sites"][s] = {"summary": summ, **info,
                               "clusters": [{"id": i, "size": int(al.sizes[i]),
                                             "labels": {c: {"value": al.top[c][i], "share": float(al.share[c][i]),
                                                            "aligned": bool(al.aligned(c)[i])} for c in al.columns}}
                                            for i in range(len(al.sizes))]}
            fname = f"{s.replace('/', '_')}.html"
            (pages / fname).write_text(latent_page(s, labels, self.words_, al), encoding="utf-8")
            paths.append(pages / fname)
            links.append((s, fname, summ))
        import html as _html

        cols = list(next(iter(self.results_.values()))[1].columns) + ["any"] if self.results_ else []
        head = "".join(f"<th>{_html.escape(c)}</th>" for c in cols)
        rows = "".join(f"<tr><td><a href='{_html.escape(f)}'>{_html.escape(s)}</a></td>"
                       + "".join(f"<td>{summ[c]['aligned_share']:.1%}</td>" for c in cols) + "</tr>"
                       for s, f, summ in links)
        (pages / "index.html").write_text(
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Latent concepts</title></head><body>"
            f"<h1>Latent concepts (K={int(self.k)})</h1><p>share of clusters aligned (at least "
            f"{float(self.threshold):.0%} of the words carry one value)</p><table border='1' cellpadding='4'>"
            f"<tr><th>site</th>{head}</tr>{rows}</table></body></html>", encoding="utf-8")
        paths.append(pages / "index.html")
        return [_dump(run_dir / "latent.json", out)] + paths
