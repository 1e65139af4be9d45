"""Whole-process peak RSS of the commands users run, on a store x1 and x``scale``. Prints ONE JSON object.

The stores are built with :func:`neurolab.store.write_store` from real sentences: UD English EWT
dev (x1: its first ``--sentences`` sentences; x``scale``: those sentences repeated ``scale`` times,
each copy with its own ``sent_id``), 2 sites x 768 units (fp16), activations Gaussian noise with
the UPOS class planted in a few units of the first site (so the probes and methods have something
to find). Every command is run as a subprocess (``python -m neurolab.cli ...``) with streaming
forced (``data.memory_budget_mb=0``), ``logger=none`` and otherwise the defaults of the verb:

* ``neurolab probe probe=<p>`` for each probe (linear, gaussian, neuron_mask);
* ``neurolab rank method=<m>`` for each cheap corpus method (probeless, iou, ap, selectivity);
* ``neurolab evaluate ranking=<the linear probe's ranking.json>`` with the default evaluation.

The peak RSS of each command is the ``RUSAGE_CHILDREN`` maximum of a fresh intermediate process
that runs only that command (so it is the command's own whole-process peak). Target: x``scale``
within 1.2 x of x1 for every command.

    python tests/benchmarks/bench_memory_cli.py [--sentences 2001] [--scale 8] [--workdir DIR]
        [--only probe:linear,rank:probeless,evaluate] [--short] [--extra key=value ...]

``--extra`` adds overrides to every command (e.g. fewer epochs to keep the run short; they change
the time, not what is held in memory). ``--workdir`` keeps and reuses the stores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EWT = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"
SITES = ["layers.0", "layers.1"]
UNITS = 768
PROBES = ["linear", "gaussian", "neuron_mask"]
METHODS = ["probeless", "iou", "ap", "selectivity"]
#: --short: fewer epochs (time, not memory: what a stage holds does not depend on the number of passes)
SHORT = {"": ["trainer.max_epochs=1", "evaluation.percentages=[5]", "evaluation.retrain.random_seeds=[0]",
             "evaluation.minimal.max_steps=4"], "probe:neuron_mask": ["method.max_epochs=2", "method.module.anneal_epochs=1"]}


def _blocks(path: Path) -> list[list[str]]:
    out, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def make_corpus(sentences: int, scale: int, out: Path) -> Path:
    """The first ``sentences`` sentences of EWT dev, repeated ``scale`` times (new sent_ids)."""
    blocks = _blocks(EWT)[:sentences]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for c in range(scale):
            for b in blocks:
                for line in b:
                    if line.startswith("# sent_id"):
                        line = f"{line}-copy{c}"
                    f.write(line + "\n")
                f.write("\n")
    return out


class Planted:
    """``[rows, UNITS]`` fp16 noise made slice by slice; unit ``3 * c`` of the first site carries class ``c``."""

    def __init__(self, codes: np.ndarray, seed: int, plant: bool):
        self.codes, self.seed, self.plant = codes, seed, plant
        self.shape, self.ndim = (len(codes), UNITS), 2

    def __len__(self) -> int:
        return self.shape[0]

    def _noise(self, a: int, b: int) -> np.ndarray:
        return np.random.default_rng([self.seed, a]).standard_normal((b - a, UNITS), dtype=np.float32)

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, _ = sl.indices(self.shape[0])
        x = self._noise(a, b)
        if self.plant:  # the class added in the noise's own dtype, then stored as fp16
            c = self.codes[a:b]
            ok = np.flatnonzero(c >= 0)
            x[ok, 3 * c[ok]] += x.dtype.type(2.5)
        return x.astype(np.float16, copy=False)


def build_store(corpus_file: Path, sdir: Path) -> int:
    from neurolab.corpus.conllu_reader import read_conllu
    from neurolab.store import write_store

    corpus = read_conllu(corpus_file)
    sid = np.concatenate([np.full(len(s.words), i, np.int64) for i, s in enumerate(corpus.sentences)])
    wid = np.concatenate([np.arange(len(s.words), dtype=np.int64) for s in corpus.sentences])
    tags = sorted({u for s in corpus.sentences for u in s.annotations["upos"] if u})
    index = {t: i for i, t in enumerate(tags)}
    codes = np.array([index.get(u, -1) if u else -1 for s in corpus.sentences for u in s.annotations["upos"]], np.int64)
    del corpus
    if not (sdir / "manifest.json").exists():
        acts = {s: Planted(codes, k, k == 0) for k, s in enumerate(SITES)}
        write_store(sdir, acts, sid, wid, meta={"model": "synthetic-ewt"}, dtype="fp16", shard_size=65536)
    return len(sid)


PEAK = ("import resource, subprocess, sys, time; t = time.time(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(r.stderr[-4000:]) if r.returncode else None; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if r.returncode == 0 else -1, "
        "round(time.time() - t, 1))")


def run_cli(verb: str, args: list[str], corpus_file: Path, store: Path, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "neurolab.cli", verb, f"corpus.path={corpus_file}", f"store.dir={store}",
           "data.memory_budget_mb=0", "logger=none", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run_dir}", *args, *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, "-c", PEAK] + cmd, capture_output=True, text=True, env=env)
    last = out.stdout.strip().splitlines()[-1].split() if out.stdout.strip() else ["-1", "0"]
    res = {"peak_rss_mb": round(float(last[0]), 1), "seconds": float(last[1])}
    if res["peak_rss_mb"] < 0:
        res["error"] = out.stderr[-1500:]
    return res


def commands(only: set[str] | None) -> list[tuple[str, str, list[str]]]:
    cmds = [(f"probe:{p}", "probe", [f"probe={p}"]) for p in PROBES]
    cmds.append(("evaluate", "evaluate", []))
    cmds += [(f"rank:{m}", "rank", [f"method={m}"]) for m in METHODS]
    return [c for c in cmds if only is None or c[0] in only]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", type=int, default=2001, help="EWT dev sentences in the x1 store")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default=None, help="comma-separated names: probe:linear,rank:iou,evaluate")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides added to every command")
    ap.add_argument("--short", action="store_true", help="fewer epochs (see SHORT)")
    ap.add_argument("--per", nargs="*", default=[], help="NAME=OVERRIDE added to one command only, e.g. "
                    "probe:gaussian=method.select_budget_mb=64")
    args = ap.parse_args()
    if not EWT.exists():
        print(json.dumps({"benchmark": "memory_cli", "skipped": f"{EWT} not found"}))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_mem_"))
    only = set(args.only.split(",")) if args.only else None
    try:
        sizes = {}
        t0 = time.perf_counter()
        for s in (1, args.scale):
            d = root / f"x{s}"
            cf = d / "corpus.conllu"
            if not cf.exists():
                make_corpus(args.sentences, s, cf)
            sizes[s] = build_store(cf, d / "store")
        t_build = time.perf_counter() - t0
        results: dict[str, dict] = {}
        for name, verb, a in commands(only):
            results[name] = {}
            for s in (1, args.scale):
                d = root / f"x{s}"
                if verb == "evaluate":
                    rk = d / "run_probe_linear" / "ranking.json"
                    if not rk.exists():
                        run_cli("probe", ["probe=linear"], d / "corpus.conllu", d / "store", d / "run_probe_linear",
                                [*args.extra, *(SHORT[""] if args.short else [])])
                    a = [f"ranking={rk}"]
                run_dir = d / f"run_{name.replace(':', '_')}"
                extra = [*args.extra, *(SHORT[""] + SHORT.get(name, []) if args.short else []),
                         *[p.split("=", 1)[1] for p in args.per if p.split("=", 1)[0] == name]]
                results[name][f"x{s}"] = run_cli(verb, a, d / "corpus.conllu", d / "store", run_dir, extra)
            r1, r8 = results[name]["x1"]["peak_rss_mb"], results[name][f"x{args.scale}"]["peak_rss_mb"]
            results[name]["ratio"] = round(r8 / r1, 3) if r1 > 0 and r8 > 0 else None
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
        ratios = [v["ratio"] for v in results.values() if v["ratio"] is not None]
        print(json.dumps({
            "benchmark": "memory_cli",
            "rows_x1": sizes[1], f"rows_x{args.scale}": sizes[args.scale],
            "sites": SITES, "units_per_site": UNITS, "dtype": "fp16",
            "store_mb_x1": round(sizes[1] * UNITS * len(SITES) * 2 / 2**20, 1),
            f"store_mb_x{args.scale}": round(sizes[args.scale] * UNITS * len(SITES) * 2 / 2**20, 1),
            "memory_budget_mb": 0, "extra_overrides": args.extra, "short": args.short, "per_command": args.per, "build_s": round(t_build, 1),
            "commands": results, "max_ratio": max(ratios) if ratios else None, "target_ratio": 1.2,
        }))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
