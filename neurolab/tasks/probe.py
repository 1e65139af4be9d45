"""``neurolab probe``: train a probe on a store + concept, rank its neurons, evaluate the ranking.

Needs only a store and a corpus (no model once the store exists; stores made by
:func:`neurolab.store.write_store` work too)::

    neurolab probe store.dir=path/to/store corpus.path=data.conllu concept=upos

Writes to the run directory: ``config.yaml``, ``metrics.json``, ``ranking.json``, ``sites.png``,
``accuracy.png`` (and a W&B offline run with the same tables and images when ``logger=wandb``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import output_dir
from ..errors import ConfigError
from ..ranking import NeuronRanking
from ..tracking import Tracker, make_logger
from .common import model_label, task

log = logging.getLogger(__name__)

RANKING_FILE = "ranking.json"


@dataclass
class ProbeResult:
    """What :func:`probe_pipeline` produced (tests and ``neurolab run`` use it)."""

    metrics: dict[str, float]
    ranking: NeuronRanking
    dm: Any
    images: list[Path] = field(default_factory=list)
    cfg: DictConfig | None = None
    probe: Any = None


def open_store(cfg: DictConfig, *, extract_if_missing: bool | None = None):
    """The store of ``cfg.store.dir`` when it exists; otherwise built (or reused) from the model by
    ``neurolab.tasks.extract.extract_store`` if ``extract_if_missing``; otherwise an error."""
    from ..store import ActivationStore
    from ..store.format import MANIFEST

    d = cfg.get("store", {}).get("dir") if cfg.get("store") is not None else None
    if d and (Path(str(d)) / MANIFEST).exists():
        return ActivationStore.open(str(d))
    if extract_if_missing is None:
        extract_if_missing = bool(cfg.get("extract_if_missing", True))
    if not extract_if_missing:
        raise ConfigError(
            f"store.dir={d!r}: no activation store there ({MANIFEST} not found); give store.dir of an existing "
            "store, or run `neurolab extract` first"
        )
    from .extract import extract_store

    return extract_store(cfg)


def maybe_choose_lambda(dm, cfg: DictConfig) -> tuple[DictConfig, dict]:
    """Apply ``evaluation.lambda_search`` (λ chosen on dev) when enabled; returns (cfg, metrics)."""
    ev = cfg.get("evaluation")
    ls = ev.get("lambda_search") if ev is not None else None
    if not ls or not ls.get("enabled", False):
        return cfg, {}
    from ..evaluation import choose_lambda, with_lambda

    lam, m = choose_lambda(dm, cfg)
    return with_lambda(cfg, lam), m


def train_and_rank(dm, cfg: DictConfig, logger=None) -> tuple[NeuronRanking, dict, Any]:
    """``RUNNERS[cfg.probe.name](dm, cfg, logger)`` → (ranking, metrics, trained all-neuron probe or None)."""
    from ..probes import RUNNERS

    name = str(cfg.probe.get("name", "linear"))
    if name not in RUNNERS:
        raise ConfigError(f"probe={name!r}: unknown probe; expected one of {sorted(RUNNERS)}")
    out = RUNNERS[name](dm, cfg, logger)
    ranking, metrics = out[0], dict(out[1])
    module = out[2] if len(out) > 2 else None
    if module is None:
        module = metrics.pop("_module", None) or getattr(ranking, "extra", {}).pop("_module", None)
    metrics = {k: v for k, v in metrics.items() if not k.startswith("_")}
    return ranking, metrics, module


def probe_pipeline(cfg: DictConfig, store, run_dir: Path, logger=None) -> ProbeResult:
    """DataModule → (λ on dev) → probe + ranking → ranking.json → evaluation → plots + tables."""
    from ..data import build_datamodule
    from ..evaluation import evaluate_ranking

    tracker = Tracker(logger)
    dm = build_datamodule(cfg, store=store)
    dm.setup()
    cfg, metrics = maybe_choose_lambda(dm, cfg)
    ranking, m, module = train_and_rank(dm, cfg, logger)
    metrics.update(m)
    if module is None:
        module = _saved_probe(cfg, run_dir)
    from ..evaluation import remember_probe

    remember_probe(dm, module)
    ranking.model = model_label(cfg, store)  # the store knows which model made the activations
    ranking.to_json(Path(run_dir) / RANKING_FILE)
    ev = evaluate_ranking(ranking, dm, cfg, logger=None, probe=module, base_metrics=metrics)
    metrics.update(ev)
    images = make_plots(ranking, metrics, run_dir, cfg)
    log_to_tracker(tracker, metrics, {"": ranking}, images)
    return ProbeResult(metrics=metrics, ranking=ranking, dm=dm, images=images, cfg=cfg, probe=module)


def _saved_probe(cfg: DictConfig, run_dir: Path):
    """The all-neuron linear probe the ``linear`` runner saved in this run (for masking), or None."""
    if str(cfg.probe.get("name", "")) != "linear":
        return None
    path = Path(run_dir) / "probe" / "best.safetensors"
    if not path.exists():
        return None
    try:
        from ..probes import load_probe

        return load_probe(path)
    except Exception as e:  # masking then trains its own all-neuron probe
        log.debug("could not load %s: %s", path, e)
        return None


def make_plots(ranking: NeuronRanking, metrics: dict, run_dir: Path, cfg: DictConfig, prefix: str = "") -> list[Path]:
    ev = cfg.get("evaluation")
    if ev is not None and not ev.get("plots", True):
        return []
    from ..viz.plots import plot_accuracy_curve, plot_site_distribution

    spec = (ev.get("site_distribution") if ev is not None else None) or "10%"
    tag = prefix.strip("/").replace("/", "_")
    stem = f"{tag}_" if tag else ""
    images = [plot_site_distribution(ranking, spec, Path(run_dir) / f"{stem}sites.png")]
    if any(k.startswith(f"{prefix}top/acc@") for k in metrics):
        images.append(plot_accuracy_curve(metrics, Path(run_dir) / f"{stem}accuracy.png", prefix=prefix,
                                          title=f"{ranking.method or 'ranking'}: retrained on top / random / bottom"))
    return images


def log_to_tracker(tracker: Tracker, metrics: dict, rankings: dict[str, NeuronRanking], images) -> None:
    """The same tables (ranking, metrics) and images as the run directory, to the logger (W&B)."""
    try:
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        tracker.log_table("metrics", ["name", "value"],
                          [[k, float(v)] for k, v in sorted(metrics.items()) if isinstance(v, (int, float))])
        for name, r in rankings.items():
            tracker.log_table(f"{name}_ranking" if name else "ranking",
                              ["rank", "name", "site", "unit", "index", "score"], r.to_rows())
        for p in images:
            tracker.log_image(Path(p).stem, p)
    except Exception as e:  # tracking must not break the science
        log.warning("could not log to the tracker: %s", e)


@task("probe")
def probe(cfg: DictConfig) -> dict:
    """Train ``cfg.probe`` on the store + concept, write ``ranking.json``, evaluate it."""
    run_dir = output_dir(cfg)
    store = open_store(cfg)
    logger = make_logger(cfg, run_dir)
    res = probe_pipeline(cfg, store, run_dir, logger)
    log.info("probe: %s", headline(res.metrics))
    return res.metrics


def headline(metrics: dict) -> str:
    keys = ("test/acc", "top/acc@1%", "random/acc@1%", "bottom/acc@1%", "control/acc", "selectivity")
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))
