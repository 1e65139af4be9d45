"""Benchmark: what the store checks cost. ``neurolab probe`` on EWT dev (MiniLM, all 7 hidden-state
sites, UPOS) with ``store.verify=once`` after the first run (the verification marker vouches for every
file: one ``stat`` per file) side by side with ``store.verify=never``. Prints ONE JSON object.

    python tests/benchmarks/bench_store_verify.py [--store DIR] [--work DIR] [--reps 3] [--threads N]

- ``open_s``: ``ActivationStore.open`` in one process, median of ``--reps``: ``never`` (manifest only),
  ``once`` with a marker (stat every file), ``always`` (read and hash every file, scan for non-finite
  values: the cost of the first run of ``once``), with the store's size and the hashing rate.
- ``probe``: the real command (``python -m neurolab.cli probe ...``) in fresh processes, a first run with
  ``once`` (writes the marker; reported as ``first_run_s``), then ``--reps`` rounds each running ``never``
  and ``once`` (order alternating); wall time of the whole command per run, the medians, and
  ``overhead_wall`` / ``overhead_cpu`` = median(once) / median(never) - 1 of wall and CPU time, and the
  checks' own time inside each run (``time/store_checks_s`` of its metrics) against the median run:
  ``overhead`` (on a shared machine the run-to-run noise is far larger than the checks). The probe uses the
  quick evaluation of ``debug=fast`` (2 epochs, one size), so the fixed cost of the checks weighs more than
  in a default run.
The store is built (or reused) with ``neurolab.tasks.extract.extract_store`` in a child process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UD = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"


def child_store(store: str) -> dict:
    from neurolab.config import compose
    from neurolab.tasks.extract import extract_store

    cfg = compose("extract", [f"corpus.path={UD}", "corpus.name=ewt_dev", f"store.dir={store}", "logger=none",
                              "extract.progress=false"], run_dir=str(Path(store).parent / "extract_run"))
    stats: dict = {}
    t = time.perf_counter()
    s = extract_store(cfg, stats=stats)
    return {"store_s": round(time.perf_counter() - t, 2), "rows": int(s.num_tokens),
            "reused": bool(stats.get("reused", 0))}


def child_open(store: str, reps: int) -> dict:
    from neurolab.store import ActivationStore

    size = sum(f.stat().st_size for f in Path(store).rglob("*.npy"))
    out = {"store_mb": round(size / 2**20, 1), "files": sum(1 for _ in Path(store).rglob("shards/*/*"))}
    for mode in ("always", "never", "once"):
        times = []
        for _ in range(max(1, reps)):
            t = time.perf_counter()
            s = ActivationStore.open(store, verify=mode)
            times.append(time.perf_counter() - t)
        out[mode] = round(statistics.median(times), 4)
        if mode == "once":
            out["once_files_hashed"] = s.verification.files_hashed
    out["hash_mb_per_s"] = round(out["store_mb"] / out["always"], 1) if out["always"] > 0 else None
    return out


def _probe_cmd(store: str, run_dir: Path, mode: str) -> list[str]:
    return [sys.executable, "-m", "neurolab.cli", "probe", f"corpus.path={UD}", "corpus.name=ewt_dev",
            f"store.dir={store}", "sites=all_layers", "concept=upos", "logger=none", "extract_if_missing=false",
            "debug=fast", f"store.verify={mode}", f"hydra.run.dir={run_dir}"]


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command."""
    import resource

    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    dt = time.perf_counter() - t
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"probe failed ({r.returncode}): {r.stderr[-3000:]}")
    return dt, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)


def _checks_s(run_dir: Path) -> float:
    """The seconds the run spent checking its store (``time/store_checks_s`` of its metrics)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    return float(m.get("time/store_checks_s", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", nargs="*")
    a = ap.parse_args()
    if a.child:
        fn = {"store": lambda: child_store(a.child[1]), "open": lambda: child_open(a.child[1], a.reps)}[a.child[0]]
        print(json.dumps(fn()))
        return
    if not UD.exists():
        print(json.dumps({"skipped": f"UD English EWT not found at {UD}"}))
        return
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-verify-"))
    store = a.store or str(work / "ewt_dev_minilm")
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)

    def child(*args: str) -> dict:
        r = subprocess.run([sys.executable, __file__, "--reps", str(a.reps), "--child", *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-3000:])
        return json.loads(r.stdout.strip().splitlines()[-1])

    out: dict = {"store": store, "store_build": child("store", store)}
    marker = Path(store) / ".verified.json"
    marker.unlink(missing_ok=True)  # the first probe run below verifies the store
    first_dir = work / "run_first"
    first_wall, _ = _timed(_probe_cmd(store, first_dir, "once"), env)
    runs: dict[str, list[float]] = {"never": [], "once": []}
    cpu: dict[str, list[float]] = {"never": [], "once": []}
    checks: dict[str, list[float]] = {"never": [], "once": []}
    for i in range(max(1, a.reps)):
        order = ("never", "once") if i % 2 == 0 else ("once", "never")
        for mode in order:
            d = work / f"run_{mode}_{i}"
            wall, c = _timed(_probe_cmd(store, d, mode), env)
            runs[mode].append(round(wall, 2))
            cpu[mode].append(round(c, 2))
            checks[mode].append(_checks_s(d))
    med = {m: statistics.median(v) for m, v in runs.items()}
    med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
    check_once = statistics.median(checks["once"])
    out["probe"] = {
        "first_run_s": round(first_wall, 2), "first_run_checks_s": _checks_s(first_dir),
        "wall_s": runs, "cpu_s": cpu, "median_wall_s": med, "median_cpu_s": med_cpu,
        "overhead_wall": round(med["once"] / med["never"] - 1, 4),
        "overhead_cpu": round(med_cpu["once"] / med_cpu["never"] - 1, 4),
        "rounds_wall": [round(o / n - 1, 4) for o, n in zip(runs["once"], runs["never"])],
        "checks_s_once": checks["once"],
        # the checks' own time inside the run, against the whole run: the overhead without the noise of
        # a shared machine (the other phases are the same code in both modes)
        "overhead_measured_in_run": round(check_once / med["never"], 6),
    }
    out["overhead"] = out["probe"]["overhead_measured_in_run"]
    out["open_s"] = child("open", store)
    out["threads"] = env.get("OMP_NUM_THREADS")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
