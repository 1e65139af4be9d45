"""Data-parallel extraction: several processes (CPU or one GPU each) write into one store.

``trainer=ddp trainer.accelerator=cpu trainer.devices=2`` runs two CPU processes. The launching
process is rank 0: it opens the store (or finds it complete and returns it), writes the resolved
extraction config to the run directory as YAML, starts ranks 1..N-1 as ``python -m
neurolab.extraction.build <config.yaml>`` with the usual torch.distributed environment
(``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so that Lightning treats the
processes as externally launched. Every rank runs Lightning's ``Trainer.predict`` over its share of
the pending shards (round robin over the shard plan); a :class:`ShardWriter` prediction-writer
callback writes each shard atomically into the common store. Rank 0 then waits for the other ranks
and finalizes the manifest.

Each shard is computed from the same batches whatever the number of processes, so the store of an
N-process run is identical (same checksums) to the single-process store.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import LAUNCHER_PID_ENV
from ..store import StoreError
from ..store.store import store_lock

log = logging.getLogger(__name__)

RANK_ENV = "NEUROLAB_EXTRACT_RANK"
CFG_KEYS = ("seed", "model", "corpus", "sites", "extract", "store", "trainer", "paths")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _resolved_subset(cfg: DictConfig, path: Path) -> dict:
    out: dict[str, Any] = {}
    for k in CFG_KEYS:
        if k not in cfg:
            continue
        node = cfg[k]
        if k == "paths":
            out[k] = {"store_root": OmegaConf.select(cfg, "paths.store_root")}
        elif OmegaConf.is_config(node):
            out[k] = OmegaConf.to_container(node, resolve=True)
        else:
            out[k] = node
    out["store"] = dict(out.get("store") or {}, dir=str(path))
    return out


def _make_module_and_writer(extractor, plan, shard_ids, writer, sent_writer):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import BasePredictionWriter

    class ExtractModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self._ex = [extractor]  # not a registered submodule: no DDP wrapping, no grads
            self.by_id = {s.id: s for s in plan.shards}

        def on_predict_start(self) -> None:
            ex = self._ex[0]
            ex.device = self.device
            ex.model.to(self.device)

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            sid = int(batch)
            return self._ex[0].extract_shard(plan, self.by_id[sid])

        def predict_dataloader(self):
            return torch.utils.data.DataLoader(shard_ids, batch_size=None, shuffle=False)

    class ShardWriter(BasePredictionWriter):
        """Writes each predicted shard into the store (write-once, atomic)."""

        def __init__(self):
            super().__init__(write_interval="batch")
            self.done_main = set(writer.finished_shards())
            self.done_sent = set(sent_writer.finished_shards()) if sent_writer is not None else set()
            self.rows = 0

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            res = prediction
            i = res.shard.id
            if i not in self.done_main:
                writer.write_shard(i, res.activations, res.sentence_ids, res.word_ids)
            if sent_writer is not None and i not in self.done_sent:
                sent_writer.write_shard(i, res.sentence_activations, res.sentence_row_ids, [0] * len(res.sentence_row_ids))
            self.rows += res.shard.rows
            log.info("rank %d wrote shard %d (%d rows)", trainer.global_rank, i, res.shard.rows)

    return ExtractModule(), ShardWriter()


def _run_rank(cfg, extractor, plan, writer, sent_writer, todo: list[int], rank: int, world: int) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy

    accel = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu") or "cpu")
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    if accel == "cpu":  # as Lightning's own launchers do: split the cores unless OMP_NUM_THREADS is set
        try:
            from lightning_fabric.utilities.distributed import _set_num_threads_if_needed

            _set_num_threads_if_needed(num_processes=world)
        except ImportError:  # pragma: no cover
            pass
    mine = todo[rank::world]
    module, cb = _make_module_and_writer(extractor, plan, mine, writer, sent_writer)
    trainer = pl.Trainer(
        accelerator=accel,
        devices=world,
        num_nodes=1,
        strategy=DDPStrategy(process_group_backend="gloo" if accel == "cpu" else None, timeout=timedelta(minutes=30)),
        logger=False,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    t0 = time.perf_counter()
    trainer.predict(module, return_predictions=False)
    dt = time.perf_counter() - t0
    return {"rows": cb.rows, "seconds": dt, "words_per_s": cb.rows / dt if dt > 0 else 0.0, "shards": len(mine)}


def world_size(cfg: DictConfig) -> int:
    """Processes of a data-parallel run from ``cfg.trainer`` (1 unless the strategy is DDP)."""
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto") or "auto")
    if "ddp" not in strategy:
        return 1
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    accel = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto") or "auto")
    if isinstance(devices, int):
        return devices
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    if str(devices) == "auto":
        import torch

        if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.cuda.device_count()
        return 1
    try:
        return int(devices)
    except ValueError:
        return 1


def extract_distributed(cfg, extractor, corpus, plan, path: Path, *, identity: dict, meta: dict, overwrite: bool):
    """Rank 0 (launcher) or rank > 0 (child) side of a data-parallel extraction."""
    from .run import make_writers, pending_shards, store_meta

    world = world_size(cfg)
    rank = int(os.environ.get(RANK_ENV, "0"))
    path = Path(path)
    writer, sent_writer = make_writers(extractor, path, identity, store_meta(extractor, plan, corpus, meta), overwrite)
    if rank > 0:  # child: the launcher has opened the store already
        writer.open(clean=False)
        if sent_writer is not None:
            sent_writer.open(clean=False)
        todo = pending_shards(plan, writer, sent_writer)
        st = _run_rank(cfg, extractor, plan, writer, sent_writer, todo, rank, world)
        return None, st
    with store_lock(path, overwrite):
        return _launch(cfg, extractor, corpus, plan, path, identity, meta, overwrite, world, writer, sent_writer)


def _launch(cfg, extractor, corpus, plan, path: Path, identity: dict, meta: dict, overwrite: bool, world: int,
            writer, sent_writer):
    """Rank 0, holding the store's lock: reuse, or start ranks 1..N-1, extract its share, finalize."""
    from .run import complete_store, pending_shards

    reused = complete_store(path, identity, extractor.site_names, extractor.units, extractor.dtype,
                            extractor.sentence_rows)
    if reused is not None and not overwrite:
        log.info("reusing the complete store %s", path)
        return reused, {"reused": 1, "rows": 0, "seconds": 0.0, "words_per_s": 0.0, "shards": 0, **plan.stats}
    writer.open()
    if sent_writer is not None:
        sent_writer.open()
    todo = pending_shards(plan, writer, sent_writer)
    from ..config import output_dir

    run_dir = output_dir(cfg)
    cfg_file = run_dir / "extract_ddp_config.yaml"
    OmegaConf.save(OmegaConf.create(_resolved_subset(cfg, path)), cfg_file)
    port = _free_port()
    base_env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "NODE_RANK": "0",
                "GROUP_RANK": "0"}
    children = []
    try:
        for r in range(1, world):
            env = dict(os.environ, **base_env, LOCAL_RANK=str(r), RANK=str(r),
                       **{RANK_ENV: str(r), LAUNCHER_PID_ENV: str(os.getpid())})
            children.append(subprocess.Popen([sys.executable, "-m", "neurolab.extraction.build", str(cfg_file)],
                                             env=env))
    except BaseException:
        _kill(children)
        raise
    saved = {k: os.environ.get(k) for k in list(base_env) + ["LOCAL_RANK", "RANK"]}
    os.environ.update(base_env, LOCAL_RANK="0", RANK="0")
    try:
        st = _run_rank(cfg, extractor, plan, writer, sent_writer, todo, 0, world)
    except BaseException:
        _kill(children)
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    bad = []
    try:
        for r, c in enumerate(children, 1):
            rc = c.wait()
            if rc != 0:
                bad.append(f"rank {r} exited with {rc}")
    except BaseException:  # interrupted while waiting for the other ranks
        _kill(children)
        raise
    if bad:
        raise StoreError(f"{path}: data-parallel extraction failed ({'; '.join(bad)}); rerun to resume")
    store = writer.finalize(len(plan.shards))
    if sent_writer is not None:
        sent_writer.finalize(len(plan.shards))
    st["rows"] = sum(s.rows for s in plan.shards if s.id in set(todo))
    st["words_per_s"] = st["rows"] / st["seconds"] if st["seconds"] > 0 else 0.0
    st.update(plan.stats, reused=0, world_size=world)
    return store, st


def _kill(children: list[subprocess.Popen]) -> None:
    """End the other ranks (a rank blocked in a collective does not end on SIGTERM)."""
    for c in children:
        if c.poll() is None:
            c.kill()
    for c in children:
        try:
            c.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
