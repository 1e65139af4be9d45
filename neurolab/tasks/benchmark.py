"""``neurolab benchmark``: every registered method on the planted suite, scored against the planted neurons.

::

    neurolab benchmark                                               # synthetic suite, no model needed
    neurolab benchmark benchmark.methods=[probeless,iou,genetic] benchmark.types=[focused,group]
    neurolab benchmark benchmark.source=store corpus=ewt_dev sites=[layers.2,layers.5]   # MiniLM rows
    neurolab benchmark benchmark.source=suite benchmark.suite_dir=path/to/suite          # a built suite

The suite (:mod:`neurolab.benchmark.planted`) is built under ``benchmark.suite_dir`` (default
``<run dir>/suite``; an existing suite of the same spec is reused) from synthetic activations or from
a store (``store.dir``, or the store of ``model`` over ``corpus``, extracted when missing). Every
method of ``benchmark.methods`` (default: every ``conf/method/*.yaml``) is instantiated from its YAML,
fitted on each case through the method contract and scored. Writes ``benchmark.json`` (one row per
method × case), ``leaderboard.html``, ``benchmark_ap.png``, the rankings (``rankings/<case>/<method>.json``),
``metrics.json`` (mean AP per method and type, seconds per method) and the same table and plot to the
logger (W&B).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import output_dir
from ..errors import ConfigError
from ..tracking import Tracker, make_logger
from .common import task

log = logging.getLogger(__name__)

RESULTS_FILE = "benchmark.json"
LEADERBOARD_FILE = "leaderboard.html"
SOURCES = ("synthetic", "store", "suite")

__all__ = ["benchmark", "build_planted_suite", "RESULTS_FILE", "LEADERBOARD_FILE"]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_planted_suite(cfg: DictConfig, run_dir: str | Path):
    """The planted suite of ``cfg.benchmark`` (built, reused, or loaded with ``source=suite``)."""
    from ..benchmark.planted import PlantedSuite, build_suite, source_from_store, synthetic_source

    b = cfg.benchmark
    source = str(b.get("source", "synthetic"))
    if source not in SOURCES:
        raise ConfigError(f"benchmark.source={source!r}; expected one of {list(SOURCES)}")
    root = Path(str(b.get("suite_dir") or Path(run_dir) / "suite"))
    if source == "suite":
        if not b.get("suite_dir"):
            raise ConfigError("benchmark.source=suite needs benchmark.suite_dir=<a suite directory>")
        return PlantedSuite.load(root)
    if source == "synthetic":
        syn = dict(_plain(b.get("synthetic")) or {})
        syn.setdefault("seed", int(cfg.get("seed") or 0))
        src = synthetic_source(**syn)
    else:
        from ..corpus import load_corpus
        from ..data.sites import select_sites
        from .probe import open_store

        store = open_store(cfg)
        corpus, _ = load_corpus(cfg.corpus)
        sites = select_sites(store.sites, cfg.get("sites"))
        src = source_from_store(store, corpus, sites=sites, max_sentences=b.get("max_sentences"))
    return build_suite(root, src, types=list(b.types), effects=list(b.effects), seeds=list(b.seeds),
                       params=dict(_plain(b.get("plant")) or {}), reuse=bool(b.get("reuse", True)))


def _data_kwargs(cfg: DictConfig) -> dict[str, Any]:
    d = cfg.get("data") or {}
    kw = {k: d.get(k) for k in ("normalize", "batch_size", "chunk_rows", "unseen_labels") if d.get(k) is not None}
    kw["seed"] = int(cfg.get("seed") or 0)
    return kw


@task("benchmark")
def benchmark(cfg: DictConfig) -> dict:
    """Run the planted benchmark (see the module docstring); returns flat metrics."""
    from ..benchmark.report import leaderboard, plot_by_effect, write_leaderboard
    from ..benchmark.runner import hydra_factory, method_nodes, run_planted

    run_dir = output_dir(cfg)
    b = cfg.get("benchmark")
    if b is None:
        raise ConfigError("no benchmark settings (conf/benchmark.yaml's `benchmark:` block)")
    nodes = method_nodes(_plain(b.get("methods")), _plain(b.get("method_overrides")))
    t0 = time.perf_counter()
    suite = build_planted_suite(cfg, run_dir)
    cases = suite.select(_plain(b.get("types")))
    t_suite = time.perf_counter() - t0
    factories, cfgs = {}, {}
    for name, node in nodes.items():
        factories[name], cfgs[name] = hydra_factory(node, cfg)
    k = b.get("k")
    res = run_planted(cases, factories, k=None if k is None else int(k), seed=int(cfg.get("seed") or 0), cfg=cfgs,
                      run_dir=run_dir if b.get("keep_rankings", True) else None, data_kwargs=_data_kwargs(cfg))
    rows = res.rows
    path = run_dir / RESULTS_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"results": rows}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)

    board = leaderboard(rows)
    images = []
    if b.get("plots", True):
        try:
            images.append(plot_by_effect(rows, run_dir / "benchmark_ap.png"))
        except Exception as e:  # a plot must not lose the results
            log.warning("benchmark plot failed: %s", e)
    types = list(dict.fromkeys(c.type for c in cases))
    info = {"suite": str(suite.root), "source": json.dumps(suite.spec.get("source", {}), sort_keys=True),
            "types": ", ".join(types), "effects": ", ".join(f"{e:g}" for e in sorted({c.effect for c in cases})),
            "seeds": ", ".join(str(s) for s in sorted({c.seed for c in cases})), "cases": len(cases),
            "methods": ", ".join(nodes), "k": "number of planted neurons" if k is None else k}
    write_leaderboard(run_dir / LEADERBOARD_FILE, rows, info=info, images=images, seconds=res.seconds)

    metrics: dict[str, float] = {"benchmark/cases": float(len(cases)), "time/benchmark_suite_s": round(t_suite, 3)}
    for e in board:
        m = e["method"]
        metrics[f"benchmark/{m}/ap"] = e["mean"]
        metrics[f"benchmark/{m}/failed"] = float(e["failed"])
        for t in types:
            if e.get(t) is not None:
                metrics[f"benchmark/{m}/{t}/ap"] = e[t]
        metrics[f"time/benchmark_{m}_s"] = res.seconds.get(m, 0.0)
    metrics["time/benchmark_reads_s"] = round(sum(res.read_seconds.values()), 3)
    tracker = Tracker(make_logger(cfg, run_dir))
    cols = ["method", "type", "effect", "seed", "ap", "precision@k", "recall@k", "k", "status"]
    tracker.log_table("benchmark/results", cols, [[r.get(c) for c in cols] for r in rows])
    tracker.log_table("benchmark/leaderboard", ["method", "mean_ap", "failed"],
                      [[e["method"], e["mean"], e["failed"]] for e in board])
    for p in images:
        tracker.log_image(f"benchmark/{Path(p).stem}", p)
    tracker.log_html("benchmark/leaderboard", run_dir / LEADERBOARD_FILE)
    tracker.log_metrics({k2: v for k2, v in metrics.items() if v is not None})
    log.info("benchmark: %d cases x %d methods; leaderboard %s", len(cases), len(nodes),
             ", ".join(f"{e['method']} {e['mean']:.3f}" for e in board if e["mean"] is not None))
    return metrics
