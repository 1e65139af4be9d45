"""``neurolab probe``: train a probe on a store + concept, rank its neurons, evaluate the ranking.

Needs only a store and a corpus (no model once the store exists; stores made by
:func:`neurolab.store.write_store` work too)::

    neurolab probe store.dir=path/to/store corpus.path=data.conllu concept=upos
    neurolab probe probe=gaussian              # the method follows the probe: method=gaussian

The ranking method is ``cfg.method`` (``probe=<name>`` selects ``method=<name>``; ``method=`` overrides),
run by :func:`neurolab.tasks.pipeline.rank_pipeline` exactly as ``neurolab rank`` runs it. Writes to
the run directory: ``config.yaml``, ``metrics.json``, ``ranking.json``, the evaluators' plots (and a
W&B offline run with the same tables and images when ``logger=wandb``).
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from ..config import output_dir
from ..tracking import make_logger
from .common import headline, log_to_tracker, summary, task
from .stores import open_store
from .pipeline import RankResult, choose_lambda_first, rank_pipeline, report_outliers, write_run_report

log = logging.getLogger(__name__)

__all__ = ["probe", "train_and_evaluate"]


def train_and_evaluate(cfg: DictConfig, store, run_dir, logger=None, *, pages: bool | None = None) -> RankResult:
    """Data module → (λ on dev) → the method's ranking → evaluation → tracker; what ``probe``, ``rank``
    and ``run`` do with their main method."""
    from ..data import build_datamodule
    from ..tracking import Tracker

    from ..evaluation import check_evaluation

    dm = build_datamodule(cfg, store=store)
    dm.setup()
    check_evaluation(cfg, int(dm.num_features))  # before any training: sizes and evaluator settings
    data_metrics = report_outliers(dm, run_dir)
    cfg, lam_metrics = choose_lambda_first(dm, cfg)
    res = rank_pipeline(cfg, dm, run_dir, logger=logger, pages=pages)
    res.metrics = {**data_metrics, **lam_metrics, **res.metrics}
    res.dm = dm
    log_to_tracker(Tracker(logger), res.metrics, {"": res.ranking}, res.images)
    return res


def report(cfg: DictConfig, res: RankResult, run_dir, store, logger, verb: str) -> None:
    """``report.html`` of a ``probe`` / ``rank`` run."""
    from ..tracking import Tracker

    write_run_report(cfg, run_dir, res.metrics, {res.ranking.method or verb: res.ranking}, res.images, store,
                     Tracker(logger), verb=verb)


@task("probe")
def probe(cfg: DictConfig) -> dict:
    """Rank with ``cfg.method`` on the store + concept, write ``ranking.json``, evaluate it."""
    run_dir = output_dir(cfg)
    store = open_store(cfg)
    logger = make_logger(cfg, run_dir)
    res = train_and_evaluate(cfg, store, run_dir, logger)
    report(cfg, res, run_dir, store, logger, "probe")
    summary(f"probe {res.ranking.method} / {res.ranking.concept}: {headline(res.metrics)}")
    return res.metrics
