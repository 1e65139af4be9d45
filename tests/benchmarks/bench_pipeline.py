"""Benchmark: the default pipeline as a user runs it, side by side with the older toolkit. Prints ONE JSON
object.

    python tests/benchmarks/bench_pipeline.py [--work DIR] [--reps 1] [--no-neurox] [--no-rank]

neurolab, each step the real CLI command with its defaults in a fresh process (whole-process wall time
and peak RSS, measured by an intermediate process's RUSAGE_CHILDREN):

1. ``neurolab extract corpus=ewt_dev store.dir=DIR`` (MiniLM, all 7 hidden-state sites, a new store);
2. ``neurolab probe corpus=ewt_dev store.dir=DIR`` (the default method and evaluation, W&B offline);
3. ``neurolab rank corpus=ewt_dev store.dir=DIR`` (the default method, probeless, its evaluation and pages).

NeuroX 1.0.9 (``/work/shared/bench/neurox_reference.py`` with ``$NEUROX_PYTHON``, default
``/tmp/neurox-venv/bin/python``): extraction, loading, the probe and the retraining on its top / random /
bottom 1%, 5% and 10% in one process, on the same corpus, model and split.

Ratios: (extract + probe) and (extract + rank) wall time over NeuroX's whole process; the larger peak
RSS of our two processes over NeuroX's. Each round runs neurolab then NeuroX; medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UD = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"
NEUROX_REF = Path(os.environ.get("NEUROX_REFERENCE", REPO.parent / "shared" / "bench" / "neurox_reference.py"))
NEUROX_PY = os.environ.get("NEUROX_PYTHON", "/tmp/neurox-venv/bin/python")
PEAK = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.perf_counter() - t; "
        "sys.stderr.write(r.stderr[-3000:]) if r.returncode else None; "
        "print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else '{}'); "
        "print(r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")


def measured(cmd: list[str], env: dict, cwd: Path) -> tuple[dict, str]:
    """Wall time, peak RSS and exit code of ``cmd`` as one fresh process (its last stdout line too)."""
    p = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, env=env, cwd=cwd)
    lines = p.stdout.strip().splitlines()
    if len(lines) < 2:
        return {"error": p.stderr[-2000:], "wall_s": float("nan"), "peak_rss_mb": float("nan")}, ""
    rc, wall, rss = lines[-1].split()
    out = {"rc": int(rc), "wall_s": round(float(wall), 2), "peak_rss_mb": round(float(rss), 1)}
    if int(rc):
        out["error"] = p.stderr[-2000:]
    return out, lines[-2]


def neurolab_round(work: Path, env: dict, rank: bool) -> dict:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    common = ["corpus=ewt_dev", f"store.dir={store}"]
    out = {}
    for verb, extra in (("extract", []), ("probe", []), *((("rank", []),) if rank else ())):
        r, _ = measured([sys.executable, "-m", "neurolab.cli", verb, *common, *extra,
                         f"hydra.run.dir={work / verb}"], env, work)
        out[verb] = r
        if verb != "extract" and (work / verb / "metrics.json").exists():
            m = json.loads((work / verb / "metrics.json").read_text())
            r.update({k: m[k] for k in ("test/acc", "top/acc@1%", "random/acc@1%", "bottom/acc@1%", "time/evaluate_s",
                                        "time/method_s") if k in m})
    return out


def neurox_round(work: Path, env: dict) -> dict:
    from neurolab.models.loading import packaged_minilm

    r, last = measured([NEUROX_PY, str(NEUROX_REF), "--conllu", str(UD), "--model", str(packaged_minilm()),
                        "--work", str(work / "neurox")], env, work)
    try:
        r.update({k: v for k, v in json.loads(last).items() if k in ("extract_s", "load_s", "train_s", "test_acc",
                                                                     "top/acc@0.01", "random/acc@0.01")})
    except ValueError:
        pass
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--no-neurox", action="store_true")
    ap.add_argument("--no-rank", action="store_true")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), NEUROLAB_DATA=str(UD.parent.parent), WANDB_MODE="offline")
    env.pop("WANDB_DISABLED", None)
    neurox_ok = not a.no_neurox and Path(NEUROX_PY).exists() and NEUROX_REF.exists()
    rounds = []
    for _ in range(a.reps):
        rnd = {"neurolab": neurolab_round(work / "neurolab", env, not a.no_rank)}
        if neurox_ok:
            rnd["neurox"] = neurox_round(work, env)
        rounds.append(rnd)
    out: dict = {"benchmark": "pipeline", "corpus": str(UD), "reps": a.reps, "rounds": rounds,
                 "load_average": os.getloadavg()}
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    ext = med([r["neurolab"]["extract"]["wall_s"] for r in rounds])
    out["neurolab"] = {v: {"wall_s": med([r["neurolab"][v]["wall_s"] for r in rounds]),
                           "peak_rss_mb": max(r["neurolab"][v]["peak_rss_mb"] for r in rounds)}
                       for v in rounds[0]["neurolab"]}
    if neurox_ok:
        nx = med([r["neurox"]["wall_s"] for r in rounds])
        nx_rss = min(r["neurox"]["peak_rss_mb"] for r in rounds)
        out["neurox"] = {"wall_s": nx, "peak_rss_mb": nx_rss}
        for v in [v for v in out["neurolab"] if v != "extract"]:
            ours = ext + out["neurolab"][v]["wall_s"]
            rss = max(out["neurolab"]["extract"]["peak_rss_mb"], out["neurolab"][v]["peak_rss_mb"])
            out[f"ratio/extract+{v}"] = {"time": round(ours / nx, 3), "peak_rss": round(rss / nx_rss, 3),
                                         "per_round_time": [round((r["neurolab"]["extract"]["wall_s"]
                                                                   + r["neurolab"][v]["wall_s"]) / r["neurox"]["wall_s"], 3)
                                                            for r in rounds]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
