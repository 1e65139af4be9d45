"""``neurolab intervene``: steer the live model with the top neurons of a ranking (or a neuron list).

    neurolab intervene ranking=R.json store.dir=S corpus.path=C concept=upos concept.value=NOUN \\
        task=tagger intervene.intervention=on_p50

The target class is ``intervene.target`` (default: ``concept.value``); the neurons' statistics (the
target class's medians, the class means) come from the store's training rows of the run's concept
(its full column: ``upos`` for ``upos=NOUN``). Writes ``metrics.json`` (``steer/flip@<k>``,
``steer/random_flip@<k>``, ``steer/dp@<k>``, ``steer/damage@<k>`` ...), ``steering.json`` (the
curve over k and alpha), ``steering.png`` and, for a decoder LM, ``generations.json`` / ``.md``
(seeded continuations with and without the intervention).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from ..config import output_dir
from ..errors import ConfigError
from .common import task

log = logging.getLogger(__name__)

__all__ = ["intervene"]


@task("intervene")
def intervene(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from ..causal.build import build_live, open_run_store
    from ..causal.interventions import NeuronStats, make_set
    from ..causal.live import base_concept
    from ..causal.steering import generate_side_by_side, parse_neurons, plot_steering, steering_curve, write_generations
    from ..corpus import load_corpus
    from ..data import build_datamodule
    from ..ranking import resolve_count
    from .evaluate import load_ranking

    run_dir = output_dir(cfg)
    icfg = cfg.get("intervene") or {}
    ranking = load_ranking(cfg.ranking) if cfg.get("ranking") else None
    if ranking is not None and cfg.get("neurons"):
        raise ConfigError("give ranking=... or neurons=[...], not both")
    if ranking is None and not cfg.get("neurons"):
        raise ConfigError("intervene needs ranking=<ranking.json> or neurons=[layers.3:117, ...]")
    if cfg.get("concept") is None:
        raise ConfigError("intervene needs a concept (concept=upos concept.value=NOUN)")
    concept = instantiate(cfg.concept)
    target = icfg.get("target") or getattr(concept, "value", None)
    if not target:
        raise ConfigError("no target class: set concept.value=<class> or intervene.target=<class>")
    if ranking is not None:
        sites = list(ranking.sites)
        nps = dict(ranking.neurons_per_site)
        neurons = [(n.site, n.unit) for n in ranking.neurons]
    else:
        neurons = parse_neurons(list(cfg.neurons) if not isinstance(cfg.neurons, str) else cfg.neurons)
        sites = list(dict.fromkeys(s for s, _ in neurons))
        nps = None
    store = open_run_store(cfg)
    if store is None:
        raise ConfigError("intervene needs a store (store.dir=...): the neurons' statistics come from its rows")
    missing = [s for s in sites if s not in list(store.sites)]
    if missing:
        raise ConfigError(f"the neurons' sites {missing} are not in the store {store.path} (sites {list(store.sites)})")
    corpus, splits = load_corpus(cfg.corpus)
    live = build_live(cfg, store=store, corpus=corpus, splits=splits, concept=concept)
    live.check_sites(sites, nps)
    if nps is None:
        nps = {s: int(store.neurons_per_site[s]) for s in sites}
    dm = build_datamodule(cfg, store=store, sites=sites, concept=base_concept(concept))
    dm.setup()
    stats = NeuronStats(dm, "train", pool_size=0, seed=int(cfg.get("seed") or 0))
    stats.class_index(str(target))
    total = len(neurons)
    sizes = []
    for spec in icfg.get("sizes") or [1, 5, 10]:
        try:
            k = resolve_count(spec, sum(nps.values())) if isinstance(spec, str) and spec.strip().endswith("%") \
                else int(spec)
        except (TypeError, ValueError):
            raise ConfigError(f"intervene.sizes: {spec!r} is not a neuron count or a percentage") from None
        if k < 1:
            raise ConfigError(f"intervene.sizes: {spec!r} is not a positive neuron count")
        if k > total:
            raise ConfigError(f"intervene.sizes: k={k} ({spec}) exceeds the {total} neurons given")
        sizes.append(k)
    kind = str(icfg.get("intervention", "on_p50"))
    metrics, curve = steering_curve(
        live, neurons, stats, target=str(target), sizes=sizes, kind=kind, alpha=float(icfg.get("alpha", 1.0)),
        alphas=[float(a) for a in (icfg.get("alphas") or [])], source=icfg.get("source"),
        tokens=str(icfg.get("tokens", "non_target")), share=float(icfg.get("share", 1.0)),
        seeds=[int(s) for s in (icfg.get("random_seeds") or [0, 1, 2])], split=str(icfg.get("split", "test")),
        max_sentences=icfg.get("max_sentences"), random_sites=sites, random_nps=nps)
    metrics.update({k: v for k, v in live.head.metrics.items() if isinstance(v, (int, float))})
    with open(Path(run_dir) / "steering.json", "w", encoding="utf-8") as f:
        json.dump({"target": str(target), "intervention": kind, "neurons": [f"{s}:{u}" for s, u in neurons[:max(sizes)]],
                   "curve": curve}, f, indent=1)
    if icfg.get("plots", True):
        plot_steering(curve, Path(run_dir) / "steering.png", title=f"steering toward {target} ({kind})")
    gcfg = icfg.get("generate") or {}
    if gcfg.get("enabled", True) and getattr(live.head, "lm", None) == "causal":
        k = max(sizes)
        S = make_set(kind, neurons[:k], stats, target=str(target), source=icfg.get("source"),
                     alpha=float(icfg.get("alpha", 1.0)))
        prompts = list(gcfg.get("prompts") or [])
        if not prompts:
            sent = live.sentences(str(icfg.get("split", "test")))[: int(gcfg.get("num_prompts", 3))]
            prompts = [" ".join(live.corpus.words[int(s)][: int(gcfg.get("prompt_words", 4))]) for s in sent]
        rows = generate_side_by_side(live, S, prompts, max_new_tokens=int(gcfg.get("max_new_tokens", 20)),
                                     seed=int(gcfg.get("seed", cfg.get("seed") or 0)))
        write_generations(rows, run_dir)
    log.info("intervene: %s", {k: round(v, 4) for k, v in metrics.items() if k.startswith("steer/flip@")})
    return metrics
