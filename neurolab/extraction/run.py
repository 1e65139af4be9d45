"""From an :class:`Extractor` and a corpus to a store on disk (resumable, data-parallel capable).

Store layout: word rows go to ``store_dir``; with ``extract.sentence_rows`` set, one row per sentence
(sentence ids in ``sentence_ids``, ``word_ids`` all 0) goes to a second store ``store_dir/sentences``.

Shards are planned up front from the corpus and the config only (contiguous sentence ranges ending at
sentence boundaries, about ``shard_size`` rows each). A rerun after a kill skips the finished shards;
since every shard is computed from the same batches, the final store is identical (same checksums) to
an uninterrupted run's. The batch settings (``extract.batch_tokens``, ``extract.max_batch_sentences``)
are part of the store's identity: other batch shapes can change the last bits of the floating-point
results, so a resume with other values is refused. A complete store with the same identity is
reused without recomputation; asking for sentence rows later adds the sentence store next to it.

Writers into one store run one at a time: each holds the store's lock file from the check for a
complete store to the final manifest (a second extraction waits, then reuses or resumes the store).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..store import ActivationStore, StoreWriter
from ..store.store import store_lock
from ..store.format import MANIFEST, read_json
from .extractor import Extractor, progress_bar
from .plan import Plan

log = logging.getLogger(__name__)

SENTENCE_STORE = "sentences"
EXTRACT_SCHEMA = "neurolab-extract-1"


def store_identity(extractor: Extractor, plan: Plan, corpus, model_identity: Mapping[str, Any]) -> dict:
    """Everything that defines the store's content (compared on resume / reuse)."""
    return {
        "source": EXTRACT_SCHEMA,
        "model": dict(model_identity),
        "aggregation": extractor.aggregation,
        # the corpus by content, not by the name a config gives it: one store per corpus file
        "corpus": {"fingerprint": corpus.fingerprint(), "sentences": len(corpus)},
        "corpus_fingerprint": corpus.fingerprint(),
        "window": {"max_length": plan.max_length, "stride": plan.stride},
        # batch shapes change the last bits of the results: a store is resumed only with the same ones
        "batching": {"batch_tokens": int(extractor.batch_tokens), "max_batch_sentences": int(extractor.max_batch_sentences)},
        "shard_plan": plan.fingerprint(),
        "num_shards": len(plan.shards),
    }


def identity_hash(identity: Mapping[str, Any], sites: Iterable[str], dtype: str) -> str:
    blob = json.dumps({"identity": identity, "sites": list(sites), "dtype": dtype}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text).rstrip("/").split("/")[-1]).strip("-.")
    return s or "model"


def store_meta(extractor: Extractor, plan: Plan, corpus, extra: Mapping[str, Any] | None = None) -> dict:
    meta = {
        "level": "word",
        "model": getattr(extractor.model, "neurolab_name", None) or extractor.model.config._name_or_path,
        "model_type": getattr(extractor.model.config, "model_type", None),
        "corpus": getattr(corpus, "name", None),
        "aggregation": extractor.aggregation,
        "max_length": plan.max_length,
        "window_tokens": plan.window,
        "stride": plan.stride,
        "special_tokens": {"prefix": plan.prefix, "suffix": plan.suffix},
        "decoder_input": "decoder_input_ids = input_ids" if extractor.enc_dec else None,
        "sentence_rows": extractor.sentence_rows,
        "sentence_store": SENTENCE_STORE if extractor.sentence_rows else None,
        "no_row_for": "words that the tokenizer maps to no subword token, and empty sentences",
        "corpus_skipped": dict(getattr(corpus, "skipped", {}) or {}),
        **plan.stats,
    }
    if extra:
        meta.update(extra)
    return meta


def make_writers(extractor: Extractor, path: Path, identity: dict, meta: dict, overwrite: bool):
    units = extractor.units
    writer = StoreWriter(path, sites=extractor.site_names, neurons_per_site=units, dtype=extractor.dtype,
                         identity=identity, meta=meta, overwrite=overwrite)
    sent_writer = None
    if extractor.sentence_rows:
        sid = dict(identity, level="sentence", sentence_rows=extractor.sentence_rows)
        smeta = dict(meta, level="sentence", word_ids="always 0 (one row per sentence)")
        sent_writer = StoreWriter(path / SENTENCE_STORE, sites=extractor.site_names, neurons_per_site=units,
                                  dtype=extractor.dtype, identity=sid, meta=smeta, overwrite=overwrite)
    return writer, sent_writer


def pending_shards(plan: Plan, writer: StoreWriter, sent_writer: StoreWriter | None) -> list[int]:
    done = set(writer.finished_shards())
    sdone = set(sent_writer.finished_shards()) if sent_writer is not None else None
    return [s.id for s in plan.shards if s.id not in done or (sdone is not None and s.id not in sdone)]


def superset_store(root: Path, identity: dict, sites, units, dtype: str, sentence_rows) -> ActivationStore | None:
    """A complete store under ``root`` (the store cache) built with this identity and dtype whose sites
    include all of ``sites`` with the same widths (an all-layer store serves a one-layer request); the
    one with the fewest extra sites, None when there is none."""
    root = Path(root)
    if not root.is_dir():
        return None
    best = None
    want = {s: int(units[s]) for s in sites}
    for mp in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            m = read_json(mp)
        except Exception:  # not a store of ours, or being written: not a candidate
            continue
        ident = dict(m.get("identity") or {})
        have = {str(k): int(v) for k, v in (ident.pop("neurons_per_site", None) or {}).items()}
        ident.pop("sites", None)
        if not m.get("complete") or ident.pop("dtype", None) != dtype or ident != _plain_identity(identity):
            continue
        if any(have.get(s) != w for s, w in want.items()):
            continue
        if sentence_rows and not ((mp.parent / SENTENCE_STORE / MANIFEST).exists()):
            continue
        if best is None or len(have) < best[0]:
            best = (len(have), mp.parent)
    return ActivationStore.open(best[1]) if best is not None else None


def _plain_identity(identity: dict) -> dict:
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def complete_store(path: Path, identity: dict, sites, units, dtype: str, sentence_rows) -> ActivationStore | None:
    """The store at ``path`` if it is complete and was built with exactly this identity."""
    mp = path / MANIFEST
    if not mp.exists():
        return None
    m = read_json(mp)
    if not m.get("complete"):
        return None
    probe = StoreWriter(path, sites=sites, neurons_per_site=units, dtype=dtype, identity=identity)
    if m.get("identity") != probe.identity:
        return None
    if sentence_rows:
        sp = path / SENTENCE_STORE / MANIFEST
        if not sp.exists() or not read_json(sp).get("complete"):
            return None
    return ActivationStore.open(path)


def write_shards(extractor: Extractor, plan: Plan, writer: StoreWriter, sent_writer: StoreWriter | None,
                 shard_ids: list[int], progress: bool = True, desc: str = "extract") -> dict:
    """Extract and write the given shards; writing of shard k overlaps the compute of shard k+1."""
    by_id = {s.id: s for s in plan.shards}
    total = sum(by_id[i].rows for i in shard_ids)
    done_main = set(writer.finished_shards())
    done_sent = set(sent_writer.finished_shards()) if sent_writer is not None else set()
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurolab-shard-writer")
    pending: Future | None = None
    words = 0
    try:
        with progress_bar(total, enabled=progress and extractor.progress, desc=desc) as bar:
            for i in shard_ids:
                res = extractor.extract_shard(plan, by_id[i], bar=bar)
                if pending is not None:
                    pending.result()

                def job(res=res, i=i):
                    if i not in done_main:
                        writer.write_shard(i, res.activations, res.sentence_ids, res.word_ids)
                    if sent_writer is not None and i not in done_sent:
                        sent_writer.write_shard(i, res.sentence_activations, res.sentence_row_ids,
                                                [0] * len(res.sentence_row_ids))

                pending = pool.submit(job)
                words += by_id[i].rows
            if pending is not None:
                pending.result()
    finally:
        pool.shutdown(wait=True)
    dt = time.perf_counter() - t0
    return {"rows": words, "seconds": dt, "words_per_s": words / dt if dt > 0 else 0.0, "shards": len(shard_ids)}


def extract_to_store(
    extractor: Extractor,
    corpus,
    path: str | Path,
    *,
    shard_size: int = 16384,
    overwrite: bool = False,
    model_identity: Mapping[str, Any] | None = None,
    plan: Plan | None = None,
    meta: Mapping[str, Any] | None = None,
) -> tuple[ActivationStore, dict]:
    """Single-process extraction of ``corpus`` into the store at ``path`` (resumes, reuses)."""
    from ..models.loading import model_identity as _mid

    path = Path(path)
    plan = plan or extractor.plan(corpus.words(), shard_size)
    ident = store_identity(extractor, plan, corpus, model_identity or _mid(extractor.model))
    with store_lock(path, overwrite):
        reused = complete_store(path, ident, extractor.site_names, extractor.units, extractor.dtype,
                                extractor.sentence_rows)
        if reused is not None and not overwrite:
            log.info("reusing the complete store %s (same model, corpus, sites and settings)", path)
            return reused, {"reused": 1, "rows": 0, "seconds": 0.0, "words_per_s": 0.0, "shards": 0, **plan.stats}
        writer, sent_writer = make_writers(extractor, path, ident, store_meta(extractor, plan, corpus, meta), overwrite)
        writer.open()
        if sent_writer is not None:
            sent_writer.open()
        todo = pending_shards(plan, writer, sent_writer)
        if len(todo) < len(plan.shards):
            log.info("resuming %s: %d of %d shards already written", path, len(plan.shards) - len(todo), len(plan.shards))
        stats = write_shards(extractor, plan, writer, sent_writer, todo)
        store = writer.finalize(len(plan.shards))
        if sent_writer is not None:
            sent_writer.finalize(len(plan.shards))
    stats.update(plan.stats, reused=0)
    return store, stats
