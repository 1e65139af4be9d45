"""Rows held in the store's element type (fp16 / bf16 / fp32), normalised batch by batch.

References: the store's own float32 read (``store.read``), numpy normalisation of a float32 copy,
and TensorBatches over pre-normalised float32 tensors (the batches before rows were kept narrow).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolab.corpus import split_sentences
from neurolab.corpus.concepts import ColumnConcept
from neurolab.data import ActivationDataModule
from neurolab.data.reader import RowReader, raw_to_float32
from neurolab.data.batches import TensorBatches
from neurolab.store.format import from_storage
from tests.helpers.data import random_corpus, store_for

SITES = ["embeddings", "layers.0", "layers.1"]


@pytest.fixture(scope="module", params=["fp16", "bf16", "fp32"])
def typed(request, tmp_path_factory):
    corpus = random_corpus(60, seed=4)
    store, acts = store_for(corpus, tmp_path_factory.mktemp(request.param) / "store", dtype=request.param,
                            shard_size=20)
    return request.param, corpus, store, acts


def _stored(store, sites=SITES) -> np.ndarray:
    """All rows as float32, read by the store itself (``ActivationStore.read``)."""
    return store.read(slice(0, store.num_tokens), sites)


def test_reader_raw_out_and_pieces(typed):
    dtype, _, store, _ = typed
    full = _stored(store)
    rows = np.sort(np.random.default_rng(0).choice(len(full), size=len(full) // 2, replace=False))
    cols = np.array([10, 0, 3, 4, 5, 6, 14, 2])  # a site in order, others picked and permuted
    for columns in (None, cols):
        want = full[rows] if columns is None else full[rows][:, columns]
        for max_read in (1 << 21, 64):  # one read per run, or many small pieces per run
            rd = RowReader(store, SITES, columns, max_read_bytes=max_read)
            np.testing.assert_array_equal(rd.read_rows(rows), want)
            raw = rd.read_rows(rows, raw=True)
            assert raw.dtype == {"fp16": np.float16, "bf16": np.uint16, "fp32": np.float32}[dtype]
            np.testing.assert_array_equal(raw_to_float32(raw, dtype), want)
            out = np.full_like(raw, 7)
            assert rd.read_rows(rows, out=out, raw=True) is out
            np.testing.assert_array_equal(out, raw)
            with pytest.raises(ValueError):
                rd.read_rows(rows, out=np.empty((len(rows), rd.num_features), np.float64))
    if dtype == "bf16":
        np.testing.assert_array_equal(raw_to_float32(raw, "bf16"), from_storage(raw, "bf16"))


def test_memory_held_in_store_type_and_normalised_like_float32(typed):
    dtype, corpus, store, _ = typed
    splits = split_sentences(len(corpus), shuffle=True, seed=1)
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), batch_size=7)
    dm.setup()
    assert dm.in_memory
    itemsize = 4 if dtype == "fp32" else 2
    n = sum(len(dm.row_ids(s)) for s in ("train", "dev", "test"))
    assert dm.stats["bytes_selected"] == n * dm.num_features * itemsize
    full = _stored(store)
    Xtr = full[dm.row_ids("train")]
    mean = Xtr.astype(np.float64).mean(axis=0)
    std = Xtr.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(dm.mean_, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dm.std_, std, rtol=1e-6)  # squares are taken in float32
    m32, s32 = dm.mean_.astype(np.float32), dm.std_.astype(np.float32)
    mean_t, std_t = dm.norm_tensors()
    for split in ("train", "dev", "test"):
        ref = full[dm.row_ids(split)]  # float32 copy, normalised in place as the module used to
        ref -= m32
        ref /= s32
        X, y = dm.arrays(split)
        np.testing.assert_array_equal(X, ref)
        x, yt = dm.tensors(split)
        assert x.element_size() == itemsize and x.shape == ref.shape
        np.testing.assert_array_equal(((x.float() - mean_t) / std_t).numpy(), ref)
        np.testing.assert_array_equal(yt.numpy(), y)
        chunks = list(dm.iter_chunks(split, chunk_rows=5))
        np.testing.assert_array_equal(np.concatenate([c for c, _ in chunks]), ref)
    # the module's loaders see the same normalised rows (in memory and streamed)
    for budget in (2048, 0):
        d = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), batch_size=7, memory_budget_mb=budget)
        got = np.concatenate([xb.numpy() for xb, _ in d.val_dataloader()])
        ref = full[d.row_ids("val")]
        ref -= m32
        ref /= s32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 if budget == 0 else 0)


@pytest.mark.parametrize("world", [1, 2])
def test_tensor_batches_normalised_on_the_fly_equal_float32_batches(world):
    rng = np.random.default_rng(3)
    raw = (rng.normal(size=(301, 9)) * 3 + 1).astype(np.float16)
    y = torch.from_numpy(rng.integers(0, 3, size=301))
    m32 = raw.astype(np.float32).mean(axis=0)
    s32 = raw.astype(np.float32).std(axis=0) + np.float32(0.1)
    ref = raw.astype(np.float32)
    ref -= m32
    ref /= s32
    for shuffle in (True, False):
        for rank in range(world):
            kw = dict(shuffle=shuffle, seed=5, epoch_fn=lambda: 2, rank=rank, world=world)
            old = list(TensorBatches(torch.from_numpy(ref), y, 64, **kw))
            new = list(TensorBatches(torch.from_numpy(raw), y, 64, norm=(torch.from_numpy(m32), torch.from_numpy(s32)), **kw))
            assert len(old) == len(new) > 1
            for (xo, yo, no), (xn, yn, nn) in zip(old, new):
                assert xn.dtype == torch.float32 and no == nn
                assert torch.equal(xo, xn) and torch.equal(yo, yn)
    # without a normalisation the rows come as held (a probe bank converts them itself)
    xb, _, _ = next(iter(TensorBatches(torch.from_numpy(raw), y, 64, shuffle=True)))
    assert xb.dtype == torch.float16


def test_streamed_batches_release_rows_and_match_memory(typed):
    _, corpus, store, _ = typed
    splits = split_sentences(len(corpus), shuffle=True, seed=2)
    kw = dict(batch_size=16, chunk_rows=40, seed=3)
    mem = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=2048, **kw)
    st = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), memory_budget_mb=0, **kw)
    a = [(x.numpy(), y.numpy()) for x, y in mem.train_dataloader()]
    b = [(x.numpy(), y.numpy()) for x, y in st.train_dataloader()]
    assert [len(y) for _, y in a] == [len(y) for _, y in b]
    for (xa, ya), (xb, yb) in zip(a, b):  # same plan; streamed rows scale by 1/std (within a rounding)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_allclose(xa, xb, rtol=1e-6, atol=1e-6)
