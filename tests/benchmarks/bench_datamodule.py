"""Benchmark of the ActivationDataModule's streaming path. Prints ONE JSON object.

1. Throughput: one training epoch of the DataModule (streaming forced: ``memory_budget_mb=0``;
   batches of float32, z-normalised, shuffled) against a plain sequential read of the same shards
   (``np.load`` of every site file + a copy to float32: the ceiling). Both with a warm page cache.
   Target: DataModule >= 0.7 x the sequential read (rows/s).
2. Peak RSS: a probe-like training pass (a linear layer trained with SGD for one epoch over the
   train dataloader, streaming forced) over a store x1 and x``scale`` (built with ``write_store``),
   each in a fresh subprocess; peak RSS from ``resource.getrusage`` (the child's own
   ``RUSAGE_SELF`` and the parent's ``RUSAGE_CHILDREN`` after it). Target: x8 within 1.2 x of x1.

The corpus is synthetic (``parallel`` format files: 20-word sentences, UPOS-like labels, a
5,000-word vocabulary) and is read by the child with ``neurolab.corpus.load_corpus``, as a run would.

    python tests/benchmarks/bench_datamodule.py [--rows 200000] [--scale 8] [--workdir DIR] [--keep] [--with-cli]

``--with-cli`` adds the peak RSS of ``neurolab probe`` itself (one epoch, streaming forced, the
evaluation's retraining off) on both stores. ``--workdir`` keeps and reuses the stores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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

SITES = ["embeddings"] + [f"layers.{i}" for i in range(6)]
TAGS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X"]
SENT_LEN = 20


class LazyActivations:
    """A ``[rows, units]`` fp16 array made slice by slice (so a x8 store never sits in memory)."""

    def __init__(self, rows: int, units: int, seed: int):
        self.shape, self.ndim, self.seed = (rows, units), 2, seed

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl: slice) -> np.ndarray:
        a, b, _ = sl.indices(self.shape[0])
        rng = np.random.default_rng([self.seed, a])
        x = rng.standard_normal((b - a, self.shape[1]), dtype=np.float32)
        x *= 1.0 + (self.seed % 7)
        return x.astype(np.float16)


def make_corpus_files(rows: int, d: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(5000)])
    d.mkdir(parents=True, exist_ok=True)
    sp, lp = d / "sentences.txt", d / "labels.txt"
    with open(sp, "w") as fs, open(lp, "w") as fl:
        for a in range(0, rows, SENT_LEN):
            n = min(SENT_LEN, rows - a)
            w = rng.integers(0, 5000, n)
            fs.write(" ".join(vocab[w]) + "\n")
            fl.write(" ".join(TAGS[int(i) % len(TAGS)] for i in w) + "\n")
    return sp, lp


def build(rows: int, d: Path, units: int) -> Path:
    from neurolab.store import write_store

    sdir = d / "store"
    if (sdir / "manifest.json").exists():
        return sdir
    make_corpus_files(rows, d / "corpus")
    sid = np.arange(rows, dtype=np.int64) // SENT_LEN
    wid = np.arange(rows, dtype=np.int64) % SENT_LEN
    acts = {s: LazyActivations(rows, units, k) for k, s in enumerate(SITES)}
    write_store(sdir, acts, sid, wid, meta={"model": "synthetic"}, dtype="fp16", shard_size=65536)
    return sdir


def datamodule(d: Path, workers: int, batch_size: int = 512):
    from neurolab.corpus import load_corpus
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from neurolab.store import ActivationStore

    corpus, splits = load_corpus({"path": str(d / "corpus" / "sentences.txt"), "labels": str(d / "corpus" / "labels.txt"),
                                  "format": "parallel", "split": [0.8, 0.1, 0.1]})
    return ActivationDataModule(ActivationStore.open(d / "store"), corpus, splits, ColumnConcept("label"),
                                memory_budget_mb=0, batch_size=batch_size, num_workers=workers, seed=0)


def sequential_read(store_dir: Path) -> tuple[float, int, int]:
    """Seconds, rows and bytes of np.load + float32 copy of every shard file, in order."""
    from neurolab.store import ActivationStore

    store = ActivationStore.open(store_dir)
    t0 = time.perf_counter()
    nbytes = 0
    for sh in store.shards:
        for s in SITES:
            a = np.load(store_dir / "shards" / sh["dir"] / f"{s}.npy", allow_pickle=False)
            nbytes += a.nbytes
            b = a.astype(np.float32)
            del a, b
    return time.perf_counter() - t0, store.num_tokens, nbytes


def child_train(d: Path, workers: int) -> dict:
    """A probe-like pass: setup (with the streaming z-score pass) + one epoch of SGD on a linear layer."""
    import torch

    t0 = time.perf_counter()
    dm = datamodule(d, workers)
    dm.setup()
    t_setup = time.perf_counter() - t0
    model = torch.nn.Linear(dm.num_features, dm.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t1 = time.perf_counter()
    n = 0
    for x, y in dm.train_dataloader():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        n += len(x)
    t_epoch = time.perf_counter() - t1
    return {"rows": n, "setup_s": round(t_setup, 2), "epoch_s": round(t_epoch, 2),
            "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def child_throughput(d: Path, workers: int) -> dict:
    dm = datamodule(d, workers)
    dm.setup()
    loader = dm.train_dataloader()
    best = None
    for _ in range(2):
        t0 = time.perf_counter()
        n = 0
        for x, _y in loader:
            n += len(x)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    row_bytes = sum(dm.store.neurons_per_site[s] for s in dm.sites) * 2  # fp16 on disk
    return {"rows": n, "seconds": round(best, 3), "rows_per_s": round(n / best), "GB_per_s": round(n * row_bytes / best / 1e9, 3)}


def run_child(mode: str, d: Path, workers: int) -> tuple[dict, float]:
    cmd = [sys.executable, __file__, "--child", mode, "--workdir", str(d), "--workers", str(workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return res, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(r.stderr[-3000:]) if r.returncode else None; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if r.returncode == 0 else -1)")


def cli_probe_rss(d: Path, tmp: Path) -> float:
    """Peak RSS (MB) of ``neurolab probe`` on the store of ``d`` (streaming forced, one epoch, the
    evaluation's retraining off), measured by a fresh intermediate process's RUSAGE_CHILDREN."""
    cmd = [sys.executable, "-m", "neurolab.cli", "probe", "corpus=parallel",
           f"corpus.path={d / 'corpus' / 'sentences.txt'}", f"corpus.labels={d / 'corpus' / 'labels.txt'}",
           "concept=label", f"store.dir={d / 'store'}", "data.memory_budget_mb=0", "probe.in_memory=false",
           "logger=none", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "evaluation=[]",
           "evaluation.plots=false", f"hydra.run.dir={tmp}"]
    out = subprocess.run([sys.executable, "-c", PEAK] + cmd, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled"))
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--units", type=int, default=384)
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--with-cli", action="store_true", help="also the peak RSS of `neurolab probe` x1 and xN")
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        fn = child_train if args.child == "train" else child_throughput
        print(json.dumps(fn(Path(args.workdir), args.workers)))
        return
    import logging

    logging.disable(logging.WARNING)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dm_"))
    d1, d8 = root / "x1", root / f"x{args.scale}"
    try:
        t0 = time.perf_counter()
        build(args.rows, d1, args.units)
        build(args.rows * args.scale, d8, args.units)
        t_build = time.perf_counter() - t0
        sequential_read(d1 / "store")  # warm the page cache
        seq = min((sequential_read(d1 / "store") for _ in range(2)), key=lambda r: r[0])
        seq_rows_s = seq[1] / seq[0]
        thr = {}
        for w in sorted({0, 2, args.workers}):
            thr[f"workers={w}"], _ = run_child("throughput", d1, w)
        best = max(v["rows_per_s"] for v in thr.values())
        rss1, parent1 = run_child("train", d1, args.workers)
        rss8, parent8 = run_child("train", d8, args.workers)
        res = {
            "benchmark": "datamodule_streaming",
            "store_rows_x1": args.rows,
            "features": len(SITES) * args.units,
            "dtype": "fp16",
            "build_s": round(t_build, 1),
            "sequential_read": {"rows_per_s": round(seq_rows_s), "GB_per_s": round(seq[2] / seq[0] / 1e9, 3),
                                "seconds": round(seq[0], 3)},
            "datamodule_streaming": thr,
            "throughput_ratio": round(best / seq_rows_s, 3),
            "throughput_target": 0.7,
            "train_x1": rss1,
            f"train_x{args.scale}": rss8,
            "peak_rss_mb_x1": rss1["peak_rss_mb_self"],
            f"peak_rss_mb_x{args.scale}": rss8["peak_rss_mb_self"],
            "rusage_children_mb_after_x1": round(parent1, 1),
            f"rusage_children_mb_after_x{args.scale}": round(parent8, 1),
            "rss_ratio": round(rss8["peak_rss_mb_self"] / rss1["peak_rss_mb_self"], 3),
            "rss_target": 1.2,
        }
        if args.with_cli:
            c1 = cli_probe_rss(d1, root / "run_x1")
            c8 = cli_probe_rss(d8, root / f"run_x{args.scale}")
            res.update({"neurolab_probe_peak_rss_mb_x1": round(c1, 1),
                        f"neurolab_probe_peak_rss_mb_x{args.scale}": round(c8, 1),
                        "neurolab_probe_rss_ratio": round(c8 / c1, 3) if c1 > 0 else None})
        print(json.dumps(res))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
