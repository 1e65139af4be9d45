"""``neurolab extract``: activations of ``model`` over ``corpus`` at ``sites`` into a store.

>>> from neurolab.config import compose
>>> from neurolab.tasks.extract import extract, extract_store
>>> cfg = compose("extract", ["sites=layers.0-1", "store.dir=/tmp/s"], run_dir="/tmp/run")  # doctest: +SKIP
>>> store = extract_store(cfg)                                                              # doctest: +SKIP

``extract_store(cfg)`` builds the store (or resumes it, or reuses a complete one with the same
identity) and returns the :class:`~neurolab.store.ActivationStore`; ``extract(cfg)`` is the verb:
it also logs a store summary and returns metrics (words, sentences, words/s, dropped counts).
With ``trainer=ddp`` and several devices (``trainer.accelerator=cpu trainer.devices=2`` for two CPU
processes), shards are distributed over the processes through Lightning's ``Trainer.predict``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .common import task

log = logging.getLogger(__name__)


def _sel(cfg, key: str, default: Any = None) -> Any:
    v = OmegaConf.select(cfg, key, default=default)
    return default if v is None else v


def build_extractor(cfg: DictConfig):
    """(extractor, corpus) from ``cfg.model``, ``cfg.corpus``, ``cfg.sites`` and ``cfg.extract``."""
    from ..corpus import load_corpus
    from ..extraction import Extractor
    from ..models import load_model

    corpus, _ = load_corpus(cfg.corpus)
    model, tokenizer = load_model(cfg.model)
    ex = Extractor(
        model,
        tokenizer,
        _sel(cfg, "sites", "all_layers"),
        aggregation=str(_sel(cfg, "extract.aggregation", "mean")),
        dtype=str(_sel(cfg, "extract.dtype", "fp16")),
        batch_tokens=int(_sel(cfg, "extract.batch_tokens", 8192)),
        max_batch_sentences=int(_sel(cfg, "extract.max_batch_sentences", 256)),
        max_length=_sel(cfg, "model.max_length", None),
        stride=_sel(cfg, "extract.stride", None),
        device=_sel(cfg, "extract.device", "auto"),
        sentence_rows=_sel(cfg, "extract.sentence_rows", None),
        autocast=bool(_sel(cfg, "extract.autocast", False)),
        progress=bool(_sel(cfg, "extract.progress", True)),
    )
    return ex, corpus


def resolve_store_dir(cfg: DictConfig, ex, plan, corpus, identity: dict) -> Path:
    from ..extraction.run import identity_hash, slug

    d = _sel(cfg, "store.dir", None)
    if d:
        return Path(str(d))
    root = _sel(cfg, "paths.store_root", None)
    if not root:
        raise ConfigError("store.dir is null and paths.store_root is not set")
    name = f"{slug(_sel(cfg, 'model.name_or_path', 'model'))}-{slug(getattr(corpus, 'name', 'corpus'))}-"
    return Path(str(root)) / (name + identity_hash(identity, ex.site_names, ex.dtype))


def _world(cfg: DictConfig) -> int:
    strategy = str(_sel(cfg, "trainer.strategy", "auto"))
    if "ddp" not in strategy:
        return 1
    devices = _sel(cfg, "trainer.devices", 1)
    accel = str(_sel(cfg, "trainer.accelerator", "auto"))
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


def extract_store(cfg: DictConfig, *, stats: dict | None = None, for_reading: bool = True):
    """Build (or resume, or reuse) the store for this config and return it.

    ``for_reading``: the caller computes on the store, so a store holding non-finite values (fp16
    overflow at extraction) is refused unless ``store.nonfinite=warn`` (as when a store is opened).
    """
    from ..extraction.run import extract_to_store, store_identity
    from ..models.loading import model_identity

    t0 = time.perf_counter()
    ex, corpus = build_extractor(cfg)
    shard_size = int(_sel(cfg, "store.shard_size", 16384))
    plan = ex.plan(corpus.words(), shard_size)
    mid = model_identity(ex.model, cfg.model)
    identity = store_identity(ex, plan, corpus, mid)
    path = resolve_store_dir(cfg, ex, plan, corpus, identity)
    overwrite = bool(_sel(cfg, "store.overwrite", False))
    meta = {"corpus_path": str(_sel(cfg, "corpus.path", "")), "model_name_or_path": str(_sel(cfg, "model.name_or_path", ""))}
    world = _world(cfg)
    if world > 1:
        from ..extraction.distributed import extract_distributed

        store, st = extract_distributed(cfg, ex, corpus, plan, path, identity=identity, meta=meta, overwrite=overwrite)
    else:
        store, st = extract_to_store(ex, corpus, path, shard_size=shard_size, overwrite=overwrite,
                                     model_identity=mid, plan=plan, meta=meta)
    st["total_seconds"] = time.perf_counter() - t0
    st["world_size"] = world
    if store is not None:
        st["fp16_overflow"] = int((store.meta or {}).get("fp16_overflow") or 0)
        if for_reading and st["fp16_overflow"]:
            _refuse_overflow(store, st["fp16_overflow"])
    if stats is not None:
        stats.update(st)
    return store


def _refuse_overflow(store, count: int) -> None:
    from ..store import StoreError
    from ..store.integrity import policy

    msg = (f"{store.path}: {count} activations were beyond the fp16 range (|x| > 65504) and are stored as inf; "
           "results computed on them are not meaningful. Extract with extract.dtype=bf16 or fp32 (into another "
           "store.dir, or with store.overwrite=true)")
    if policy().nonfinite == "error":
        raise StoreError(msg + ", or set store.nonfinite=warn to use the store anyway")
    log.warning("%s (store.nonfinite=warn: using it anyway)", msg)


@task("extract")
def extract(cfg: DictConfig) -> dict:
    """The ``neurolab extract`` verb: build the store, log its summary, return metrics."""
    from ..store.integrity import overriding

    st: dict = {}
    with overriding(nonfinite="warn"):  # extract reports non-finite values; the verbs that read refuse them
        store = extract_store(cfg, stats=st, for_reading=False)
    if store is None:  # a non-zero rank of a data-parallel run
        return {}
    info = store.info()
    log.info(
        "store %s: %d rows (words), %d sentences, %d sites, %d neurons, %s, %d shards, %.1f MB",
        info["path"], info["num_tokens"], info["num_sentences"], len(info["sites"]), info["num_neurons"],
        info["dtype"], info["num_shards"], info["bytes_on_disk"] / 1e6,
    )
    if st.get("words_without_subwords") or st.get("empty_sentences"):
        log.warning("no rows for %d words without subwords and %d empty sentences (see the manifest meta)",
                    st.get("words_without_subwords", 0), st.get("empty_sentences", 0))
    return {
        "extract/words": st.get("words", 0),
        "extract/rows": info["num_tokens"],
        "extract/sentences": st.get("sentences", 0),
        "extract/words_per_s": round(float(st.get("words_per_s", 0.0)), 2),
        "extract/seconds": round(float(st.get("seconds", 0.0)), 3),
        "extract/words_without_subwords": st.get("words_without_subwords", 0),
        "extract/empty_sentences": st.get("empty_sentences", 0),
        "extract/windowed_sentences": st.get("windowed_sentences", 0),
        "extract/reused": st.get("reused", 0),
        "extract/shards_written": st.get("shards", 0),
        "extract/num_neurons": info["num_neurons"],
        "extract/fp16_overflow": st.get("fp16_overflow", 0),
        "store_dir": info["path"],
    }
