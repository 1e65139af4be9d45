"""``neurolab evaluate``: re-evaluate a given ``ranking.json`` on a store + corpus + concept.

    neurolab evaluate ranking=outputs/probe/<run>/ranking.json store.dir=path/to/store concept=upos

The data use the ranking's sites (in its order), so the ranking's ``index`` columns line up with the
store's columns; ``sites=`` may name the same sites explicitly. Writes ``metrics.json`` and plots, and
copies the ranking into the run directory.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from ..config import output_dir
from ..errors import ConfigError
from ..ranking import NeuronRanking
from ..tracking import Tracker, make_logger
from .common import task
from .probe import RANKING_FILE, headline, log_to_tracker, make_plots, open_store

log = logging.getLogger(__name__)


def load_ranking(path) -> NeuronRanking:
    if path is None or str(path) in ("", "???"):
        raise ConfigError("ranking=... is required: the path of a ranking.json to evaluate")
    p = Path(str(path))
    if not p.exists():
        raise FileNotFoundError(f"{p}: ranking file not found (ranking=...)")
    try:
        return NeuronRanking.from_json(p)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@task("evaluate")
def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ranking`` (a ranking.json) as configured by ``cfg.evaluation``."""
    from ..data import build_datamodule
    from ..evaluation import evaluate_ranking

    run_dir = output_dir(cfg)
    ranking = load_ranking(cfg.get("ranking"))
    sites = cfg.get("sites")
    store = open_store(cfg)
    missing = [s for s in ranking.sites if s not in list(store.sites)]
    if missing:
        raise ConfigError(f"the ranking's sites {missing} are not in the store {store.path} (sites {list(store.sites)})")
    for s in ranking.sites:
        if int(store.neurons_per_site[s]) != int(ranking.neurons_per_site.get(s, -1)):
            raise ConfigError(f"site {s!r}: the ranking has {ranking.neurons_per_site.get(s)} neurons, "
                              f"the store {store.neurons_per_site[s]}")
    dm = build_datamodule(cfg, store=store, sites=list(ranking.sites))
    dm.setup()
    if sites is not None and list(dm.sites) != list(ranking.sites):
        raise ConfigError(f"sites={sites} resolves to {list(dm.sites)}, not the ranking's sites {ranking.sites}")
    logger = make_logger(cfg, run_dir)
    metrics = evaluate_ranking(ranking, dm, cfg)
    ranking.to_json(Path(run_dir) / RANKING_FILE)
    images = make_plots(ranking, metrics, run_dir, cfg)
    log_to_tracker(Tracker(logger), metrics, {"": ranking}, images)
    log.info("evaluate: %s", headline(metrics))
    return metrics
