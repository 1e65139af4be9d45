"""Running ranking methods on the planted suite and scoring their rankings.

Every registered method (a ``conf/method/<name>.yaml`` file, nothing else) goes through the method
contract: the YAML is instantiated with Hydra, ``fit(data, RunContext(...))`` is called and
``ranking_`` is read. Each case's store is joined with its corpus once, in memory, and every method
fits on that same data module: one read of the store serves all methods of a case. A method that
raises on a case is reported on that case (``status`` holds the error), not dropped.

Example::

    >>> rows = run_planted(suite.cases, {"oracle": Oracle}, k=None)            # doctest: +SKIP
    >>> rows[0]["ap"], rows[0]["status"]                                         # doctest: +SKIP
    (1.0, 'ok')
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import config_dir
from ..errors import ConfigError
from ..ranking import NeuronRanking
from ..store import ActivationStore
from .planted import PlantedCase
from .scoring import score_ranking

log = logging.getLogger(__name__)

__all__ = ["registered_methods", "method_nodes", "hydra_factory", "fit_method", "run_planted", "PlantedRun", "ROW_KEYS"]

#: the keys every row of ``benchmark.json`` has (more may follow)
ROW_KEYS = ("method", "type", "effect", "seed", "ap", "precision@k", "recall@k", "status")


def registered_methods(conf: str | Path | None = None) -> list[str]:
    """Names of the registered methods: the ``conf/method/*.yaml`` files."""
    d = Path(conf or config_dir()) / "method"
    return sorted(p.stem for p in d.glob("*.yaml") if not p.name.startswith("_"))


def method_nodes(names: Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None,
                 conf: str | Path | None = None) -> dict[str, DictConfig]:
    """The config node of each named method (all registered ones by default), with ``overrides``
    (``{name: {key: value}}``) merged in. An unknown name is a ``ConfigError`` listing the registered."""
    known = registered_methods(conf)
    if names is None or (not isinstance(names, str) and len(names) == 0):
        names = known
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"benchmark.methods: unknown method(s) {unknown}; registered methods "
                          f"(conf/method/*.yaml): {known}")
    if len(set(names)) != len(names):
        raise ConfigError(f"benchmark.methods lists a method twice: {names}")
    overrides = dict(overrides or {})
    bad = [n for n in overrides if n not in names]
    if bad:
        raise ConfigError(f"benchmark.method_overrides names method(s) {bad} that are not run ({names})")
    d = Path(conf or config_dir()) / "method"
    out = {}
    for n in names:
        node = OmegaConf.load(d / f"{n}.yaml")
        if n in overrides and overrides[n]:
            node = OmegaConf.merge(node, OmegaConf.create(dict(overrides[n])))
        if not node.get("_target_"):
            raise ConfigError(f"conf/method/{n}.yaml has no _target_")
        out[n] = node
    return out


def hydra_factory(node: DictConfig, cfg: DictConfig | None = None) -> tuple[Callable[[], Any], DictConfig | None]:
    """``(build, cfg')``: ``build()`` instantiates the method node afresh (Hydra ``_target_``);
    ``cfg'`` is ``cfg`` with ``method`` set to the node (for the method's :class:`RunContext`), so the
    node's interpolations resolve against the run's config."""
    from hydra.utils import instantiate

    run_cfg = None
    if cfg is not None:
        run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        with open_dict(run_cfg):
            run_cfg.method = node
        node = run_cfg.method

    def build():
        return instantiate(node, _convert_="all")

    return build, run_cfg


def fit_method(method: Any, data, context, positive: str | None = None) -> NeuronRanking:
    """Fit ``method`` on ``data`` (a binary concept's ``positive`` class goes to a method that has a
    ``positive`` parameter left unset) and return its ``ranking_``, checked to cover the data's neurons."""
    if positive is not None and hasattr(method, "positive") and getattr(method, "positive") is None:
        method.positive = positive
    method.fit(data, context)
    ranking = getattr(method, "ranking_", None)
    if not isinstance(ranking, NeuronRanking):
        raise TypeError(f"ranking_ is {type(ranking).__name__}, not a NeuronRanking")
    total = int(data.num_features)
    if ranking.total != total:
        raise ValueError(f"the ranking covers {ranking.total} neurons, the data has {total}")
    return ranking


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _status(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg if len(msg) <= 400 else msg[:397] + "..."


def _num(x: Any) -> Any:
    if isinstance(x, float):
        return None if not np.isfinite(x) else round(x, 6)
    return x


@dataclass
class PlantedRun:
    """What :func:`run_planted` returns: one row per (method, case) and the seconds each took."""

    rows: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    rankings: dict[tuple[str, str], NeuronRanking] = field(default_factory=dict)
    read_seconds: dict[str, float] = field(default_factory=dict)


def check_k(cases: Sequence[PlantedCase], k: int | None) -> None:
    """``k`` must fit every case's store (a ``ConfigError`` naming the smallest otherwise)."""
    if k is None:
        return
    if int(k) < 1:
        raise ConfigError(f"benchmark.k={k}: must be a positive number of neurons (or null: the gold set's size)")
    for c in cases:
        n = ActivationStore.open(c.store_path).num_neurons()
        if int(k) > n:
            raise ConfigError(f"benchmark.k={k} is larger than the {n} neurons of planted case {c.name} ({c.store_path})")


def run_planted(cases: Sequence[PlantedCase], methods: Mapping[str, Callable[[], Any]], *, k: int | None = None,
                seed: int = 0, cfg: DictConfig | Mapping[str, DictConfig | None] | None = None,
                run_dir: str | Path | None = None, data_kwargs: Mapping[str, Any] | None = None,
                keep_rankings: bool = False) -> PlantedRun:
    """Fit every method on every case and score its ranking against the case's gold neurons.

    ``methods`` maps a name to a zero-argument factory returning a fresh, unfitted method (a
    :class:`~neurolab.methods.Method` or anything with ``fit(data, context)`` and ``ranking_``).
    ``cfg``: the run config every method's :class:`RunContext` gets (or one per method name).
    ``k``: the cut-off of ``precision@k`` / ``recall@k`` (None: each case's number of gold neurons).
    Rankings are written to ``run_dir/rankings/<case>/<method>.json`` when ``run_dir`` is given.
    """
    from ..corpus import read_conllu
    from ..methods.base import RunContext

    check_k(cases, k)
    corpora: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    read_s: dict[str, float] = {}
    kept: dict[tuple[str, str], NeuronRanking] = {}
    dkw = {"memory_budget_mb": 1 << 20, "seed": seed}
    dkw.update(dict(data_kwargs or {}))
    for case in cases:
        t0 = time.perf_counter()
        data, err = None, None
        try:
            corpus = corpora.get(case.corpus_file)
            if corpus is None:
                corpus = corpora[case.corpus_file] = read_conllu(case.corpus_path)
            data = case.datamodule(corpus, **dkw)
            data.setup()
        except Exception as e:  # the case itself is broken: every method fails on it
            log.warning("planted case %s could not be loaded: %s", case.name, e)
            err = f"case not loaded: {_status(e)}"
        read_s[case.name] = round(time.perf_counter() - t0, 3)
        model = ""
        if data is not None:
            meta = getattr(data.store, "meta", {}) or {}
            model = str(meta.get("model") or "")
        for name, build in methods.items():
            row: dict[str, Any] = {"method": name, "type": case.type, "effect": float(case.effect), "seed": int(case.seed),
                                   "ap": None, "precision@k": None, "recall@k": None, "status": "ok"}
            t1 = time.perf_counter()
            if err is not None:
                row["status"] = err
                rows.append(row)
                continue
            try:
                _seed_all(seed)
                method = build()
                mcfg = cfg.get(name) if isinstance(cfg, Mapping) and not isinstance(cfg, DictConfig) else cfg
                mdir = Path(run_dir) / "cases" / case.name / name if run_dir is not None else None
                context = RunContext(cfg=mcfg, run_dir=mdir, seed=seed, model=model)
                ranking = fit_method(method, data, context, case.positive)
                scores = score_ranking(ranking, case.gold, k, case.decoys)
                row.update({kk: _num(v) for kk, v in scores.items()})
                if run_dir is not None:
                    ranking.to_json(Path(run_dir) / "rankings" / case.name / f"{name}.json")
                if keep_rankings:
                    kept[(name, case.name)] = ranking
            except Exception as e:
                log.warning("method %s failed on planted case %s: %s", name, case.name, e)
                log.debug("traceback", exc_info=True)
                row["status"] = _status(e)
            seconds[name] += time.perf_counter() - t1
            rows.append(row)
            log.info("%s on %s: %s", name, case.name,
                     f"AP {row['ap']:.3f}, ranks {row.get('ranks')}" if row["status"] == "ok" else row["status"])
        del data
    return PlantedRun(rows, {m: round(s, 3) for m, s in seconds.items()}, kept, read_s)
