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

from omegaconf import DictConfig

from ..extraction.build import build_extractor, extract_store, resolve_store_dir
from .common import task

__all__ = ["extract", "extract_store", "build_extractor", "resolve_store_dir"]

log = logging.getLogger(__name__)


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
