"""Two gloo processes: the ranks see disjoint, equal-batch parts whose union is the split."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from neurolab.corpus import split_sentences
from neurolab.corpus.concepts import ColumnConcept
from neurolab.data import ActivationDataModule
from neurolab.store import ActivationStore
from tests.helpers.data import random_corpus, store_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, store_dir: str, out_dir: str, budget: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        corpus = random_corpus(70, seed=11)
        splits = split_sentences(len(corpus))
        dm = ActivationDataModule(ActivationStore.open(store_dir), corpus, splits, ColumnConcept("upos"),
                                  normalize="none", batch_size=32, chunk_rows=50, memory_budget_mb=budget, seed=3)
        dm.setup()
        out = {}
        for name, loader in (("train", dm.train_dataloader()), ("dev", dm.val_dataloader())):
            ids, nb = [], 0
            for x, _ in loader:
                ids.append(x[:, 0].numpy().round().astype(np.int64))
                nb += 1
            out[name] = np.concatenate(ids)
            out[f"{name}_batches"] = np.array([nb, len(loader)])
        out["train_rows"] = dm.row_ids("train")
        out["dev_rows"] = dm.row_ids("dev")
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **out)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("budget", [0, 64])
def test_ddp_ranks_disjoint_union_equal_batches(tmp_path, budget):
    corpus = random_corpus(70, seed=11)
    store_for(corpus, tmp_path / "store", row_feature=True)
    # fork: the children need not import torch again (the parent never initialises a process group)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "store"), str(tmp_path), budget), nprocs=2,
                       join=True, start_method="fork")
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in range(2))
    for name in ("train", "dev"):
        a, b = r0[name], r1[name]
        assert not set(a.tolist()) & set(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(r0[f"{name}_rows"].tolist())
        assert abs(len(a) - len(b)) <= 1
        assert r0[f"{name}_batches"][0] == r1[f"{name}_batches"][0] == r0[f"{name}_batches"][1]


@pytest.mark.distributed
def test_lightning_ddp_fork_two_cpu_processes(tmp_path):
    """Trainer(strategy=ddp_fork, devices=2): each rank trains on its own part of every epoch."""
    import pytorch_lightning as pl
    import torch

    corpus = random_corpus(70, seed=11)
    store_for(corpus, tmp_path / "store", row_feature=True)
    splits = split_sentences(len(corpus))
    dm = ActivationDataModule(ActivationStore.open(tmp_path / "store"), corpus, splits, ColumnConcept("upos"),
                              normalize="none", batch_size=16, chunk_rows=40, memory_budget_mb=0, seed=2)
    out = str(tmp_path)

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(15, 5)
            self.rows = []

        def training_step(self, batch, i):
            x, y = batch
            self.rows.append(x[:, 0].round().long())
            return torch.nn.functional.cross_entropy(self.lin(x * 0), y)

        def on_train_epoch_end(self):
            ep = self.current_epoch
            np.save(os.path.join(out, f"r{self.global_rank}_e{ep}.npy"), torch.cat(self.rows).numpy())
            self.rows = []

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(Probe(), datamodule=dm)
    rows = dm.row_ids("train").tolist()
    orders = []
    for ep in range(2):
        a, b = (np.load(tmp_path / f"r{r}_e{ep}.npy") for r in range(2))
        assert not set(a.tolist()) & set(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(rows)
        orders.append(a.tolist())
    assert orders[0] != orders[1]
