"""``neurolab evaluate``: re-evaluate a given ``ranking.json`` on a store + corpus.

    neurolab evaluate ranking=outputs/probe/<run>/ranking.json store.dir=path/to/store [corpus=...]

The concept, the sites and the model are the ranking's: ``concept=`` and ``sites=`` may be given,
but must then agree with the ranking (a conflicting one is an error naming both), and the store
must hold the ranking's sites with the same widths and come from the ranking's model. The data use
the ranking's sites in its order, so its ``index`` columns line up with the data's columns. Writes
``metrics.json``, the evaluators' plots, and a copy of the ranking.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import config_dir, output_dir
from ..errors import ConfigError
from ..ranking import NeuronRanking
from ..tracking import Tracker, make_logger
from .common import RANKING_FILE, headline, log_to_tracker, model_label, summary, task
from .stores import open_store

log = logging.getLogger(__name__)

__all__ = ["evaluate", "load_ranking", "concept_of_ranking"]


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


def concept_of_ranking(ranking: NeuronRanking, path) -> DictConfig:
    """The concept config a ranking was made for: ``conf/concept/<name>.yaml`` of its concept name
    (``upos``, ``feats.Tense``), one-vs-rest for names like ``upos=NOUN``."""
    name = str(ranking.concept or "")
    base, _, value = name.partition("=")
    file = Path(config_dir()) / "concept" / f"{base}.yaml"
    if not base or not file.exists():
        raise ConfigError(f"{path}: the ranking's concept {name!r} is not a concept config (conf/concept/); give "
                          "concept=... explicitly")
    node = OmegaConf.load(file)
    if value:
        with open_dict(node):
            if "|" in value:
                node["values"] = value.split("|")
            else:
                node["value"] = value
    return node


@task("evaluate")
def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ranking`` (a ranking.json) with the evaluators of ``cfg.evaluation``."""
    from hydra.utils import instantiate

    from ..data import build_datamodule
    from ..evaluation import run_evaluation
    from .pipeline import run_context

    run_dir = output_dir(cfg)
    path = cfg.get("ranking")
    ranking = load_ranking(path)
    store = open_store(cfg)
    missing = [s for s in ranking.sites if s not in list(store.sites)]
    if missing:
        raise ConfigError(f"the ranking's sites {missing} are not in the store {store.path} (sites {list(store.sites)})")
    for s in ranking.sites:
        if int(store.neurons_per_site[s]) != int(ranking.neurons_per_site.get(s, -1)):
            raise ConfigError(f"site {s!r}: the ranking has {ranking.neurons_per_site.get(s)} neurons, "
                              f"the store {store.neurons_per_site[s]}")
    model = model_label(cfg, store)
    if ranking.model and model and ranking.model != model:
        raise ConfigError(f"the ranking was made from model {ranking.model!r} ({path}), the store {store.path} "
                          f"from {model!r}")
    if cfg.get("concept") is None:
        with open_dict(cfg):
            cfg.concept = concept_of_ranking(ranking, path)
    else:
        given = str(getattr(instantiate(cfg.concept), "name", ""))
        if ranking.concept and given != ranking.concept:
            raise ConfigError(f"concept={given!r} conflicts with the ranking's concept {ranking.concept!r} ({path}); "
                              "leave concept= out to evaluate the ranking's own concept")
    dm = build_datamodule(cfg, store=store, sites=list(ranking.sites))
    dm.setup()
    sites = cfg.get("sites")
    if sites is not None and list(dm.sites) != list(ranking.sites):
        raise ConfigError(f"sites={sites} resolves to {list(dm.sites)}, not the ranking's sites {ranking.sites}")
    logger = make_logger(cfg, run_dir)
    ev = run_evaluation(ranking, dm, cfg, run=run_context(cfg, run_dir, logger, store), run_dir=run_dir)
    ranking.to_json(Path(run_dir) / RANKING_FILE)
    log_to_tracker(Tracker(logger), ev.metrics, {"": ranking}, ev.images)
    summary(f"evaluate {ranking.method} / {ranking.concept}: {headline(ev.metrics)}")
    return ev.metrics
