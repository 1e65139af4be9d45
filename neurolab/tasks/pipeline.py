"""What ``probe``, ``rank`` and ``run`` share: one method on one data module, its ranking, its
evaluation, its pages.

:func:`rank_pipeline` builds the method of ``cfg.method`` (or a given node) through ``_target_``,
fits it (:class:`~neurolab.methods.Method`: ``fit(data, context)``), writes ``ranking.json`` and what
else the method makes (:meth:`Method.write`), runs the evaluators of ``cfg.evaluation``
(:func:`neurolab.evaluation.run_evaluation`) with the method's predictor and metrics, and writes
concept-search pages when ``cfg.viz.enabled``. Nothing here knows a method or an evaluator by name.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import launched_rank
from ..errors import ConfigError
from ..methods.base import Method, RunContext
from ..ranking import NeuronRanking
from .common import model_label, ranking_file

log = logging.getLogger(__name__)

__all__ = ["RankResult", "build_method", "rank_pipeline", "run_context", "choose_lambda_first", "report_outliers",
           "write_run_report"]


@dataclass
class RankResult:
    metrics: dict[str, float]
    ranking: NeuronRanking
    method: Method
    images: list[Path] = field(default_factory=list)
    pages: dict[str, Any] = field(default_factory=dict)
    cfg: DictConfig | None = None
    dm: Any = None


def build_method(node: Any) -> Method:
    """The :class:`Method` a ``conf/method/<name>.yaml`` node describes (through ``_target_``)."""
    from hydra.utils import instantiate

    if node is None or not node.get("_target_"):
        raise ConfigError("method is not set: method=linear | gaussian | neuron_mask | probeless | iou | ap | "
                          "selectivity | random_forest | ... (a conf/method/<name>.yaml)")
    method = instantiate(node, _convert_="all")
    if not isinstance(method, Method):
        raise ConfigError(f"method: {node.get('_target_')} is not a neurolab Method (see neurolab/methods/base.py)")
    return method


def run_context(cfg: DictConfig, run_dir: Path, logger=None, store=None) -> RunContext:
    """The :class:`RunContext` of a task: its config, run directory, logger, seed, model name and, when
    the run names a task head (``task=tagger|lm|classifier``), the live model, built on first use."""
    live = None
    task = cfg.get("task")
    if task is not None and task.get("_target_"):
        from ..causal.build import live_factory

        live = live_factory(cfg, store=store)
    return RunContext(cfg=cfg, run_dir=Path(run_dir), logger=logger, seed=int(cfg.get("seed") or 0),
                      model=model_label(cfg, store), live=live)


def choose_lambda_first(dm, cfg: DictConfig) -> tuple[DictConfig, dict]:
    """``evaluation.lambda_search.enabled``: choose λ on dev before ranking; returns the config with
    that λ (every later probe uses it) and the search's metrics."""
    ev = cfg.get("evaluation")
    ls = ev.get("lambda_search") if ev is not None else None
    if not ls or not ls.get("enabled", False):
        return cfg, {}
    from ..probes.lambda_search import choose_lambda, with_lambda

    lam, m = choose_lambda(dm, cfg)
    return with_lambda(cfg, lam), m


OUTLIERS_FILE = "outliers.json"
REPORT_FILE = "report.html"


def write_run_report(cfg: DictConfig, run_dir: Path, metrics: dict, rankings: dict[str, NeuronRanking], images,
                     store, tracker, *, verb: str) -> Path:
    """``report.html`` of a run (``probe``, ``rank``, ``run``): settings, headline figures, plots, top
    neurons of each ranking, outlier dimensions, all metrics; also logged to the tracker (W&B)."""
    import json

    from ..viz.report import write_report

    main = next(iter(rankings.values()))
    if launched_rank() != 0:
        return Path(run_dir) / REPORT_FILE
    reg = cfg.get("regularization") or {}
    info = {
        "model": main.model,
        "corpus": str((cfg.get("corpus") or {}).get("path", "")),
        "concept": main.concept,
        "sites": ", ".join(main.sites),
        "neurons": str(main.total),
        "store": str(store.path),
        "method": ", ".join(r.method for r in rankings.values()),
        "regularization": f"{reg.get('name', '')} (λ1={reg.get('lambda_l1', 0)}, λ2={reg.get('lambda_l2', 0)})",
        "seed": str(cfg.get("seed")),
        "run directory": str(run_dir),
    }
    out = Path(run_dir) / OUTLIERS_FILE
    if out.exists():
        found = json.loads(out.read_text())["neurons"]
        info["outlier dimensions"] = (", ".join(f"{o['neuron']} ({o['variance_ratio']:g}x)" for o in found[:10])
                                      + (" ..." if len(found) > 10 else "")) if found else "none"
    report = write_report(Path(run_dir) / REPORT_FILE, metrics, rankings, images,
                          title=f"neurolab {verb}: {main.concept} in {main.model}", info=info)
    try:
        tracker.log_html("report", report)
    except Exception as e:  # tracking must not break the science
        log.warning("could not log the report: %s", e)
    return report


def report_outliers(dm, run_dir: Path, factor: float = 25.0) -> dict[str, float]:
    """Outlier dimensions of the data (variance above ``factor`` x their site's median): logged,
    written to ``outliers.json`` and counted in the metrics (``data/outlier_neurons``). Raw-activation
    statistics (``method.normalize=none``) tend to rank such neurons first whatever the concept."""
    import json

    found = dm.outlier_columns(factor)
    if launched_rank() != 0:
        return {"data/outlier_neurons": len(found)}
    names = NeuronRanking.from_order([c for c, _ in found], sites=list(dm.sites),
                                     neurons_per_site=dict(dm.neurons_per_site)).names if found else []
    rows = [{"neuron": n, "index": c, "variance_ratio": round(r, 2)} for n, (c, r) in zip(names, found)]
    (Path(run_dir) / OUTLIERS_FILE).write_text(json.dumps({"factor": factor, "neurons": rows}, indent=1) + "\n",
                                               encoding="utf-8")
    if found:
        log.warning("%d outlier dimensions (training variance over %g x their site's median): %s%s", len(found),
                    factor, ", ".join(f"{n} ({r['variance_ratio']:g}x)" for n, r in zip(names[:8], rows)),
                    " ..." if len(found) > 8 else "")
    return {"data/outlier_neurons": len(found)}


def _tag(prefix: str) -> str:
    return prefix.strip("/").replace("/", "_")


def rank_pipeline(cfg: DictConfig, dm, run_dir: str | Path, *, logger=None, method_node: Any = None, prefix: str = "",
                  shared_predictor: Any = None, retrainer: Any = None, pages: bool | None = None) -> RankResult:
    """Rank with ``method_node`` (default ``cfg.method``) on ``dm`` and evaluate (see the module docstring).

    ``prefix`` (``"probeless/"``) names the ranking's files and metrics in a run with several
    rankings; ``shared_predictor`` is the run's all-neuron probe, used when the method has none;
    ``retrainer`` is shared between the rankings of a run.
    """
    from ..evaluation import build_evaluators, run_evaluation

    run_dir = Path(run_dir)
    dm.setup()
    context = run_context(cfg, run_dir, logger, dm.store)
    method = build_method(cfg.get("method") if method_node is None else method_node)
    t0 = time.perf_counter()
    method.fit(dm, context)
    ranking = method.ranking_
    own = {k: v for k, v in method.metrics_.items() if not k.startswith("_")}
    metrics: dict[str, float] = {f"{prefix}{k}": v for k, v in own.items()}
    metrics[f"{prefix}time/method_s"] = round(time.perf_counter() - t0, 3)
    stem = _tag(prefix)
    writes = launched_rank() == 0  # ranks a DDP launcher started compute the same results and write nothing
    if writes:
        ranking.to_json(run_dir / ranking_file(stem))
        method.write(run_dir, stem)
    images: list[Path] = []
    evaluators = build_evaluators(cfg)
    if evaluators:
        ev = run_evaluation(ranking, dm, cfg, predictor=method.predictor_ if method.predictor_ is not None
                            else shared_predictor, base_metrics=own, prefix=prefix, run=context,
                            run_dir=run_dir if writes else None,
                            evaluators=evaluators, retrainer=retrainer)
        metrics.update(ev.metrics)
        images.extend(ev.images)
    viz = cfg.get("viz")
    out_pages: dict[str, Any] = {}
    want_pages = pages if pages is not None else (viz is not None and bool(viz.get("enabled", True)))
    if want_pages and dm.store is not None and writes:
        out_pages = write_neuron_pages(cfg, dm, ranking, run_dir / (stem or "."), list(method.explanations_),
                                       metrics, context)
    return RankResult(metrics, ranking, method, images, out_pages, cfg, dm)


def write_neuron_pages(cfg: DictConfig, dm, ranking: NeuronRanking, out_dir: Path, explanations: list,
                       metrics: dict, context: RunContext) -> dict[str, Any]:
    """Concept search for the top neurons of ``ranking`` (on the training sentences) and its HTML pages."""
    from ..data import rows_of_sentences
    from ..methods.concept_search import describe_neurons
    from ..viz.html import write_pages

    v = cfg.get("viz") or {}
    rows = rows_of_sentences(dm.store, dm.sentences("train"))
    corpus = dm.corpus
    reports = describe_neurons(ranking, dm.store, corpus, rows=rows, top_neurons=int(v.get("top_neurons", 10)),
                               k=int(v.get("top_k", 20)), columns=v.get("columns") or None,
                               alpha=float(v.get("alpha", 0.01)), sites=list(dm.sites))
    return write_pages(out_dir, ranking, reports, context=int(v.get("context", 12)), explanations=explanations,
                       metrics=metrics, tracker=context.tracker, site_counts=ranking.by_site("10%"))
