"""Benchmark: is reusing batch tensors (``BatchRing``, which reads torch's private storage reference
count) still worth it? Prints ONE JSON object.

    python tests/benchmarks/bench_batch_ring.py --store DIR [--reps 6] [--threads 1] [--streaming]

The probe of ``bench_probe.py`` (EWT dev / MiniLM / 7 sites / UPOS, 10 epochs, early stopping off) is
fitted alternately with the ring (the default) and without it (every batch a new tensor: the reference
count made unavailable), ``--reps`` times each in one process, rows held in memory (or streamed with
``--streaming``). Reported: wall and CPU seconds of each fit, medians, and the ratio without / with.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
UD = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--streaming", action="store_true")
    a = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import neurolab.data.buffers as buffers
    from neurolab.config import compose
    from neurolab.data import build_datamodule
    from neurolab.probes import fit_probe

    over = [f"corpus.path={UD}", "corpus.name=ewt_dev", f"store.dir={a.store}", "sites=all_layers", "concept=upos",
            "logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=10",
            "regularization.lambda_l1=0.001", "regularization.lambda_l2=0.001", "regularization.l2_squared=false",
            "probe.early_stopping.enabled=false", "probe.checkpoint=false"]
    if a.streaming:
        over += ["data.memory_budget_mb=0", "data.chunk_rows=2048"]
    cfg = compose("probe", over, run_dir=tempfile.mkdtemp(prefix="bench-ring-"))
    dm = build_datamodule(cfg)
    dm.setup()
    real = buffers._use_count
    runs: dict[str, list[dict]] = {"ring": [], "no_ring": []}
    accs = {}
    for _ in range(a.reps):
        for name in ("ring", "no_ring"):
            buffers._use_count = real if name == "ring" else None
            t, c = time.perf_counter(), time.process_time()
            _, m = fit_probe(dm, cfg, save=False)
            runs[name].append({"wall_s": round(time.perf_counter() - t, 3), "cpu_s": round(time.process_time() - c, 3)})
            accs[name] = m["test/acc"]
    buffers._use_count = real
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s")} for n, rs in runs.items()}
    print(json.dumps({"benchmark": "batch_ring", "streaming": a.streaming, "threads": torch.get_num_threads(),
                      "reps": a.reps, "runs": runs, "median": med, "test_acc": accs,
                      "ratio_no_ring_over_ring": {k: round(med["no_ring"][k] / med["ring"][k], 3)
                                                  for k in ("wall_s", "cpu_s")},
                      "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
