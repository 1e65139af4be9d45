"""CrossMoments under 2 CPU DDP processes (gloo): each rank streams its own rows of a store; the synced
statistics equal those of one process over all rows (and numpy on the whole array)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1100, 9)) * rng.uniform(0.1, 4, 9) + 10 * rng.normal(size=9)
    X[:, 4] = -2 * X[:, 1] + 0.1 * rng.normal(size=1100)
    return X.astype(np.float32)


def _worker(rank: int, world: int, port: int, store: str, other: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from neurolab.analysis.correlation import stream_moments
        from neurolab.store import ActivationStore

        st, ot = ActivationStore.open(store), ActivationStore.open(other)
        rows = np.arange(rank, st.num_tokens, world)  # interleaved shares, uneven blocks
        for mode in ("full", "cross"):
            metric = stream_moments([st, ot], rows=rows, chunk_rows=97 + 31 * rank, mode=mode)
            mom = metric.moments()  # compute() sums the states over the process group
            np.savez(f"{out}/{mode}{rank}.npz", n=mom.n, mean=mom.mean,
                     second=mom.cov if mode == "full" else mom.cross)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_statistics_of_one(tmp_path):
    from neurolab.analysis.correlation import stream_moments
    from neurolab.store import write_store

    X = _data()
    n = len(X)
    st = write_store(tmp_path / "s", {"layers.0": X[:, :3], "layers.1": X[:, 3:6]}, np.arange(n) // 10, np.arange(n) % 10,
                     shard_size=128)
    ot = write_store(tmp_path / "o", {"layers.0": X[:, 6:]}, np.arange(n) // 10, np.arange(n) % 10, shard_size=300)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "s"), str(tmp_path / "o"), str(tmp_path)),
                       nprocs=2, join=True, start_method="fork")
    one_full = stream_moments([st, ot], chunk_rows=200).moments()
    one_cross = stream_moments([st, ot], chunk_rows=200, mode="cross").moments()
    X64 = X.astype(np.float64)
    for rank in range(2):
        f = np.load(tmp_path / f"full{rank}.npz")
        assert float(f["n"]) == n
        np.testing.assert_allclose(f["mean"], one_full.mean, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(f["second"], one_full.cov, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(f["second"], np.cov(X64, rowvar=False, ddof=0), rtol=1e-6, atol=1e-6)
        c = np.load(tmp_path / f"cross{rank}.npz")
        np.testing.assert_allclose(c["second"], one_cross.cross, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(c["second"], np.cov(X64, rowvar=False, ddof=0)[:6, 6:], rtol=1e-6, atol=1e-6)
