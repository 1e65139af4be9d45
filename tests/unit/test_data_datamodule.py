"""ActivationDataModule against references computed another way (brute force, numpy)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from neurolab.corpus import split_sentences
from neurolab.corpus.concepts import ColumnConcept, FunctionConcept, SentenceLengthConcept
from neurolab.corpus.types import Corpus, Sentence
from neurolab.data import ActivationDataModule, build_datamodule, make_plan, select_sites
from neurolab.errors import ConfigError, NeurolabError
from neurolab.store import StoreMismatchError
from tests.helpers.data import index_of, random_corpus, store_for

SITES = ["embeddings", "layers.0", "layers.1"]


@pytest.fixture(scope="module")
def setup_small(tmp_path_factory):
    corpus = random_corpus(80, seed=1)
    store, acts = store_for(corpus, tmp_path_factory.mktemp("s") / "store", row_feature=True)
    splits = split_sentences(len(corpus), shuffle=True, seed=3)
    return corpus, store, acts, splits


def brute_force(corpus, acts, splits, split, concept, sites=SITES):
    """Python loops over (sentence, word): the expected rows, features and labels."""
    full = np.concatenate([acts[s] for s in sites], axis=1)
    labels = concept.labels(corpus)
    train = set(int(i) for i in splits["train"])
    classes = sorted({labels[i][j] for i in train for j in range(len(labels[i])) if labels[i][j] is not None})
    members = set(int(i) for i in splits[split])
    rows, X, y, row = [], [], [], 0
    for i, s in enumerate(corpus.sentences):
        for j in range(len(s.words)):
            lab = labels[i][j]
            if i in members and lab is not None and lab in classes:
                rows.append(row)
                X.append(full[row])
                y.append(classes.index(lab))
            row += 1
    return np.array(rows), np.array(X), np.array(y), classes


@pytest.mark.parametrize("budget", [2048, 0])
def test_join_equals_brute_force(setup_small, budget):
    corpus, store, acts, splits = setup_small
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), normalize="none", memory_budget_mb=budget)
    dm.setup()
    assert dm.in_memory == (budget > 0)
    for split in ("train", "dev", "test"):
        rows, X, y, classes = brute_force(corpus, acts, splits, split, ColumnConcept("upos"))
        assert dm.class_names == classes
        np.testing.assert_array_equal(dm.row_ids(split), rows)
        Xd, yd = dm.arrays(split)
        np.testing.assert_array_equal(yd, y)
        np.testing.assert_array_equal(Xd, X.astype(np.float32))
    n_missing = sum(1 for s in corpus.sentences for u in s.annotations["upos"] if u == "_")
    assert dm.stats["unlabelled"] == n_missing > 0


def test_join_with_missing_store_rows(tmp_path):
    corpus = random_corpus(30, seed=2, missing=0.0)
    sid, _ = index_of(corpus)
    keep = np.random.default_rng(0).random(len(sid)) > 0.2
    store, acts = store_for(corpus, tmp_path / "s", keep=keep)
    splits = split_sentences(len(corpus))
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), normalize="none")
    dm.setup()
    assert dm.stats["missing_rows"] == int((~keep).sum())
    # brute force: store row of every kept word in order
    full = np.concatenate([acts[s] for s in SITES], axis=1)
    row_of, r = {}, 0
    for k, (i, j) in enumerate(zip(*index_of(corpus))):
        if keep[k]:
            row_of[(int(i), int(j))] = r
            r += 1
    sents, words = dm.example_ids("test")
    exp = [row_of[(int(i), int(j))] for i, j in zip(sents, words)]
    np.testing.assert_array_equal(dm.row_ids("test"), exp)
    np.testing.assert_array_equal(dm.arrays("test")[0], full[exp])


@pytest.mark.parametrize("budget", [2048, 0])
def test_zscore_equals_numpy(setup_small, budget):
    corpus, store, acts, splits = setup_small
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=budget, chunk_rows=37,
                              batch_size=50)
    dm.setup()
    rows_tr, Xtr, _, _ = brute_force(corpus, acts, splits, "train", ColumnConcept("upos"))
    mu, sd = Xtr.astype(np.float64).mean(0), Xtr.astype(np.float64).std(0)
    sd[sd == 0] = 1.0
    rows_te, Xte, yte, _ = brute_force(corpus, acts, splits, "test", ColumnConcept("upos"))
    np.testing.assert_allclose(dm.arrays("test")[0], (Xte - mu) / sd, rtol=1e-5, atol=1e-5)
    # batches of the test loader (no shuffle) are the same standardised rows in order
    xs = torch.cat([x for x, _ in dm.test_dataloader()]).numpy()
    np.testing.assert_allclose(xs, (Xte - mu) / sd, rtol=1e-5, atol=1e-5)
    # training batches: standardised with training statistics, as a multiset of rows
    xb = torch.cat([x for x, _ in dm.train_dataloader()]).numpy()
    ref = (Xtr - mu) / sd
    np.testing.assert_allclose(np.sort(xb, axis=0), np.sort(ref, axis=0), rtol=1e-5, atol=1e-5)


def _epoch_examples(dm, split="train", loader=None):
    loader = loader or dm.train_dataloader()
    ids, ys = [], []
    for x, y in loader:
        ids.append(x[:, 0].numpy())
        ys.append(y.numpy())
    return np.concatenate(ids).round().astype(np.int64), np.concatenate(ys)


def test_streaming_and_memory_same_multiset(setup_small):
    corpus, store, acts, splits = setup_small
    kw = dict(normalize="none", batch_size=16, chunk_rows=40, seed=5)
    mem = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=100, **kw)
    stream = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=0, **kw)
    workers = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=0, num_workers=2, **kw)
    expected = sorted(mem.row_ids("train").tolist())
    results = []
    for dm in (mem, stream, workers):
        dm.setup()
        loader = dm.train_dataloader()
        ep0 = _epoch_examples(dm, loader=loader)
        ep1 = _epoch_examples(dm, loader=loader)
        for ids, ys in (ep0, ep1):
            assert sorted(ids.tolist()) == expected
            # labels travel with their rows
            lab = dict(zip(dm.row_ids("train").tolist(), dm.targets("train").tolist()))
            assert all(lab[i] == y for i, y in zip(ids.tolist(), ys.tolist()))
        assert ep0[0].tolist() != ep1[0].tolist()  # reshuffled each epoch
        assert len(loader) == -(-len(expected) // 16)
        results.append((ep0[0], ep1[0]))
    # same seed and epoch: the same order in memory and streaming (workers interleave units)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert sorted(results[2][0].tolist()) == sorted(results[0][0].tolist())


@pytest.mark.parametrize("n,B,world", [(1000, 64, 2), (1001, 64, 2), (1025, 512, 2), (7, 3, 3), (130, 64, 2),
                                       (129, 64, 2), (5, 1, 2), (97, 10, 4)])
def test_plan_ddp_disjoint_equal_batches(n, B, world):
    from neurolab.data.plan import chunk_ids

    chunks = chunk_ids(np.ones(n, np.int64), 17)
    plans = [make_plan(chunks, B, shuffle=True, seed=1, epoch=2, rank=r, world=world) for r in range(world)]
    nbs = {p.num_batches for p in plans}
    assert len(nbs) == 1
    seen = np.concatenate([p.order for p in plans])
    if B > 1:
        assert len(seen) == n and sorted(seen.tolist()) == list(range(n))
    else:
        assert set(seen.tolist()) == set(range(n))
    sizes = [len(p.order) for p in plans]
    assert max(sizes) - min(sizes) <= 1
    for p in plans:
        assert all(1 <= b <= B for b in np.diff(p.batches))
        assert p.units[0] == 0 and p.units[-1] == p.num_batches


def test_sites_and_neurons(setup_small):
    corpus, store, acts, splits = setup_small
    assert select_sites(store.sites, "all_layers") == SITES
    assert select_sites(store.sites, "layers.0-1") == ["layers.0", "layers.1"]
    assert select_sites(store.sites, ["layers.1", "embeddings"]) == ["layers.1", "embeddings"]
    with pytest.raises(ConfigError, match="layers.7"):
        select_sites(store.sites, "layers.7")
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), sites="layers", normalize="none")
    dm.setup()
    assert dm.sites == ["layers.0", "layers.1"] and dm.num_features == 9
    full = np.concatenate([acts["layers.0"], acts["layers.1"]], axis=1)
    np.testing.assert_array_equal(dm.arrays("dev")[0], full[dm.row_ids("dev")])
    dm2 = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), sites="layers", neurons=[8, 0, 5],
                               normalize="none", memory_budget_mb=0)
    np.testing.assert_array_equal(dm2.arrays("dev")[0], full[dm.row_ids("dev")][:, [8, 0, 5]])


@pytest.mark.parametrize("budget", [2048, 0])
def test_subset_keeps_labels_and_normalisation(setup_small, budget):
    corpus, store, acts, splits = setup_small
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=budget)
    X, y = dm.arrays("test")
    sub = dm.subset([14, 2, 7])
    Xs, ys = sub.arrays("test")
    np.testing.assert_allclose(Xs, X[:, [14, 2, 7]], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ys, y)
    assert sub.num_features == 3 and list(sub.columns) == [14, 2, 7] and sub.class_names == dm.class_names
    xb = torch.cat([x for x, _ in sub.test_dataloader()]).numpy()
    np.testing.assert_allclose(xb, Xs, rtol=1e-6, atol=1e-6)
    sub2 = sub.subset([7])
    np.testing.assert_allclose(sub2.arrays("test")[0][:, 0], X[:, 7], rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="not among"):
        sub.subset([3])


def test_with_control(setup_small):
    corpus, store, acts, splits = setup_small
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"))
    ctl = dm.with_control()
    assert ctl.class_names == dm.class_names
    for split in ("train", "test"):
        np.testing.assert_array_equal(ctl.row_ids(split), dm.row_ids(split))
        s, w = ctl.example_ids(split)
        by_type: dict[str, set] = {}
        for i, j, lab in zip(s, w, ctl.targets(split)):
            by_type.setdefault(corpus.sentences[i].words[j], set()).add(int(lab))
        assert all(len(v) == 1 for v in by_type.values())
    np.testing.assert_array_equal(ctl.arrays("dev")[0], dm.arrays("dev")[0])
    assert not np.array_equal(ctl.targets("train"), dm.targets("train"))
    dm_c = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), control=True)
    np.testing.assert_array_equal(dm_c.targets("train"), ctl.targets("train"))


def test_balance(setup_small):
    corpus, store, acts, splits = setup_small
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), balance="undersample", seed=4)
    c = np.bincount(dm.targets("train"))
    assert len(set(c.tolist())) == 1
    assert dm.stats["dropped/undersample"] > 0
    X, y = dm.arrays("train")
    full = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), normalize="none")
    Xf = dict(zip(full.row_ids("train").tolist(), full.arrays("train")[0]))
    raw = (X * dm.std_ + dm.mean_).astype(np.float32)
    np.testing.assert_allclose(raw, np.stack([Xf[r] for r in dm.row_ids("train").tolist()]), rtol=1e-4, atol=1e-4)
    dw = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), balance="class_weights")
    counts = np.bincount(dw.targets("train"), minlength=dw.num_classes)
    w = dw.class_weights.numpy()
    np.testing.assert_allclose(w, len(dw.targets("train")) / (len(counts) * counts), rtol=1e-6)


def test_sentence_level_mean_pooling(setup_small):
    corpus, store, acts, splits = setup_small
    concept = SentenceLengthConcept(bands=[3, 6])
    for budget in (100, 0):
        dm = ActivationDataModule(store, corpus, splits, concept, normalize="none", memory_budget_mb=budget)
        X, y = dm.arrays("test")
        full = np.concatenate([acts[s] for s in SITES], axis=1)
        sid, _ = index_of(corpus)
        test = np.sort(splits["test"])
        ref = np.stack([full[sid == i].mean(0) for i in test])
        np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-5)
        labs = concept.labels(corpus)
        assert [dm.class_names[k] for k in y] == [labs[i] for i in test]
        xb = torch.cat([x for x, _ in dm.train_dataloader()])
        assert xb.shape[0] == len(splits["train"])


def test_regression_targets(setup_small):
    corpus, store, acts, splits = setup_small
    concept = FunctionConcept(lambda s, i: float(i), task="regression", name="pos")
    dm = ActivationDataModule(store, corpus, splits, concept, memory_budget_mb=0, batch_size=32)
    assert dm.task == "regression" and dm.num_classes == 1
    _, w = dm.example_ids("dev")
    np.testing.assert_array_equal(dm.targets("dev"), w.astype(np.float32))
    x, y = next(iter(dm.val_dataloader()))
    assert y.dtype == torch.float32 and x.dtype == torch.float32


# -- bad input ----------------------------------------------------------------------------------------
def test_store_from_another_corpus_is_refused(setup_small, tmp_path):
    corpus, store, acts, splits = setup_small
    other = random_corpus(80, seed=9)
    with pytest.raises(StoreMismatchError) as e:
        ActivationDataModule(store, other, splits, ColumnConcept("upos")).setup()
    assert str(store.path) in str(e.value) and "random" in str(e.value)
    fp_store, _ = store_for(corpus, tmp_path / "fp", fingerprint=True)
    changed = Corpus([Sentence(list(s.words), dict(s.annotations)) for s in corpus.sentences], name="changed")
    changed.sentences[3].words[0] = "zzz"
    with pytest.raises(StoreMismatchError, match="fingerprint") as e:
        ActivationDataModule(fp_store, changed, splits, ColumnConcept("upos")).setup()
    assert "changed" in str(e.value) and str(fp_store.path) in str(e.value)


def test_missing_column_and_attribute(setup_small):
    corpus, store, acts, splits = setup_small
    with pytest.raises(NeurolabError, match=r"no column 'xpos'.*upos"):
        ActivationDataModule(store, corpus, splits, ColumnConcept("xpos")).setup()
    with pytest.raises(NeurolabError, match=r"'Mood'.*Tense"):
        ActivationDataModule(store, corpus, splits, ColumnConcept("feats", attribute="Mood")).setup()


def test_single_class_and_empty_split(setup_small):
    corpus, store, acts, splits = setup_small
    one = FunctionConcept(lambda s, i: "A", name="const")
    with pytest.raises(ConfigError, match="single class"):
        ActivationDataModule(store, corpus, splits, one).setup()
    empty = dict(splits, dev=np.zeros(0, np.int64))
    with pytest.raises(ConfigError, match="split dev"):
        ActivationDataModule(store, corpus, empty, ColumnConcept("upos")).setup()


def test_unseen_label_policies(setup_small):
    corpus, store, acts, splits = setup_small
    train = set(splits["train"].tolist())
    # a label that only occurs outside training
    concept = FunctionConcept(lambda s, i: "RARE" if (i == 0 and s.source not in tr_src) else s.annotations["upos"][i]
                              if s.annotations["upos"][i] != "_" else None, name="u")
    tr_src = {corpus.sentences[i].source for i in train}
    dm = ActivationDataModule(store, corpus, splits, concept)
    dm.setup()
    n_test = sum(1 for i in splits["test"])
    assert dm.stats["unseen/test"] == n_test and "RARE" not in dm.class_names
    with pytest.raises(ConfigError, match="RARE"):
        ActivationDataModule(store, corpus, splits, concept, unseen_labels="error").setup()
    dmo = ActivationDataModule(store, corpus, splits, concept, unseen_labels="other")
    assert "__other__" in dmo.class_names
    assert int((dmo.targets("test") == dmo.class_names.index("__other__")).sum()) == n_test


def test_build_datamodule_from_config(tmp_path, demo_conllu):
    from neurolab.config import compose
    from neurolab.corpus import read_conllu

    corpus = read_conllu(demo_conllu)
    store, acts = store_for(corpus, tmp_path / "store", shard_size=1000)
    cfg = compose("probe", [f"store.dir={tmp_path / 'store'}", "concept=xpos", "data.memory_budget_mb=0",
                            "data.batch_size=100", "sites=layers"], run_dir=tmp_path / "run")
    dm = build_datamodule(cfg)
    dm.setup()
    assert dm.sites == ["layers.0", "layers.1"] and dm.batch_size == 100 and not dm.in_memory
    assert dm.concept.name == "xpos" and dm.class_names == sorted(dm.class_names)
    cfg = compose("probe", [f"store.dir={tmp_path / 'store'}", "concept.value=NOUN"], run_dir=tmp_path / "run")
    dm = build_datamodule(cfg, memory_budget_mb=10)
    assert dm.class_names == ["NOUN", "rest"] and dm.in_memory


def test_lightning_fit_uses_the_datamodule(setup_small, tmp_path):
    """A real Trainer.fit over the DataModule (streaming): epochs see the whole split, reshuffled."""
    import pytorch_lightning as pl

    corpus, store, acts, splits = setup_small
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=0, batch_size=40,
                              chunk_rows=64)
    seen: list[list[int]] = []

    class Probe(pl.LightningModule):
        def __init__(self, f, c):
            super().__init__()
            self.lin = torch.nn.Linear(f, c)

        def on_train_epoch_start(self):
            seen.append([])

        def training_step(self, batch, i):
            x, y = batch
            seen[-1].extend(y.tolist())
            return torch.nn.functional.cross_entropy(self.lin(x), y)

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val/loss", torch.nn.functional.cross_entropy(self.lin(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm.setup()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Probe(dm.num_features, dm.num_classes), datamodule=dm)
    assert len(seen) == 2
    for ep in seen:
        assert sorted(ep) == sorted(dm.targets("train").tolist())
    assert seen[0] != seen[1]


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_reader_matches_store_read_for_every_dtype(tmp_path, dtype):
    """RowReader (pread) against the store's own memory-mapped read, sparse and dense rows, column subsets."""
    from neurolab.data import RowReader

    corpus = random_corpus(40, seed=5)
    store, _ = store_for(corpus, tmp_path / "s", dtype=dtype, shard_size=33)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(store.num_tokens, size=store.num_tokens // 3, replace=False))
    for cols in (None, np.array([14, 0, 3, 9, 10]), np.arange(6, 10)):
        r = RowReader(store, SITES, cols)
        ref = store.read(rows, SITES)
        ref = ref if cols is None else ref[:, cols]
        np.testing.assert_array_equal(r.read_rows(rows), ref)
        np.testing.assert_array_equal(r.read_range(5, 120), store.read(slice(5, 120), SITES)[:, cols if cols is not None else slice(None)])


def test_chunk_mb_caps_the_rows_of_a_block_for_wide_stores(setup_small):
    """``data.chunk_mb`` bounds a block's float32 bytes: ``chunk_rows`` rows of F features, or fewer
    (at least 256) when they would take more; the examples are the same either way."""
    corpus, store, acts, splits = setup_small
    F = sum(a.shape[1] for a in acts.values())
    wide = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), chunk_rows=8192,
                                chunk_mb=300 * 4 * F / 2**20, memory_budget_mb=0)
    wide.setup()
    assert wide.chunk_rows == 300
    floor = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), chunk_rows=8192, chunk_mb=1e-6)
    floor.setup()
    assert floor.chunk_rows == 256
    plain = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), chunk_rows=8192, chunk_mb=0)
    plain.setup()
    assert plain.chunk_rows == 8192
    np.testing.assert_array_equal(np.sort(wide.row_ids("train")), np.sort(plain.row_ids("train")))
    seen = np.concatenate([y.numpy() for _, y in wide.train_dataloader()])
    assert len(seen) == len(plain.targets("train"))


def test_eval_chunk_rows_bounds_streamed_dev_and_test_blocks(setup_small):
    """Streamed dev / test reads come in blocks of at most ``data.eval_chunk_rows`` (loaders, evaluation
    batches and ``iter_chunks``) with the same rows as held in memory; training blocks keep
    ``chunk_rows``, and rows held in memory keep the batch size asked for."""
    corpus, store, acts, splits = setup_small
    kw = dict(chunk_rows=1000, chunk_mb=0, eval_batch_size=4096)
    streamed = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=0,
                                    eval_chunk_rows=7, **kw)
    held = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), eval_chunk_rows=7, **kw)
    streamed.setup(), held.setup()
    assert streamed.eval_block_rows == 7
    for split in ("val", "test"):
        X, y = held.arrays(split)
        assert len(y) > 7
        blocks = list(streamed.iter_chunks(split))
        assert max(len(b[1]) for b in blocks) == 7
        np.testing.assert_allclose(np.concatenate([b[0] for b in blocks]), X, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), y)
        batches = list(streamed.eval_batches(split))
        assert max(len(b[1]) for b in batches) == 7 and sum(len(b[1]) for b in batches) == len(y)
        assert max(len(b[1]) for b in held.eval_batches(split)) == len(y)  # in memory: one batch of 4096
    assert max(len(b[1]) for b in streamed.val_dataloader()) == 7
    assert max(len(b[1]) for b in streamed.iter_chunks("train")) > 7
    plain = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=0,
                                 eval_chunk_rows=0, **kw)
    plain.setup()
    assert plain.eval_block_rows == 1000
