"""What every task does around its work: settings check, run directory, resolved config, seed, store
checks, metrics, W&B.

A run directory holds one run's results. A rerun into the same directory **replaces** them: before
the task starts, the files the previous run wrote (listed in ``.neurolab-outputs.json``) are removed,
so ``metrics.json`` is written afresh (never merged with an old one) and no old plot, page or
ranking stays behind. Files the runs did not write are left alone, and so are logs (``*.log``),
Hydra's ``.hydra/`` and W&B's ``wandb/`` runs (each W&B run is a run of its own).

In a data-parallel run, only the process the user started (rank 0) writes the config, the metrics
and the list of outputs; the other ranks compute alongside it.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from ..config import launched_rank, output_dir
from ..tracking import finish

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
RANKING_FILE = "ranking.json"
#: the files a run wrote into its run directory (removed when the next run into it starts)
OUTPUTS_FILE = ".neurolab-outputs.json"
#: never removed between runs: logs, Hydra's record of the command, W&B runs
_KEEP_DIRS = (".hydra", "wandb")
#: results of runs made before the list of outputs existed (removed only from a neurolab run directory)
_LEGACY_RESULTS = ("metrics.json", "ranking.json", "*_ranking.json", "explanations.json", "*_explanations.json",
                   "sites.png", "accuracy.png", "*_sites.png", "*_accuracy.png", "report.html", "outliers.json")


def write_metrics(run_dir: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write flat ``name: number`` metrics to ``metrics.json``, replacing the file (never merged with an
    older one: a run directory holds one run's results)."""
    path = Path(run_dir) / METRICS_FILE
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            out[str(k)] = v
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            out[str(k)] = None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(out.items())), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _kept(rel: str) -> bool:
    first = rel.split("/", 1)[0]
    return first in _KEEP_DIRS or rel.endswith(".log") or rel == OUTPUTS_FILE


def _listing(run_dir: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (mtime, size)}`` of the files in the run directory, without what a rerun keeps
    (logs, ``.hydra/``, ``wandb/``) and without activation stores kept there (a store is not a result:
    it is reused, never deleted with the results)."""
    from ..store.integrity import is_store_manifest

    out = {}
    for root, dirs, files in os.walk(run_dir):
        rel_root = Path(root).relative_to(run_dir)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in _KEEP_DIRS]
        dirs[:] = [d for d in dirs if not is_store_manifest(Path(root) / d / "manifest.json")]
        for name in files:
            rel = (rel_root / name).as_posix()
            if _kept(rel):
                continue
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            out[rel] = (int(st.st_mtime_ns), int(st.st_size))
    return out


def _inside(run_dir: Path, rel: str) -> Path | None:
    """``run_dir / rel`` when it names a file inside the run directory (never a path outside it)."""
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return None
    p = run_dir / rel
    try:
        p.parent.resolve().relative_to(run_dir.resolve())
    except (ValueError, OSError):
        return None
    return p


def clear_previous_results(run_dir: str | os.PathLike) -> list[str]:
    """Remove what an earlier run wrote into ``run_dir`` (see the module docstring); returns the
    removed paths, relative to the run directory."""
    run_dir = Path(run_dir)
    rec = run_dir / OUTPUTS_FILE
    files: list[str] = []
    if rec.exists():
        try:
            files = [str(f) for f in json.loads(rec.read_text(encoding="utf-8")).get("files", [])]
        except (OSError, ValueError, AttributeError):
            files = []
    elif (run_dir / CONFIG_FILE).exists() and (run_dir / METRICS_FILE).exists():  # a run from before the list
        files = sorted({p.relative_to(run_dir).as_posix() for pat in _LEGACY_RESULTS for p in run_dir.glob(pat)})
    removed = []
    for rel in files:
        if _kept(rel):
            continue
        p = _inside(run_dir, rel)
        if p is None or not (p.is_file() or p.is_symlink()):
            continue
        p.unlink()
        removed.append(rel)
        parent = p.parent
        while parent != run_dir and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    rec.unlink(missing_ok=True)
    if removed:
        log.info("run directory %s held an earlier run's results: %d files replaced by this run's", run_dir,
                 len(removed))
    return removed


def _record_outputs(run_dir: Path, before: Mapping[str, tuple[int, int]], verb: str) -> None:
    after = _listing(run_dir)
    files = sorted(rel for rel, st in after.items() if before.get(rel) != st)
    tmp = run_dir / f".{OUTPUTS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"verb": verb, "files": files}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / OUTPUTS_FILE)


def _attach_file_log(run_dir: Path, name: str) -> logging.Handler:
    h = logging.FileHandler(run_dir / f"{name}.log", encoding="utf-8")
    h.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger("neurolab").addHandler(h)
    return h


#: Lightning and W&B messages that say nothing about the run (checked in the test of quiet output)
HARMLESS_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # Lightning's own use of a deprecated torch API
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*Your `IterableDataset` has `__len__` defined.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*configure_optimizers` returned `None`.*",
    r".*modules? in eval mode.*",
    r".*The '(train|val|test)_dataloader' does not have many workers.*",
)

_SUMMARY: list[str] = []


def seed_everything(seed: int) -> int:
    """Seed Python's, numpy's and torch's generators and set ``PL_GLOBAL_SEED`` / ``PL_SEED_WORKERS=1``,
    exactly as Lightning's ``seed_everything(seed, workers=True)`` does, without importing Lightning
    (a verb that trains nothing, e.g. ``extract``, does not pay for its import)."""
    import random

    import numpy as np
    import torch

    seed = int(seed)
    if not np.iinfo(np.uint32).min <= seed <= np.iinfo(np.uint32).max:
        raise ValueError(f"seed={seed} is out of bounds: numpy accepts 0 to {np.iinfo(np.uint32).max}")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    return seed


def summary(line: str) -> None:
    """A line of the task's closing summary: logged after everything else (the W&B run's summary
    included), as the last thing the command says."""
    _SUMMARY.append(line)


def task(name: str) -> Callable[[Callable[[DictConfig], dict]], Callable[[DictConfig], dict]]:
    """Decorator for a task function ``fn(cfg) -> metrics``.

    Checks the settings (:func:`neurolab.tasks.validate.validate`), clears an earlier run's results
    from the run directory, saves the resolved config, seeds everything, applies the store checks of
    ``cfg.store`` (``verify``, ``nonfinite``) to every store the task opens, writes ``metrics.json``,
    and always finishes the W&B run.
    """

    def deco(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
        @functools.wraps(fn)
        def wrapper(cfg: DictConfig) -> dict:
            from ..store.integrity import store_checks
            from .validate import validate

            validate(cfg, name)
            rank = launched_rank()
            run_dir = output_dir(cfg)
            if rank == 0:
                clear_previous_results(run_dir)
            before = _listing(run_dir) if rank == 0 else {}
            handler = None
            if not any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers):
                handler = _attach_file_log(run_dir, name)
            try:
                if rank == 0:
                    OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
                if cfg.get("seed") is not None:
                    seed_everything(int(cfg.seed))
                t0 = time.perf_counter()
                _SUMMARY.clear()
                try:
                    with store_checks(cfg) as checks, warnings.catch_warnings():
                        for pattern in HARMLESS_WARNINGS:
                            warnings.filterwarnings("ignore", message=pattern)
                        metrics = fn(cfg) or {}
                finally:
                    finish()
                metrics = dict(metrics)
                metrics.setdefault(f"time/{name}_s", round(time.perf_counter() - t0, 3))
                if checks.reports:  # what checking the stores it read cost this run
                    metrics.setdefault("time/store_checks_s", round(sum(v.seconds for v in checks.reports), 4))
                nonfinite = sum(v.nonfinite_values for v in checks.reports)
                if nonfinite:
                    metrics["store/nonfinite_values"] = nonfinite
                if rank == 0:
                    write_metrics(run_dir, metrics)
                for line in _SUMMARY:
                    log.info("%s", line)
                _SUMMARY.clear()
                log.info("%s done; run directory %s", name, run_dir)
                return metrics
            finally:
                if handler is not None:
                    logging.getLogger("neurolab").removeHandler(handler)
                    handler.close()
                if rank == 0:
                    _record_outputs(run_dir, before, name)

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
