"""``neurolab analyze``: analyses whose result is groups and similarities rather than one ranking.

::

    neurolab analyze analysis=clusters store.dir=S analysis.threshold=0.3     # clusters.json
    neurolab analyze analysis=redundancy store.dir=S                          # redundancy.json + CKA heatmap
    neurolab analyze analysis=select store.dir=S corpus.path=data.conllu concept=upos
    neurolab analyze analysis=similarity store.dir=A analysis.other=B         # similarity.json + rankings
    neurolab analyze analysis=nmf store.dir=S corpus.path=data.conllu analysis.sentences=[0,1]
    neurolab analyze analysis=latent store.dir=S corpus.path=data.conllu      # latent.json + latent/*.html

``analysis`` is a config of ``conf/analysis/`` naming an :class:`~neurolab.analysis.Analysis` class
(``_target_``); the task opens (or extracts) the store, fits the analysis, writes its files and
metrics into the run directory, and logs metrics, rankings, images and pages to the logger (W&B).
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ..config import output_dir
from ..errors import ConfigError
from ..tracking import Tracker, make_logger
from .common import model_label, task

log = logging.getLogger(__name__)

__all__ = ["analyze", "build_analysis"]


def build_analysis(cfg: DictConfig):
    """Instantiate ``cfg.analysis`` (``_target_``)."""
    from hydra.utils import instantiate

    node = cfg.get("analysis")
    if node is None or not node.get("_target_"):
        raise ConfigError("analysis is not set (analysis=clusters | redundancy | select | similarity | nmf | latent)")
    return instantiate(node, _convert_="all")


@task("analyze")
def analyze(cfg: DictConfig) -> dict:
    """Fit ``cfg.analysis`` on the store of ``cfg.store`` and write its results."""
    from ..analysis.base import RunContext
    from .probe import log_to_tracker, open_store

    run_dir = output_dir(cfg)
    analysis = build_analysis(cfg)
    store = open_store(cfg)
    logger = make_logger(cfg, run_dir)
    context = RunContext(cfg=cfg, run_dir=run_dir, logger=logger, seed=int(cfg.get("seed") or 0),
                         model=model_label(cfg, store))
    analysis.fit(store, context)
    paths = analysis.write(run_dir)
    metrics = dict(analysis.metrics_)
    tracker = Tracker(logger)
    images = [p for p in paths if Path(p).suffix == ".png"]
    log_to_tracker(tracker, metrics, dict(getattr(analysis, "rankings_", {}) or {}), images)
    for p in paths:
        if Path(p).suffix == ".html":
            try:
                tracker.log_html(f"{analysis.name}_{Path(p).stem}", p)
            except Exception as e:  # tracking must not break the science
                log.warning("could not log %s: %s", p, e)
    log.info("analyze %s: wrote %s", analysis.name, ", ".join(Path(p).name for p in paths))
    return metrics
