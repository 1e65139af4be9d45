"""UD English EWT: reader counts and a DataModule over a store of the whole file."""
from __future__ import annotations

import pytest

from neurolab.config import compose
from neurolab.corpus import load_corpus, read_conllu
from neurolab.data import build_datamodule
from tests.helpers.data import store_for


@pytest.mark.slow
def test_ewt_counts(ewt_dev, ewt_test):
    dev, test = read_conllu(ewt_dev), read_conllu(ewt_test)
    assert (len(dev), dev.num_words) == (2001, 25147)
    assert (len(test), test.num_words) == (2077, 25094)
    # multiword tokens are not words, and are counted
    assert dev.skipped.get("multiword_token_lines", 0) > 0
    # word lines in the file == words read
    lines = [ln for ln in open(ewt_dev, encoding="utf-8") if ln.strip() and not ln.startswith("#")]
    ids = [ln.split("\t", 1)[0] for ln in lines]
    assert sum(i.isdigit() for i in ids) == 25147


@pytest.mark.slow
def test_ewt_datamodule_upos_and_tense(ewt_dev, tmp_path):
    cfg = compose("probe", ["corpus=ewt_dev", f"corpus.path={ewt_dev}", f"store.dir={tmp_path / 's'}",
                            "data.memory_budget_mb=0"], run_dir=tmp_path / "run")
    corpus, splits = load_corpus(cfg.corpus)
    store_for(corpus, tmp_path / "s", sites={"embeddings": 16, "layers.0": 16}, shard_size=4096)
    dm = build_datamodule(cfg)
    dm.setup()
    assert len(dm.class_names) == 17 and dm.class_names == sorted(dm.class_names)
    total = sum(len(dm.row_ids(s)) for s in ("train", "dev", "test")) + dm.stats.get("unseen/dev", 0) + \
        dm.stats.get("unseen/test", 0)
    assert total + dm.stats["unlabelled"] == 25147
    n = sum(len(x) for x, _ in dm.train_dataloader())
    assert n == len(dm.row_ids("train"))
    cfg = compose("probe", ["corpus=ewt_dev", f"corpus.path={ewt_dev}", f"store.dir={tmp_path / 's'}",
                            "concept=feats.Tense"], run_dir=tmp_path / "run")
    dm = build_datamodule(cfg)
    assert set(dm.class_names) <= {"Past", "Pres", "Fut", "Imp", "Pqp"} and "Past" in dm.class_names
    ref = sum(1 for i in splits["train"] for f in corpus[i].annotations["feats"] if "Tense" in f)
    assert len(dm.row_ids("train")) == ref
