"""Planted-signal data for evaluation tests: a few neurons carry the label, the rest are noise."""
from __future__ import annotations

import numpy as np

from neurolab.data import ArrayData


def planted_data(n: int = 3000, sites=("layers.0", "layers.1"), units: int = 20, planted=(3, 25, 31),
                 num_classes: int = 3, strength: float = 2.5, seed: int = 0) -> tuple[ArrayData, list[int]]:
    """``n`` rows; class j shifts planted neuron j by ``strength`` (and the others a little less).
    Columns are the concatenation of ``sites`` (``units`` each). Split 80/10/10 in row order. The
    control task's labels are drawn independently of the features (no probe beats the majority class)."""
    rng = np.random.default_rng(seed)
    F = units * len(sites)
    y = rng.integers(0, num_classes, size=n)
    X = rng.standard_normal((n, F)).astype(np.float32)
    for j, c in enumerate(planted):
        X[:, c] += strength * (y == (j % num_classes))
    yc = rng.integers(0, num_classes, size=n)  # control: independent of X
    a, b = int(0.8 * n), int(0.9 * n)
    cut = lambda v: {"train": v[:a], "val": v[a:b], "test": v[b:]}
    xs, ys, ycs = cut(X), cut(y), cut(yc)
    splits = {k: (xs[k], ys[k]) for k in xs}
    dm = ArrayData(splits, class_names=[f"c{i}" for i in range(num_classes)], sites=list(sites),
                   neurons_per_site={s: units for s in sites}, concept="planted", control=ycs)
    return dm, list(planted)





TAGS = {"NOUN": ["cat", "dog", "mat", "tree", "idea", "car"], "VERB": ["sat", "ran", "saw", "ate", "made"],
        "DET": ["the", "a", "this"], "ADJ": ["red", "big", "old", "new"]}
PLANTED_SITES = {"embeddings": 8, "layers.0": 8, "layers.1": 8}
PLANTED_UNITS = {"NOUN": ("layers.1", 1), "VERB": ("layers.1", 4), "DET": ("layers.0", 2), "ADJ": ("embeddings", 6)}


def write_tagged_conllu(path, num_sentences: int = 150, seed: int = 0, max_len: int = 8):
    """A small CoNLL-U file (ID, FORM, UPOS) of random sentences over a tiny tagged vocabulary."""
    from pathlib import Path

    rng = np.random.default_rng(seed)
    tags = list(TAGS)
    lines = []
    for i in range(num_sentences):
        n = int(rng.integers(2, max_len + 1))
        lines.append(f"# sent_id = s{i}")
        for j in range(n):
            t = tags[int(rng.integers(len(tags)))]
            w = TAGS[t][int(rng.integers(len(TAGS[t])))]
            lines.append("\t".join([str(j + 1), w, w, t, "_", "_", "0" if j == 0 else "1", "root" if j == 0 else "dep",
                                    "_", "_"]))
        lines.append("")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def planted_store(conllu, store_dir, seed: int = 0, signal: float = 3.0):
    """A ``write_store`` store over the words of ``conllu``: noise, plus ``signal`` on the unit of
    ``PLANTED_UNITS`` of each word's UPOS tag. Returns (store, planted column indices)."""
    from neurolab.corpus import read_conllu
    from neurolab.store import write_store

    corpus = read_conllu(conllu)
    rng = np.random.default_rng(seed)
    lens = [len(s.words) for s in corpus.sentences]
    sid = np.repeat(np.arange(len(lens)), lens)
    wid = np.concatenate([np.arange(n) for n in lens])
    tags = [t for s in corpus.sentences for t in s.annotations["upos"]]
    acts = {s: rng.standard_normal((len(sid), u)).astype(np.float32) for s, u in PLANTED_SITES.items()}
    for i, t in enumerate(tags):
        site, unit = PLANTED_UNITS[t]
        acts[site][i, unit] += signal
    starts = np.cumsum([0] + list(PLANTED_SITES.values()))
    names = list(PLANTED_SITES)
    planted = sorted(int(starts[names.index(s)] + u) for s, u in PLANTED_UNITS.values())
    store = write_store(store_dir, acts, sid, wid, meta={"model": "planted-test"})
    return store, planted
