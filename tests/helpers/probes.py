"""Helpers for probe tests: a corpus whose store has a few planted neurons carrying the label."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from neurolab.corpus.types import Corpus, Sentence
from neurolab.store import write_store

TAGS = ["ADJ", "DET", "NOUN", "VERB"]
SITES = {"embeddings": 8, "layers.0": 8, "layers.1": 8}
# (site, unit) that carry the label: one neuron per class, plus noise everywhere
PLANTED = {"ADJ": ("layers.0", 5), "DET": ("layers.1", 2), "NOUN": ("embeddings", 6), "VERB": ("layers.1", 7)}


def planted_index(site: str, unit: int) -> int:
    starts = np.cumsum([0] + list(SITES.values()))
    return int(starts[list(SITES).index(site)] + unit)


def planted_corpus(num_sentences: int = 200, seed: int = 0, max_len: int = 8) -> Corpus:
    rng = np.random.default_rng(seed)
    sents = []
    for i in range(num_sentences):
        n = int(rng.integers(2, max_len + 1))
        tags = [TAGS[int(rng.integers(len(TAGS)))] for _ in range(n)]
        sents.append(Sentence(words=[f"w{int(rng.integers(50))}" for _ in range(n)],
                              annotations={"upos": tags}, source=f"mem:{i}"))
    return Corpus(sents, name="planted")


def planted_store(corpus: Corpus, path: Path, seed: int = 0, signal: float = 2.0, noise: float = 1.0):
    """Gaussian noise activations; the planted neuron of a word's tag gets ``+signal``."""
    rng = np.random.default_rng(seed)
    lens = [len(s.words) for s in corpus.sentences]
    sid = np.repeat(np.arange(len(lens)), lens)
    wid = np.concatenate([np.arange(n) for n in lens])
    tags = [t for s in corpus.sentences for t in s.annotations["upos"]]
    acts = {s: (rng.normal(size=(len(sid), u)) * noise).astype(np.float32) for s, u in SITES.items()}
    for r, t in enumerate(tags):
        site, unit = PLANTED[t]
        acts[site][r, unit] += signal
    return write_store(path, acts, sid, wid, dtype="fp32")


def planted_datamodule(tmp_path: Path, num_sentences: int = 200, seed: int = 0, **kw):
    from neurolab.corpus import split_sentences
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule

    corpus = planted_corpus(num_sentences, seed)
    store = planted_store(corpus, Path(tmp_path) / "store", seed)
    dm = ActivationDataModule(store, corpus, split_sentences(len(corpus)), ColumnConcept("upos"), seed=seed, **kw)
    dm.setup()
    return dm


def probe_cfg(run_dir, *overrides: str):
    from neurolab.config import compose

    return compose("probe", ["logger=none", "trainer.enable_progress_bar=false", *overrides], run_dir=run_dir)




def fit_method(dm, cfg):
    """The method of ``cfg.method`` (built through ``_target_``, as the CLI builds it) fitted on ``dm``
    with the run context of ``cfg``: returns ``(ranking, metrics, method)``."""
    from neurolab.methods import RunContext
    from neurolab.tasks.pipeline import build_method

    m = build_method(cfg.method).fit(dm, RunContext(cfg=cfg, seed=int(cfg.get("seed") or 0)))
    return m.ranking_, m.metrics_, m


def ewt_datamodule(ewt_dev, minilm_dir, store, run_dir, *overrides: str):
    """``(dm, cfg)``: EWT dev, the packaged MiniLM, all 7 hidden-state sites, UPOS, the default split,
    on the session's store (``ewt_store`` fixture: extracted by the first test that needs it)."""
    from neurolab.config import compose
    from neurolab.data import build_datamodule

    cfg = compose("probe", [f"corpus.path={ewt_dev}", "corpus.name=ewt_dev", f"model.name_or_path={minilm_dir}",
                            f"store.dir={store}", "sites=all_layers", "concept=upos", "logger=none",
                            "trainer.enable_progress_bar=false", "extract.progress=false", *overrides],
                  run_dir=run_dir)
    dm = build_datamodule(cfg)
    dm.setup()
    return dm, cfg
