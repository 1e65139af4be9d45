"""``neurolab run``: the whole pipeline in one run directory.

extract (reusing a matching store) → probe + ranking → corpus-based rankings (``run.rank_methods``,
e.g. probeless) → evaluation of every ranking → ``metrics.json``, ``ranking.json`` (the probe's;
``<method>_ranking.json`` for the others), plots (PNG), ``report.html`` (self-contained) and, with
``logger=wandb`` (the default, offline), a W&B run carrying the same tables and images.

With no overrides it runs the bundled demo corpus through all-MiniLM-L6-v2::

    neurolab run
    neurolab run corpus=ewt_dev concept=xpos sites=layers run.rank_methods=[probeless,iou]
"""
from __future__ import annotations

import copy
import logging
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import group_option, output_dir
from ..tracking import Tracker, make_logger
from .common import headline, summary, task
from .pipeline import REPORT_FILE, write_run_report
from .probe import train_and_evaluate

log = logging.getLogger(__name__)



def _methods_eval_cfg(cfg: DictConfig) -> DictConfig:
    """The config the extra rankings are evaluated with: the run's, keeping only the evaluators named in
    ``run.methods_evaluation`` (null: all of them)."""
    keep = (cfg.get("run") or {}).get("methods_evaluation")
    if keep is None or cfg.get("evaluation") is None:
        return cfg
    keep = {str(k) for k in keep}
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for k in list(new.evaluation.keys()):
            v = new.evaluation.get(k)
            if OmegaConf.is_dict(v) and v.get("_target_") and str(k) not in keep:
                del new.evaluation[k]
    return new


@task("run")
def run(cfg: DictConfig) -> dict:
    """extract → probe → rank → evaluate → report (see the module docstring)."""
    from .extract import extract_store

    run_dir = output_dir(cfg)
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    stats: dict = {}
    store = extract_store(cfg, stats=stats)
    if store is None:  # a non-zero rank of a data-parallel extraction
        return {}
    log.info("store %s", store.path)
    metrics["time/extract_s"] = round(time.perf_counter() - t0, 3)
    metrics["extract/reused"] = int(bool(stats.get("reused", 0)))
    metrics["extract/rows"] = int(store.num_tokens)
    logger = make_logger(cfg, run_dir)
    tracker = Tracker(logger)

    t = time.perf_counter()
    res = train_and_evaluate(cfg, store, run_dir, logger, pages=False)
    metrics.update(res.metrics)
    metrics["time/probe_and_evaluate_s"] = round(time.perf_counter() - t, 3)
    rankings = {res.ranking.method or "probe": res.ranking}
    images = list(res.images)

    rcfg = cfg.get("run") or {}
    methods = list(rcfg.get("rank_methods") or [])
    if methods:
        from ..evaluation import Retrainer, evaluation_settings
        from .pipeline import rank_pipeline

        mcfg = _methods_eval_cfg(res.cfg or cfg)
        settings = evaluation_settings(mcfg)
        retrainer = Retrainer(res.dm, mcfg, split=str(settings.get("split", "test")),
                              metric="mse" if res.dm.task == "regression" else "acc",
                              retrain_probe=settings.get("retrain_probe"), bank=bool(settings.get("bank", True)))
        for name in methods:
            t = time.perf_counter()
            rr = rank_pipeline(mcfg, res.dm, run_dir, logger=logger, method_node=group_option("method", str(name)),
                               prefix=f"{name}/", shared_predictor=res.method.predictor_, retrainer=retrainer,
                               pages=bool(rcfg.get("pages", False)))
            metrics.update(rr.metrics)
            rankings[str(name)] = rr.ranking
            images.extend(rr.images)
            metrics[f"{name}/time/rank_and_evaluate_s"] = round(time.perf_counter() - t, 3)

    if rcfg.get("report", True):
        write_run_report(cfg, run_dir, metrics, rankings, images, store, tracker, verb="run")
    summary(f"run finished in {time.perf_counter() - t0:.1f} s")
    summary(f"  {res.ranking.method}: {headline(metrics)}")
    for name in methods:
        k = f"{name}/top/acc@1%"
        if k in metrics:
            summary(f"  {name}: top/acc@1% {metrics[k]:.4f}, random {metrics.get(f'{name}/random/acc@1%', float('nan')):.4f}, "
                    f"bottom {metrics.get(f'{name}/bottom/acc@1%', float('nan')):.4f}")
    if (run_dir / REPORT_FILE).exists():
        summary(f"  report: {run_dir / REPORT_FILE}")
    return metrics
