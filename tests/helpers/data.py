"""Helpers for data tests: small corpora and stores built with ``write_store``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from neurolab.corpus.types import Corpus, Sentence
from neurolab.store import write_store

UPOS = ["NOUN", "VERB", "DET", "ADJ", "PUNCT"]


def random_corpus(num_sentences: int = 60, seed: int = 0, max_len: int = 9, vocab: int = 40,
                  missing: float = 0.05) -> Corpus:
    """Sentences of random words with ``upos`` / ``feats`` annotations (some ``_``)."""
    rng = np.random.default_rng(seed)
    sents = []
    for i in range(num_sentences):
        n = int(rng.integers(1, max_len + 1))
        words = [f"w{int(rng.integers(vocab))}" for _ in range(n)]
        upos = [UPOS[int(rng.integers(len(UPOS)))] if rng.random() > missing else "_" for _ in range(n)]
        feats = [({"Tense": "Past" if rng.random() < 0.5 else "Pres"} if u == "VERB" else {}) for u in upos]
        sents.append(Sentence(words=words, annotations={"upos": upos, "feats": feats}, source=f"mem:{i}"))
    return Corpus(sents, name="random")


def index_of(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    lens = [len(s.words) for s in corpus.sentences]
    sid = np.repeat(np.arange(len(lens)), lens)
    wid = np.concatenate([np.arange(n) for n in lens])
    return sid, wid


def store_for(corpus: Corpus, path: Path, sites: dict[str, int] | None = None, seed: int = 0, shard_size: int = 50,
              keep: np.ndarray | None = None, dtype: str = "fp32", fingerprint: bool = False, row_feature: bool = False):
    """A store over ``corpus`` with random activations (``row_feature``: column 0 of the first site
    holds the row number, to identify examples). ``keep``: boolean mask of the corpus words that get
    a row (then the store carries the corpus fingerprint so the join accepts it)."""
    sites = sites or {"embeddings": 6, "layers.0": 4, "layers.1": 5}
    sid, wid = index_of(corpus)
    if keep is not None:
        sid, wid = sid[keep], wid[keep]
        fingerprint = True
    rng = np.random.default_rng(seed)
    n = len(sid)
    acts = {}
    for k, (s, u) in enumerate(sites.items()):
        a = (rng.normal(size=(n, u)) * (k + 1) + k).astype(np.float32)
        if row_feature and k == 0:
            a[:, 0] = np.arange(n)
        acts[s] = a
    meta = {"corpus_fingerprint": corpus.fingerprint()} if fingerprint else {}
    store = write_store(path, acts, sid, wid, meta=meta, shard_size=shard_size, dtype=dtype)
    return store, acts
