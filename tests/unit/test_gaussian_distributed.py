"""GaussianStats under 2 CPU DDP processes (gloo): the synced statistics equal a one-shot numpy
computation over all rows, and so does the fitted probe's selection."""
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
    y = rng.integers(0, 3, 900)
    X = rng.normal(size=(900, 6)).astype(np.float32)
    X[:, 2] += 2 * y
    return X, y


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from neurolab.probes.gaussian import GaussianProbe

        X, y = _data()
        probe = GaussianProbe(3, 6)
        # each rank sees its own interleaved shard, in uneven batches
        Xr, yr = X[rank::world], y[rank::world]
        for a in range(0, len(Xr), 100 + 17 * rank):
            probe.training_step((torch.from_numpy(Xr[a:a + 100 + 17 * rank]), torch.from_numpy(yr[a:a + 100 + 17 * rank])), 0)
        probe.finalize()  # Metric.compute() sums the states over the process group
        counts, sums, outer = probe.stats.compute()
        sel = probe.select(X[:300], y[:300], k=3).selected
        np.savez(f"{out}/rank{rank}.npz", counts=counts.numpy(), sums=sums.numpy(), outer=outer.numpy(),
                 sel=np.array(sel))
        dist.barrier()  # nobody tears the group down while a peer still talks to it
    finally:
        dist.destroy_process_group()


def test_statistics_are_summed_across_two_processes(tmp_path):
    # fork: children leave through os._exit, so no C++ destructor races the process-group threads at exit
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    X, y = _data()
    X64 = X.astype(np.float64)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for c in range(3):
            Xc = X64[y == c]
            assert got["counts"][c] == len(Xc)
            np.testing.assert_allclose(got["sums"][c], Xc.sum(0), rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(got["outer"][c], Xc.T @ Xc, rtol=1e-12, atol=1e-8)
    from neurolab.probes.gaussian import GaussianProbe

    one = GaussianProbe(3, 6).fit_arrays(X, y).select(X[:300], y[:300], k=3).selected
    assert np.load(tmp_path / "rank0.npz")["sel"].tolist() == one
    assert np.load(tmp_path / "rank1.npz")["sel"].tolist() == one
