"""What every task does around its work: run directory, resolved config, seed, metrics, W&B."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from ..config import output_dir
from ..tracking import finish

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
RANKING_FILE = "ranking.json"


def write_metrics(run_dir: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write flat ``name: number`` metrics to ``metrics.json`` (merging with what is there)."""
    path = Path(run_dir) / METRICS_FILE
    old = {}
    if path.exists():
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            old[str(k)] = v
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            old[str(k)] = None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(old.items())), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _attach_file_log(run_dir: Path, name: str) -> logging.Handler:
    h = logging.FileHandler(run_dir / f"{name}.log", encoding="utf-8")
    h.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger("neurolab").addHandler(h)
    return h


def task(name: str) -> Callable[[Callable[[DictConfig], dict]], Callable[[DictConfig], dict]]:
    """Decorator for a task function ``fn(cfg) -> metrics``.

    Creates the run directory, saves the resolved config, seeds everything, writes
    ``metrics.json``, and always finishes the W&B run.
    """

    def deco(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
        @functools.wraps(fn)
        def wrapper(cfg: DictConfig) -> dict:
            run_dir = output_dir(cfg)
            handler = None
            if not any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
                handler = _attach_file_log(run_dir, name)
            OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
            if cfg.get("seed") is not None:
                from pytorch_lightning import seed_everything

                seed_everything(int(cfg.seed), workers=True, verbose=False)
            t0 = time.perf_counter()
            try:
                metrics = fn(cfg) or {}
            finally:
                finish()
                if handler is not None:
                    logging.getLogger("neurolab").removeHandler(handler)
                    handler.close()
            metrics = dict(metrics)
            metrics.setdefault(f"time/{name}_s", round(time.perf_counter() - t0, 3))
            write_metrics(run_dir, metrics)
            log.info("%s done; run directory %s", name, run_dir)
            return metrics

        return wrapper

    return deco


def model_label(cfg: DictConfig | None, store) -> str:
    """The model's name for rankings: the store's record (:attr:`ActivationStore.model_name`), else
    ``cfg.model.name_or_path``."""
    name = store.model_name if store is not None else ""
    if name:
        return name
    model = cfg.get("model") if cfg is not None else None
    return str(model.get("name_or_path") or "") if model is not None else ""


def ranking_file(stem: str = "") -> str:
    """``ranking.json``, or ``<stem>_ranking.json`` for the extra rankings of a run."""
    return f"{stem}_{RANKING_FILE}" if stem else RANKING_FILE


def log_to_tracker(tracker, metrics: dict, rankings: dict, images) -> None:
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


def headline(metrics: dict) -> str:
    keys = ("test/acc", "top/acc@1%", "random/acc@1%", "bottom/acc@1%", "control/acc", "selectivity")
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))
