"""``neurolab rank``: rank neurons with any method (``method=<name>``, a ``conf/method/<name>.yaml``)
from a store and a corpus, evaluate the ranking and write concept-search pages::

    neurolab rank method=probeless concept=upos store.dir=path/to/store corpus.path=data.conllu
    neurolab rank method=ap concept=upos concept.value=NOUN        # binary: NOUN vs the rest
    neurolab rank method=linear                                    # probes are methods too

Methods rank on the training split; evaluators (``evaluation=[...]``) test on ``test``. Writes
``ranking.json``, ``metrics.json``, the evaluators' plots, what the method writes (IoU:
``explanations.json``) and HTML pages (``pages/index.html`` + one page per top neuron), and the same
tables / pages / images to the logger (W&B).
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from ..config import output_dir
from ..tracking import make_logger
from .common import headline, summary, task
from .stores import open_store
from .probe import report, train_and_evaluate

log = logging.getLogger(__name__)

__all__ = ["rank"]


@task("rank")
def rank(cfg: DictConfig) -> dict:
    """Rank neurons with ``cfg.method`` on the store + concept, evaluate, write pages."""
    run_dir = output_dir(cfg)
    store = open_store(cfg)
    logger = make_logger(cfg, run_dir)
    res = train_and_evaluate(cfg, store, run_dir, logger)
    report(cfg, res, run_dir, store, logger, "rank")
    top = ", ".join(res.ranking.names[:5])
    summary(f"rank {res.ranking.method} / {res.ranking.concept}: top neurons {top}"
            + ((" | " + headline(res.metrics)) if headline(res.metrics) else ""))
    return res.metrics
