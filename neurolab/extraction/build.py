"""The store a config asks for: built, resumed, or reused when a complete one with the same identity
exists (``extract_store``), by one process or by the ranks of a data-parallel run."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import die_with_parent
from ..errors import ConfigError, NeurolabError
from ..store.integrity import store_checks
from .distributed import RANK_ENV, world_size

log = logging.getLogger(__name__)

__all__ = ["build_extractor", "resolve_store_dir", "world_size", "extract_store"]


def _sel(cfg, key: str, default: Any = None) -> Any:
    v = OmegaConf.select(cfg, key, default=default)
    return default if v is None else v


def build_extractor(cfg: DictConfig):
    """(extractor, corpus) from ``cfg.model``, ``cfg.corpus``, ``cfg.sites`` and ``cfg.extract``."""
    from ..corpus import load_corpus
    from . import Extractor
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
    """``store.dir``, else ``<paths.store_root>/<model>-<corpus>-<sites>-<aggregation>-<hash>``: the
    corpus named after its file (the same file is the same store whatever config names it), the sites
    after the ``sites`` spec, the hash of the identity (content fingerprints and settings)."""
    from .run import identity_hash, slug

    d = _sel(cfg, "store.dir", None)
    if d:
        return Path(str(d))
    root = _sel(cfg, "paths.store_root", None)
    if not root:
        raise ConfigError("store.dir is null and paths.store_root is not set")
    cpath = _sel(cfg, "corpus.path", None)
    corpus_label = Path(str(cpath)).stem if isinstance(cpath, str) and cpath else getattr(corpus, "name", "corpus")
    spec = _sel(cfg, "sites", "all_layers")
    sites_label = spec if isinstance(spec, str) and len(ex.site_names) > 1 else (
        ex.site_names[0] if len(ex.site_names) == 1 else f"{len(ex.site_names)}sites")
    name = "-".join(slug(x) for x in (_sel(cfg, "model.name_or_path", "model"), corpus_label, sites_label,
                                      ex.aggregation))
    return Path(str(root)) / f"{name}-{identity_hash(identity, ex.site_names, ex.dtype)}"


def extract_store(cfg: DictConfig, *, stats: dict | None = None, for_reading: bool = True):
    """Build (or resume, or reuse) the store for this config and return it.

    ``for_reading``: the caller computes on the store, so a store holding non-finite values (fp16
    overflow at extraction) is refused unless ``store.nonfinite=warn`` (as when a store is opened).
    """
    from .run import extract_to_store, store_identity
    from ..models.loading import model_identity

    from ..heap import fixed_mmap_threshold

    fixed_mmap_threshold()  # batches of every shape, allocated and freed per forward pass: out of the heap
    t0 = time.perf_counter()
    ex, corpus = build_extractor(cfg)
    shard_size = int(_sel(cfg, "store.shard_size", 16384))
    plan = ex.plan(corpus.words(), shard_size)
    mid = model_identity(ex.model, cfg.model)
    identity = store_identity(ex, plan, corpus, mid)
    path = resolve_store_dir(cfg, ex, plan, corpus, identity)
    overwrite = bool(_sel(cfg, "store.overwrite", False))
    if not _sel(cfg, "store.dir", None) and not overwrite and not (path / "manifest.json").exists():
        from .run import superset_store

        wider = superset_store(path.parent, identity, ex.site_names, ex.units, ex.dtype, ex.sentence_rows)
        if wider is not None:  # the cache holds this corpus and model with these sites and more
            log.info("using the store %s: it holds the requested sites %s", wider.path, ex.site_names)
            if stats is not None:
                stats.update(reused=1, rows=0, seconds=0.0, words_per_s=0.0, shards=0, superset=1,
                             total_seconds=time.perf_counter() - t0, world_size=1)
            return wider
    meta = {"corpus_path": str(_sel(cfg, "corpus.path", "")), "model_name_or_path": str(_sel(cfg, "model.name_or_path", ""))}
    world = world_size(cfg)
    if world > 1:
        from .distributed import extract_distributed

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


def _child_main(argv: list[str]) -> int:
    """Entry point of the ranks > 0 that a data-parallel extraction starts (``python -m
    neurolab.extraction.build <config.yaml>``): build this rank's shards of the store."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"[%(asctime)s][rank {os.environ.get(RANK_ENV)}][%(name)s][%(levelname)s] - %(message)s")
    if len(argv) != 1:
        sys.stderr.write("usage: python -m neurolab.extraction.build <config.yaml>\n")
        return 2
    die_with_parent()  # killing the launching process ends this rank too
    cfg = OmegaConf.load(argv[0])
    OmegaConf.update(cfg, "extract.progress", False, force_add=True)
    try:
        with store_checks(cfg):
            extract_store(cfg)
    except (ConfigError, NeurolabError) as e:
        sys.stderr.write(f"neurolab extract (rank {os.environ.get(RANK_ENV)}): error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main(sys.argv[1:]))
