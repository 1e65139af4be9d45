"""Run tracking: one Lightning logger per run (W&B offline by default, CSV, or none).

The same logger serves Lightning training and the non-gradient parts of a run (tables of
rankings, plots, HTML), so one W&B run carries everything. :func:`finish` always closes the W&B run
so that the jobs of a multirun do not bleed into each other.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def wandb_mode() -> str | None:
    """W&B's mode as the environment sets it: ``disabled`` (``WANDB_MODE=disabled`` / ``off``, or
    ``WANDB_DISABLED=true``), ``offline``, ``online``, or None when the environment says nothing."""
    mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if mode in ("disabled", "off", "dryrun") or (os.environ.get("WANDB_DISABLED") or "").strip().lower() in (
            "true", "1", "yes"):
        return "disabled" if mode != "dryrun" else "offline"
    if mode in ("offline", "online", "run"):
        return "online" if mode == "run" else mode
    return None


def make_logger(cfg: DictConfig, run_dir: str | os.PathLike):
    """Instantiate ``cfg.logger`` (``_target_``) or return None for ``logger=none``.

    The environment has the last word on W&B (``logger=wandb``): ``WANDB_MODE=disabled`` means no W&B
    logger at all (nothing is written), ``WANDB_MODE=online`` / ``offline`` overrides ``logger.offline``.
    """
    lcfg = cfg.get("logger") if cfg is not None else None
    if not lcfg or not lcfg.get("_target_"):
        return None
    from hydra.utils import instantiate

    kwargs = {}
    if "wandb" in str(lcfg.get("_target_")).lower():
        mode = wandb_mode()
        if mode == "disabled":
            log.info("W&B is disabled by the environment (WANDB_MODE / WANDB_DISABLED): no W&B run is written")
            return None
        if mode is not None and "offline" in lcfg:
            kwargs["offline"] = mode == "offline"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return instantiate(lcfg, **kwargs)


def WandbLogger(*args: Any, **kwargs: Any):
    """Lightning's ``WandbLogger`` without the deprecated ``anonymous`` argument it always passes on to
    ``wandb.init`` (W&B warns about it on every run); the config group ``logger=wandb`` builds this."""
    from pytorch_lightning.loggers import WandbLogger as _Wandb

    logger = _Wandb(*args, **kwargs)
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


class Tracker:
    """Thin facade over a Lightning logger for metrics, tables, images and HTML."""

    def __init__(self, logger=None):
        self.logger = logger

    @property
    def is_wandb(self) -> bool:
        return type(self.logger).__name__ == "WandbLogger"

    def _wandb_run(self):
        if not self.is_wandb:
            return None
        try:
            return self.logger.experiment
        except Exception as e:  # a disabled or broken W&B must not break the science
            log.warning("W&B unavailable: %s", e)
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.logger is None or not metrics:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.logger.log_metrics(clean, step=step)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(dict(params))

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        run = self._wandb_run()
        if run is None:
            return
        import wandb

        run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        run = self._wandb_run()
        if run is None:
            return
        import wandb

        run.log({name: wandb.Image(str(path))})

    def log_html(self, name: str, path: str | os.PathLike) -> None:
        run = self._wandb_run()
        if run is None:
            return
        import wandb

        with open(path, encoding="utf-8") as f:
            run.log({name: wandb.Html(f.read())})

    def finish(self) -> None:
        finish()


def finish() -> None:
    """Close any W&B run left open in this process."""
    import sys

    wandb = sys.modules.get("wandb")  # a process that never imported W&B has no run to close
    if wandb is None:
        return
    try:
        if wandb.run is not None:
            wandb.finish()
    except Exception as e:  # pragma: no cover - best effort
        log.debug("wandb.finish failed: %s", e)
