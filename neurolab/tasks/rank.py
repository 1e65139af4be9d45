"""``neurolab rank``: rank neurons with a corpus-based method from a store and a corpus alone.

::

    neurolab rank method=probeless concept=upos store.dir=path/to/store corpus.path=data.conllu
    neurolab rank method=ap concept=upos concept.value=NOUN        # binary: NOUN vs the rest
    neurolab rank method=iou concept=deprel                        # multi-class: best class per neuron

The method's statistics are computed on the ``rank_split`` (train) sentences of the corpus, raw
activations, streaming over the store. Writes ``ranking.json``; with ``evaluation`` configured,
retrains probes on the top / random / bottom neurons and measures selectivity (``metrics.json``);
then concept search and HTML pages (``pages/index.html`` + one page per top neuron), plots, and
the same tables / pages / images to the logger (W&B). The IoU method also writes
``explanations.json`` (compositional formulas of its top neurons).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import output_dir
from ..errors import ConfigError
from ..ranking import NeuronRanking
from ..tracking import Tracker, make_logger
from .common import model_label, task

log = logging.getLogger(__name__)

RANKING_FILE = "ranking.json"
EXPLANATIONS_FILE = "explanations.json"

__all__ = ["rank", "rank_pipeline", "build_ranker", "method_config", "model_label", "RankResult"]


@dataclass
class RankResult:
    metrics: dict[str, float]
    ranking: NeuronRanking
    ranker: Any
    pages: dict[str, Any] = field(default_factory=dict)
    explanations: list = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    dm: Any = None


def method_config(name: str) -> DictConfig:
    """The ``conf/method/<name>.yaml`` option as a config node (for callers without a ``method`` group)."""
    from ..config import config_dir

    path = Path(config_dir()) / "method" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (Path(config_dir()) / "method").glob("*.yaml"))
        raise ConfigError(f"method={name!r}: no such method; expected one of {known}")
    return OmegaConf.load(path)


def build_ranker(method_cfg: Any, concept: Any = None):
    """Instantiate ``cfg.method`` (a config node, or a method name such as ``"probeless"``); a binary
    concept (``concept.value=X``) sets the positive class."""
    from hydra.utils import instantiate

    if isinstance(method_cfg, str):
        method_cfg = method_config(method_cfg)
    if method_cfg is None or not method_cfg.get("_target_"):
        raise ConfigError("method is not set (method=probeless | iou | ap | selectivity)")
    ranker = instantiate(method_cfg, _convert_="all")
    if getattr(ranker, "positive", None) is None and concept is not None and getattr(concept, "is_binary", False):
        ranker.positive = concept.positive
    return ranker


def _enabled(node: Any, key: str = "enabled", default: bool = True) -> bool:
    if node is None:
        return False
    try:
        return bool(node.get(key, default))
    except AttributeError:
        return bool(node)


def rank_pipeline(cfg: DictConfig, store, run_dir: str | Path, logger=None, *, method_cfg: Any = None, prefix: str = "",
                  dm=None, pages: bool | None = None, evaluate: bool | None = None) -> RankResult:
    """Rank with ``method_cfg`` (default ``cfg.method``; a node or a name) and write ``<prefix>ranking.json``, evaluation
    metrics (named with ``prefix``) and pages (``pages/`` or ``<prefix>pages/``) into ``run_dir``.

    ``neurolab run`` calls this once per corpus-based method, passing its DataModule ``dm`` (reused
    for evaluation) and a ``prefix`` such as ``"probeless/"``.
    """
    from hydra.utils import instantiate

    from ..corpus import load_corpus
    from ..data.sites import select_sites
    from ..methods import AnnotationTable, ChunkSource, IoURanker, row_labels, rows_of_sentences
    from .probe import log_to_tracker, make_plots

    run_dir = Path(run_dir)
    method_cfg = cfg.get("method") if method_cfg is None else method_cfg
    t0 = time.perf_counter()
    corpus, splits = load_corpus(cfg.corpus)
    concept = instantiate(cfg.concept)
    if concept.level != "word" or concept.task != "classification":
        raise ConfigError(f"concept {concept.name!r} is {concept.level}-level {concept.task}; the corpus-based methods "
                          "rank neurons for word-level classification concepts (upos, xpos, deprel, feats.X, lexical.*)")
    ranker = build_ranker(method_cfg, concept)
    sites = select_sites(store.sites, cfg.get("sites"))
    split = str(cfg.get("rank_split", "train") or "train")
    if split not in splits:
        raise ConfigError(f"rank_split={split!r}: expected one of {sorted(splits)}")
    rows = rows_of_sentences(store, splits[split])
    if len(rows) == 0:
        raise ConfigError(f"rank_split={split!r} holds no store rows (corpus split {list(cfg.corpus.get('split', []))})")
    labels = row_labels(store, concept.labels(corpus), what=f"concept {concept.name}")
    source = ChunkSource.from_store(store, labels, sites=sites, rows=rows, chunk_rows=int(getattr(ranker, "chunk_rows", 8192)))
    ranker.fit(source, concept=concept.name, model=model_label(cfg, store))
    ranking: NeuronRanking = ranker.ranking_
    metrics: dict[str, float] = {
        f"{prefix}rank/rows": float(ranker.n_rows_),
        f"{prefix}rank/unlabelled_rows": float(len(rows) - ranker.n_rows_),
        f"{prefix}rank/classes": float(len(ranker.classes_)),
        f"{prefix}time/rank_method_s": round(time.perf_counter() - t0, 3),
    }
    if ranker.n_rows_ < len(rows):
        log.info("%d of %d %s rows have no %s label and were not ranked on", len(rows) - ranker.n_rows_, len(rows),
                 split, concept.name)
    explanations = []
    comp = getattr(ranker, "compositional", None)
    if isinstance(ranker, IoURanker) and comp and comp.get("enabled", False):
        t1 = time.perf_counter()
        ann = AnnotationTable.from_store(store, corpus, comp.get("columns") or None)
        explanations = ranker.explain(source, ann, min_count=int(comp.get("min_count", 1)))
        (run_dir / f"{prefix.strip('/').replace('/', '_') + '_' if prefix else ''}{EXPLANATIONS_FILE}").write_text(
            json.dumps([e.to_dict() for e in explanations], indent=1) + "\n", encoding="utf-8")
        if explanations:
            metrics[f"{prefix}iou/best_formula_iou"] = float(max(e.iou for e in explanations))
        metrics[f"{prefix}time/explanations_s"] = round(time.perf_counter() - t1, 3)
    stem = prefix.strip("/").replace("/", "_")
    ranking.to_json(run_dir / (f"{stem}_{RANKING_FILE}" if stem else RANKING_FILE))
    ev_cfg = cfg.get("evaluation")
    do_eval = (ev_cfg is not None and _enabled(ev_cfg, "retrain", True)) if evaluate is None else evaluate
    if do_eval:
        from ..data import build_datamodule
        from ..evaluation import evaluate_ranking

        if dm is None:
            dm = build_datamodule(cfg, store=store)
            dm.setup()
        metrics.update(evaluate_ranking(ranking, dm, cfg, logger=None, prefix=prefix))
    images = make_plots(ranking, metrics, run_dir, cfg, prefix=prefix) if do_eval else []
    tracker = Tracker(logger)
    viz = cfg.get("viz")
    out_pages: dict[str, Any] = {}
    if (pages if pages is not None else (viz is None or _enabled(viz))):
        from ..viz.html import write_pages

        v = viz or {}
        out_pages = write_pages(run_dir / (f"{stem}" if stem else "."), ranking, store, corpus, rows=rows,
                                top_neurons=int(v.get("top_neurons", 10)), k=int(v.get("top_k", 20)),
                                context=int(v.get("context", 12)), columns=v.get("columns") or None,
                                alpha=float(v.get("alpha", 0.01)), explanations=explanations,
                                metrics=metrics, tracker=tracker, sites=sites)
    log_to_tracker(tracker, metrics, {stem: ranking}, images)
    return RankResult(metrics, ranking, ranker, out_pages, explanations, images, dm)


@task("rank")
def rank(cfg: DictConfig) -> dict:
    """Rank neurons with ``cfg.method`` on the store + concept, evaluate, write pages."""
    from .probe import headline, open_store

    run_dir = output_dir(cfg)
    store = open_store(cfg)
    logger = make_logger(cfg, run_dir)
    res = rank_pipeline(cfg, store, run_dir, logger)
    top = ", ".join(res.ranking.names[:5])
    log.info("rank %s / %s: top neurons %s%s", res.ranking.method, res.ranking.concept, top,
             (" | " + headline(res.metrics)) if headline(res.metrics) else "")
    return res.metrics
