"""Locating and composing neurolab's Hydra configs (from a clone or an installed wheel).

Tests and notebooks call :func:`compose` to get the same config the CLI would build::

    >>> from neurolab.config import compose
    >>> cfg = compose("extract", ["extract.dtype=fp32"], run_dir="/tmp/run")  # doctest: +SKIP
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

VERSION_BASE = "1.3"


def demo_corpus_path() -> str:
    """Path of the bundled demo corpus (CoNLL-U)."""
    return str(importlib.resources.files("neurolab.corpus.demo") / "demo.conllu")


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("nl.demo_corpus"):
        OmegaConf.register_new_resolver("nl.demo_corpus", demo_corpus_path)


_register_resolvers()
VERBS = ("extract", "probe", "rank", "evaluate", "run", "intervene")


def config_dir() -> str:
    """Absolute path of the Hydra config root (``conf/`` in a clone, ``neurolab/conf`` in a wheel)."""
    here = Path(__file__).resolve().parent
    clone = here.parent / "conf"
    if (clone / "run.yaml").exists() or (clone / "extract.yaml").exists():
        return str(clone)
    return str(importlib.resources.files("neurolab.conf"))


def compose(verb: str, overrides: Sequence[str] = (), run_dir: str | os.PathLike | None = None) -> DictConfig:
    """Compose the primary config of ``verb`` with Hydra overrides, outside of ``@hydra.main``.

    ``run_dir`` becomes ``paths.output_dir`` (the CLI takes it from ``hydra.run.dir``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(version_base=VERSION_BASE, config_dir=config_dir(), job_name=f"neurolab_{verb}"):
        cfg = hydra_compose(config_name=verb, overrides=list(overrides))
    with open_dict(cfg):
        if run_dir is not None:
            cfg.paths.output_dir = str(run_dir)
    return cfg


def output_dir(cfg: DictConfig) -> Path:
    """The run directory of this job (created)."""
    try:
        d = cfg.paths.output_dir
    except Exception:  # hydra resolver unavailable outside @hydra.main
        d = None
    if d is None:
        from hydra.core.hydra_config import HydraConfig

        d = HydraConfig.get().runtime.output_dir
    p = Path(str(d))
    p.mkdir(parents=True, exist_ok=True)
    return p


def to_plain(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
