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


def corpus_name(default: str, *, _parent_: Any = None) -> str:
    """``default`` while a corpus config reads the bundled demo corpus; otherwise a name taken from the
    files it reads (the first of ``train`` / ``dev`` / ``test``, else ``path``), so that messages and
    store names do not call a user's corpus "demo"."""
    node = _parent_ if _parent_ is not None else {}
    files = None
    for key in ("train", "dev", "test"):
        v = node.get(key) if hasattr(node, "get") else None
        if v:
            files = v
            break
    if files is None:
        path = node.get("path") if hasattr(node, "get") else None
        if path is None or str(path) == demo_corpus_path():
            return default
        files = path
    if not isinstance(files, (str, os.PathLike)):
        try:
            files = list(files)[0]
        except (TypeError, IndexError):
            return default
    p = Path(str(files))
    return p.stem or p.name or default


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("nl.demo_corpus"):
        OmegaConf.register_new_resolver("nl.demo_corpus", demo_corpus_path)
    if not OmegaConf.has_resolver("nl.corpus_name"):
        OmegaConf.register_new_resolver("nl.corpus_name", corpus_name)


_register_resolvers()
VERBS = ("extract", "probe", "rank", "evaluate", "run", "analyze", "benchmark", "intervene", "explain")


def config_dir() -> str:
    """Absolute path of the Hydra config root (``conf/`` in a clone, ``neurolab/conf`` in a wheel)."""
    here = Path(__file__).resolve().parent
    clone = here.parent / "conf"
    if (clone / "run.yaml").exists() or (clone / "extract.yaml").exists():
        return str(clone)
    return str(importlib.resources.files("neurolab.conf"))


def group_option(group: str, name: str) -> DictConfig:
    """The option ``name`` of the config group ``group`` (``conf/<group>/<name>.yaml``) as a node, for
    runs that use several options of one group (``run.rank_methods``); an unknown name is an error
    listing the options."""
    from .errors import ConfigError

    path = Path(config_dir()) / group / f"{name}.yaml"
    if not path.exists():
        have = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{group}={name!r}: no such option; expected one of {have}")
    return OmegaConf.load(path)


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


#: the process id of the process that starts the ranks of a data-parallel run (set by neurolab in it)
LAUNCHER_PID_ENV = "NEUROLAB_LAUNCHER_PID"


def launched_rank() -> int:
    """The rank of a process started by a data-parallel launcher (Lightning's ``LOCAL_RANK`` / ``RANK``,
    or a rank of neurolab's own data-parallel extraction); 0 in the process a user started."""
    for key in ("LOCAL_RANK", "RANK", "NEUROLAB_EXTRACT_RANK"):
        try:
            r = int(os.environ.get(key, "0") or 0)
        except ValueError:
            r = 0
        if r > 0:
            return r
    return 0


def die_with_parent() -> None:
    """In a rank started by a launcher: end this process when the launching process dies (Linux), so
    that killing a data-parallel run leaves no worker behind."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the launcher's observer remains
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if os.getppid() == 1 or (launcher and launcher.isdigit() and int(launcher) != os.getppid()):
        os._exit(1)  # the launcher died before the line above

