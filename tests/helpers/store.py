"""Test helpers for stores: random activations and files in the older toolkit's (NeuroX) formats.

The NeuroX writers here are written from its documented format (``neurox.data.writer``), with h5py and
json directly, so importer tests do not depend on the importer's own code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np


def random_corpus_ids(rng: np.random.Generator, num_sentences: int, max_words: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """sentence_ids / word_ids of a random corpus (every sentence has 1..max_words words)."""
    lens = rng.integers(1, max_words + 1, size=num_sentences)
    sent = np.repeat(np.arange(num_sentences), lens)
    word = np.concatenate([np.arange(n) for n in lens])
    return sent.astype(np.int64), word.astype(np.int64)


def random_activations(rng: np.random.Generator, rows: int, widths: dict[str, int], scale: float = 3.0) -> dict[str, np.ndarray]:
    return {s: (rng.standard_normal((rows, w)) * scale).astype(np.float32) for s, w in widths.items()}


def random_sentences(rng: np.random.Generator, num: int, max_words: int = 9) -> list[list[str]]:
    vocab = ["the", "cat", "sat", "on", "a", "mat", "Paris", "1999", "\"quoted\"", "naïve", "don't", "?", "end."]
    return [[str(rng.choice(vocab)) for _ in range(int(rng.integers(1, max_words + 1)))] for _ in range(num)]


def write_sentence_file(path: Path, sentences: Sequence[Sequence[str]]) -> Path:
    path.write_text("".join(" ".join(ws) + "\n" for ws in sentences), encoding="utf-8")
    return path


def neurox_arrays(rng: np.random.Generator, sentences, layers: int, units: int) -> list[np.ndarray]:
    """One float32 [layers, words, units] array per sentence, like NeuroX's extractor output."""
    return [rng.standard_normal((layers, len(ws), units)).astype(np.float32) for ws in sentences]


def write_neurox_hdf5(path: Path, sentences, arrays: Sequence[np.ndarray], dtype: str = "float32") -> Path:
    """Write arrays in NeuroX 1.0.9's HDF5 layout: datasets "0".."N-1" + JSON ``sentence_to_index``."""
    import h5py

    index = {}
    with h5py.File(path, "w") as f:
        for i, (ws, a) in enumerate(zip(sentences, arrays)):
            f.create_dataset(str(i), a.shape, dtype=dtype, data=a)
            key, k = " ".join(ws), 1
            while key in index:
                k += 1
                key = f"{' '.join(ws)} (Occurrence {k})"
            index[key] = str(i)
        ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
        ds[0] = json.dumps(index)
    return path


def write_neurox_json(path: Path, sentences, arrays: Sequence[np.ndarray]) -> Path:
    """Write arrays in NeuroX 1.0.9's JSON-lines layout (values rounded to 8 decimals)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, (ws, a) in enumerate(zip(sentences, arrays)):
            feats = [
                {"token": w, "layers": [{"index": l, "values": [round(float(v), 8) for v in a[l, j]]} for l in range(a.shape[0])]}
                for j, w in enumerate(ws)
            ]
            f.write(json.dumps({"linex_index": i, "features": feats}) + "\n")
    return path


def flat_rows(arrays: Sequence[np.ndarray], layers: Sequence[int] | None = None) -> np.ndarray:
    """Concatenate per-sentence [layers, words, units] arrays into rows x (layers*units), layer-major columns."""
    out = []
    for a in arrays:
        if layers is not None:
            a = a[list(layers)]
        out.append(np.transpose(a, (1, 0, 2)).reshape(a.shape[1], a.shape[0] * a.shape[2]))
    return np.concatenate(out).astype(np.float32)


# -- a writer process that tests kill with SIGKILL -------------------------------------------------
KILL_SHARDS, KILL_ROWS, KILL_UNITS = 12, 400, {"layers.0": 48, "layers.0.mlp": 96}


def kill_shard_data(i: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Deterministic content of shard ``i`` of the kill test (sentences of 4 words)."""
    rng = np.random.default_rng(1000 + i)
    acts = {s: rng.standard_normal((KILL_ROWS, w)).astype(np.float32) for s, w in KILL_UNITS.items()}
    rows = np.arange(i * KILL_ROWS, (i + 1) * KILL_ROWS)
    return acts, rows // 4, rows % 4


def run_kill_writer(path: str, pause_after_files: int = -1, marker: str | None = None) -> None:
    """Write (or resume) the kill-test store; optionally sleep forever after N data files are written."""
    import time

    import neurolab.store.store as store_mod
    from neurolab.store import StoreWriter

    if pause_after_files >= 0:
        real, count = store_mod.write_npy, [0]

        def slow_write_npy(p, a):
            digest = real(p, a)
            count[0] += 1
            if count[0] == pause_after_files:
                tmp = Path(str(marker) + ".part")  # written whole, then renamed: the test never reads it half-written
                tmp.write_text(str(p))
                tmp.replace(marker)
                time.sleep(600)
            return digest

        store_mod.write_npy = slow_write_npy
    w = StoreWriter(
        path, sites=list(KILL_UNITS), neurons_per_site=KILL_UNITS, dtype="fp16",
        identity={"model": "kill-test", "corpus_fingerprint": "f00"}, meta={"note": "kill test"},
    ).open()
    done = w.finished_shards()
    for i in range(KILL_SHARDS):
        if i not in done:
            acts, sent, word = kill_shard_data(i)
            w.write_shard(i, acts, sent, word)
    w.finalize(KILL_SHARDS)


if __name__ == "__main__":  # python -m tests.helpers.store PATH [PAUSE_AFTER_FILES MARKER]
    import sys

    a = sys.argv[1:]
    run_kill_writer(a[0], int(a[1]) if len(a) > 1 else -1, a[2] if len(a) > 2 else None)
