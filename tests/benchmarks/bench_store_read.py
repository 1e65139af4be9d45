"""Read throughput of an activation store vs plain reads of its shard files; prints ONE JSON object.

    python tests/benchmarks/bench_store_read.py [--gb 1.0] [--dtype fp16] [--dir DIR] [--repeats 3]

Builds a store of ``--gb`` GB (7 sites x 384 units, like all-MiniLM-L6-v2's hidden states; shards of
16384 rows, the extraction default) and times, each as the best of ``--repeats``:

* ``raw_mmap_copy``: ``np.load(mmap_mode="r")`` + copy of every shard file (storage dtype), the floor
  of any sequential reader of these files;
* ``raw_mmap_to_f32``: the same plus conversion into one float32 ``[rows, units]`` array (what
  ``read`` returns);
* ``read_slice``: ``store.read(slice)`` over the whole store in chunks of ``--chunk-rows`` rows;
  ``read_slice_reused_out``: the same into a reused ``out=`` buffer;
* ``read_index_sorted`` / ``read_index_shuffled``: ``store.read(index array)`` of every row in
  batches of ``--batch`` rows (sorted random subsets, and a random permutation);
* ``*_cold``: the same after dropping the store's files from the page cache
  (``posix_fadvise(DONTNEED)`` on each file; touches no other file).

Throughput is given in rows/s and GB/s of store bytes read (file bytes, not float32 bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from neurolab.store import ActivationStore  # noqa: E402
from neurolab.store.format import DTYPES, from_storage  # noqa: E402

SITES = ["embeddings"] + [f"layers.{i}" for i in range(6)]
UNITS = 384


def build(path: Path, gb: float, dtype: str, shard_size: int) -> ActivationStore:
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    rows = int(gb * 1e9 / (len(SITES) * UNITS * itemsize))
    rng = np.random.default_rng(0)
    # write shard by shard through write_store's writer so memory stays bounded
    from neurolab.store import StoreWriter

    w = StoreWriter(path, sites=SITES, neurons_per_site={s: UNITS for s in SITES}, dtype=dtype,
                    identity={"model": "bench"}, overwrite=True).open()
    block = {s: rng.standard_normal((shard_size, UNITS)).astype(np.float32) for s in SITES}
    n = 0
    for i, a in enumerate(range(0, rows, shard_size)):
        b = min(a + shard_size, rows)
        r = np.arange(a, b)
        w.write_shard(i, {s: x[: b - a] + i for s, x in block.items()}, r // 20, r % 20)
        n += 1
    return w.finalize(n)


def drop_cache(store: ActivationStore) -> None:
    for f in store.path.rglob("*.npy"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def best(fn, repeats: int, cold: bool, store) -> float:
    times = []
    for _ in range(repeats):
        if cold:
            drop_cache(store)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--shard-size", type=int, default=16384)
    args = ap.parse_args()

    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-store-"))
    path = base / "store"
    t = time.perf_counter()
    build(path, args.gb, args.dtype, args.shard_size)
    build_s = time.perf_counter() - t
    store = ActivationStore.open(path)
    n = store.num_tokens
    nbytes = sum((path / "shards" / sh["dir"] / f"{s}.npy").stat().st_size for sh in store.shards for s in SITES)
    files = [[path / "shards" / sh["dir"] / f"{s}.npy" for s in SITES] for sh in store.shards]
    rng = np.random.default_rng(1)

    def raw_copy():
        for shard in files:
            for f in shard:
                np.array(np.load(f, mmap_mode="r", allow_pickle=False))

    def raw_to_f32():
        for shard in files:
            parts = [np.load(f, mmap_mode="r", allow_pickle=False) for f in shard]
            out = np.empty((len(parts[0]), UNITS * len(parts)), np.float32)
            for k, p in enumerate(parts):
                out[:, k * UNITS : (k + 1) * UNITS] = from_storage(p, args.dtype) if args.dtype == "bf16" else p

    def read_slice():
        s = ActivationStore.open(path)
        for _ in s.iter_chunks(chunk_rows=args.chunk_rows):
            pass

    bufs: dict[int, np.ndarray] = {}

    def read_slice_out():
        s = ActivationStore.open(path)
        for a in range(0, n, args.chunk_rows):
            b = min(a + args.chunk_rows, n)
            if b - a not in bufs:
                bufs[b - a] = np.zeros((b - a, len(SITES) * UNITS), np.float32)
            s.read(slice(a, b), out=bufs[b - a])

    perm = rng.permutation(n)
    sorted_batches = [np.sort(perm[a : a + args.batch]) for a in range(0, n, args.batch)]
    shuffled_batches = [perm[a : a + args.batch] for a in range(0, n, args.batch)]

    def read_sorted():
        s = ActivationStore.open(path)
        for b in sorted_batches:
            s.read(b)

    def read_shuffled():
        s = ActivationStore.open(path)
        for b in shuffled_batches:
            s.read(b)

    # correctness of what is timed: the store's reads equal the raw files
    s = ActivationStore.open(path)
    probe = np.sort(rng.choice(n, 1000, replace=False))
    raw = np.concatenate([np.load(files[0][k], mmap_mode="r")[:100] for k in range(len(SITES))], axis=1)
    assert np.array_equal(s.read(slice(0, 100)), from_storage(raw, args.dtype) if args.dtype == "bf16" else raw.astype(np.float32))
    assert np.array_equal(s.read(probe), s.read(slice(None))[probe])

    result = {
        "benchmark": "store_read",
        "store_gb": round(nbytes / 1e9, 3),
        "rows": n,
        "sites": len(SITES),
        "units_per_site": UNITS,
        "dtype": args.dtype,
        "shard_rows": args.shard_size,
        "shards": len(store.shards),
        "chunk_rows": args.chunk_rows,
        "batch_rows": args.batch,
        "build_s": round(build_s, 2),
        "cpu_count": os.cpu_count(),
    }
    cases = {
        "raw_mmap_copy": raw_copy,
        "raw_mmap_to_f32": raw_to_f32,
        "read_slice": read_slice,
        "read_slice_reused_out": read_slice_out,
        "read_index_sorted": read_sorted,
        "read_index_shuffled": read_shuffled,
    }
    for cold in (False, True):
        for name, fn in cases.items():
            if cold and name not in ("raw_mmap_copy", "read_slice"):
                continue
            sec = best(fn, args.repeats, cold, store)
            key = name + ("_cold" if cold else "")
            result[f"{key}_s"] = round(sec, 3)
            result[f"{key}_rows_per_s"] = round(n / sec)
            result[f"{key}_gb_per_s"] = round(nbytes / 1e9 / sec, 3)
    for key in ("read_slice", "read_slice_reused_out", "read_index_sorted", "read_index_shuffled"):
        result[f"{key}_vs_raw_copy"] = round(result["raw_mmap_copy_s"] / result[f"{key}_s"], 3)
        result[f"{key}_vs_raw_to_f32"] = round(result["raw_mmap_to_f32_s"] / result[f"{key}_s"], 3)
    result["read_slice_cold_vs_raw_copy_cold"] = round(result["raw_mmap_copy_cold_s"] / result["read_slice_cold_s"], 3)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
