"""Reads from a store equal the numpy arrays it was built from (slices, index arrays, site subsets)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolab.store import ActivationStore, write_store
from tests.helpers.store import random_activations, random_corpus_ids

WIDTHS = {"embeddings": 5, "layers.0": 7, "layers.0.mlp": 11, "layers.1": 3}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    sent, word = random_corpus_ids(rng, 30)
    acts = random_activations(rng, len(sent), WIDTHS)
    return acts, sent, word


@pytest.fixture(scope="module")
def stores(data, tmp_path_factory):
    """The same data as one shard, as shards of 7 rows and as shards of 1 row."""
    acts, sent, word = data
    base = tmp_path_factory.mktemp("stores")
    return {
        size: write_store(base / f"s{size}", acts, sent, word, {"model": "synthetic"}, dtype="fp32", shard_size=size)
        for size in (100000, 7, 2)
    }


def ref(acts, rows, sites=None):
    sites = list(acts) if sites is None else sites
    return np.concatenate([acts[s][rows] for s in sites], axis=1)


def test_metadata(stores, data):
    acts, sent, word = data
    s = ActivationStore.open(stores[7].path)
    assert s.sites == list(WIDTHS)
    assert s.neurons_per_site == WIDTHS
    assert s.num_tokens == len(sent) == len(s)
    assert len(s.shards) == -(-len(sent) // 7)
    np.testing.assert_array_equal(s.sentence_ids, sent)
    np.testing.assert_array_equal(s.word_ids, word)
    assert s.num_sentences == 30
    assert s.column_ranges(["layers.1", "embeddings"]) == {"layers.1": (0, 3), "embeddings": (3, 8)}
    assert s.neuron_names(["layers.1"]) == ["layers.1:0", "layers.1:1", "layers.1:2"]
    assert s.num_neurons() == sum(WIDTHS.values())


@pytest.mark.parametrize("size", [100000, 7, 2])
@pytest.mark.parametrize(
    "rows", [slice(None), slice(0, 1), slice(5, 23), slice(6, 8), slice(-9, None), slice(3, 3), slice(20, 10), slice(1, 30, 4)]
)
@pytest.mark.parametrize("sites", [None, ["layers.0.mlp"], ["layers.1", "embeddings"], ["layers.0", "layers.0"]])
def test_fp32_slices_exact(stores, data, size, rows, sites):
    acts = data[0]
    got = stores[size].read(rows, sites)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref(acts, rows, sites))


@pytest.mark.parametrize("size", [100000, 7, 2])
@pytest.mark.parametrize("kind", ["list", "int32", "int64", "reversed", "repeats", "empty", "single"])
def test_fp32_index_arrays_exact(stores, data, size, kind):
    acts, sent, _ = data
    n = len(sent)
    rng = np.random.default_rng(1)
    idx = {
        "list": [int(i) for i in rng.integers(0, n, 17)],
        "int32": rng.permutation(n).astype(np.int32),
        "int64": rng.integers(0, n, 50),
        "reversed": np.arange(n)[::-1],
        "repeats": np.array([3, 3, 3, n - 1, 0, n - 1, 3]),
        "empty": np.zeros(0, dtype=np.int64),
        "single": np.array([n // 2]),
    }[kind]
    got = stores[size].read(idx, ["layers.0.mlp", "embeddings"])
    np.testing.assert_array_equal(got, ref(acts, np.asarray(idx, dtype=np.int64), ["layers.0.mlp", "embeddings"]))


def test_read_returns_a_fresh_writable_array(stores, data):
    s = stores[7]
    a = s.read(slice(0, 5))
    a[:] = 123.0  # must not touch the store or its memory maps
    np.testing.assert_array_equal(s.read(slice(0, 5)), ref(data[0], slice(0, 5)))


def test_many_small_shards_equal_one_shard(stores):
    one, seven, single = stores[100000], stores[7], stores[2]
    rng = np.random.default_rng(2)
    idx = rng.integers(0, one.num_tokens, 200)
    for rows in (slice(None), slice(13, 101), idx):
        a = one.read(rows)
        np.testing.assert_array_equal(a, seven.read(rows))
        np.testing.assert_array_equal(a, single.read(rows))


def test_out_of_range_and_unknown_site(stores):
    s = stores[7]
    with pytest.raises(IndexError):
        s.read([s.num_tokens])
    with pytest.raises(IndexError):
        s.read([-1])
    from neurolab.store import StoreError

    with pytest.raises(StoreError, match="layers.9"):
        s.read(slice(0, 2), ["layers.9"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_index_arrays_across_shards(stores, data, draw):
    acts, sent, _ = data
    n = len(sent)
    idx = draw.draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=80))
    sites = draw.draw(st.lists(st.sampled_from(list(WIDTHS)), min_size=1, max_size=4))
    size = draw.draw(st.sampled_from([100000, 7, 2]))
    got = stores[size].read(np.asarray(idx, dtype=np.int64), sites)
    np.testing.assert_array_equal(got, ref(acts, np.asarray(idx, dtype=np.int64), sites))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 200), st.integers(0, 200))
def test_random_slices_across_shards(stores, data, a, b):
    acts = data[0]
    np.testing.assert_array_equal(stores[7].read(slice(a, b)), ref(acts, slice(a, b)))


@pytest.mark.parametrize("chunk_rows", [None, 1, 5, 7, 64, 10**6])
@pytest.mark.parametrize("rows", [None, slice(3, 50), slice(0, 0)])
def test_iter_chunks_covers_every_row_once(stores, data, chunk_rows, rows):
    acts = data[0]
    s = stores[7]
    start, stop, _ = (rows or slice(None)).indices(s.num_tokens)
    seen = []
    blocks = []
    for first, block in s.iter_chunks(["layers.1"], chunk_rows=chunk_rows, rows=rows):
        assert block.shape[1] == WIDTHS["layers.1"]
        if chunk_rows:
            assert len(block) <= chunk_rows
        seen.extend(range(first, first + len(block)))
        blocks.append(block)
    assert seen == list(range(start, stop))
    if blocks:
        np.testing.assert_array_equal(np.concatenate(blocks), acts["layers.1"][start:stop])


def test_fp16_within_rounding(tmp_path, data):
    acts, sent, word = data
    s = write_store(tmp_path / "h", acts, sent, word, dtype="fp16", shard_size=9)
    assert s.dtype == "fp16"
    for site in WIDTHS:
        got = s.read(slice(None), [site])
        # reference: numpy's own IEEE half conversion (round to nearest even)
        np.testing.assert_array_equal(got, acts[site].astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(got, acts[site], rtol=2**-11, atol=2**-24)


def test_bf16_matches_torch_bfloat16(tmp_path, data):
    acts, sent, word = data
    rng = np.random.default_rng(3)
    extra = {
        "wide": (rng.standard_normal((len(sent), 6)) * 1e4).astype(np.float32),
        # exact ties of round-to-nearest-even and values next to them
        "ties": np.tile(
            np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 0.0, -0.0], np.float32), (len(sent), 1)
        ),
    }
    allacts = {**acts, **extra}
    s = write_store(tmp_path / "b", allacts, sent, word, dtype="bf16", shard_size=11)
    assert s.dtype == "bf16"
    for site, a in allacts.items():
        expect = torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()
        np.testing.assert_array_equal(s.read(slice(None), [site]), expect)
    idx = np.array([5, 0, 5, len(sent) - 1])
    np.testing.assert_array_equal(
        s.read(idx, ["ties", "layers.1"]),
        torch.from_numpy(ref(allacts, idx, ["ties", "layers.1"])).to(torch.bfloat16).float().numpy(),
    )


def test_write_store_keeps_callers_arrays(tmp_path, data):
    acts, sent, word = data
    copy = {k: v.copy() for k, v in acts.items()}
    write_store(tmp_path / "k", acts, sent, word, dtype="bf16", shard_size=5)
    for k in acts:
        np.testing.assert_array_equal(acts[k], copy[k])


def test_empty_sentences_ids_and_large_ids(tmp_path):
    # rows of a corpus whose sentence 1 has no rows (an empty sentence): ids are kept as given
    sent = np.array([0, 0, 2, 2, 2])
    word = np.array([0, 1, 0, 1, 2])
    a = np.arange(10, dtype=np.float32).reshape(5, 2)
    s = write_store(tmp_path / "e", {"x": a}, sent, word, shard_size=2)
    np.testing.assert_array_equal(s.sentence_ids, sent)
    np.testing.assert_array_equal(s.read([4, 0]), a[[4, 0]])


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_large_reads_all_conversion_paths(tmp_path, dtype):
    """Blocks big enough for the vectorised conversion, and small ones, agree with the references."""
    rng = np.random.default_rng(5)
    n = 6000
    acts = {"a": (rng.standard_normal((n, 24)) * 50).astype(np.float32), "b": rng.standard_normal((n, 3)).astype(np.float32)}
    acts["a"][:5, 0] = [np.inf, -np.inf, 1e-7, 60000.0, -0.0]  # inf, fp16 subnormal, near the fp16 maximum
    sent = np.arange(n) // 10
    s = write_store(tmp_path / dtype, acts, sent, np.arange(n) % 10, dtype=dtype, shard_size=2500)

    def conv(x):
        if dtype == "fp16":
            with np.errstate(over="ignore"):
                return x.astype(np.float16).astype(np.float32)
        if dtype == "bf16":
            return torch.from_numpy(x).to(torch.bfloat16).float().numpy()
        return x

    full = np.concatenate([conv(acts["a"]), conv(acts["b"])], axis=1)
    np.testing.assert_array_equal(s.read(slice(None)), full)
    np.testing.assert_array_equal(s.read(slice(2400, 5100), ["b", "a"]), full[2400:5100][:, list(range(24, 27)) + list(range(24))])
    idx = rng.integers(0, n, 4000)
    np.testing.assert_array_equal(s.read(idx), full[idx])
    np.testing.assert_array_equal(s.read(np.sort(idx)), full[np.sort(idx)])
    np.testing.assert_array_equal(s.read(np.arange(100, 5000)), full[100:5000])
    np.testing.assert_array_equal(s.read(idx[:3]), full[idx[:3]])


def test_read_into_out(stores, data):
    acts = data[0]
    s = stores[7]
    buf = np.full((9, WIDTHS["layers.1"] + WIDTHS["embeddings"]), np.nan, np.float32)
    assert s.read(slice(4, 13), ["layers.1", "embeddings"], out=buf) is buf
    np.testing.assert_array_equal(buf, ref(acts, slice(4, 13), ["layers.1", "embeddings"]))
    idx = np.array([20, 3, 3, 11, 0, 7, 8, 9, 1])
    assert s.read(idx, ["layers.1", "embeddings"], out=buf) is buf
    np.testing.assert_array_equal(buf, ref(acts, idx, ["layers.1", "embeddings"]))
    with pytest.raises(ValueError, match="out must be"):
        s.read(slice(0, 3), ["layers.1"], out=np.empty((3, 2), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        s.read(slice(0, 3), ["layers.1"], out=np.empty((3, 3), np.float64))


def test_store_copies_without_its_maps(stores, data):
    """What DataLoader workers receive (__getstate__): no memory maps, no scratch buffers."""
    import copy

    s = ActivationStore.open(stores[7].path)
    s.read(np.array([5, 1, 30]))  # fills memory maps and buffers
    assert s._mmaps
    t = copy.deepcopy(s)
    assert t._mmaps == {} and t._buf is None and t._gather is None
    np.testing.assert_array_equal(t.read(np.array([5, 1, 30])), ref(data[0], [5, 1, 30]))


def _rss_file_mb() -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@pytest.mark.skipif(_rss_file_mb() is None, reason="needs Linux's /proc/self/status")
def test_random_reads_do_not_map_the_whole_store_into_memory(tmp_path):
    """Gathering every row of a 192 MB store in random order leaves at most a shard file's pages mapped:
    the resident set does not grow with the store (mapped pages would otherwise add up to its size)."""
    rng = np.random.default_rng(0)
    n, width = 32768, 768
    acts = {"a": rng.normal(size=(n, width)).astype(np.float32), "b": rng.normal(size=(n, width)).astype(np.float32)}
    s = write_store(tmp_path / "big", acts, np.arange(n) // 16, np.arange(n) % 16, dtype="fp32", shard_size=4096)
    store_mb = 2 * n * width * 4 / 2**20
    ref = np.concatenate([acts["a"], acts["b"]], axis=1)
    del acts
    before = _rss_file_mb()
    perm = rng.permutation(n)
    for i in range(0, n, 4096):
        rows = perm[i : i + 4096]
        got = s.read(rows, ["a", "b"])
        if i == 0:
            np.testing.assert_array_equal(got, ref[rows])  # pages dropped from the map still read right
    grown = _rss_file_mb() - before
    assert grown < 0.25 * store_mb, (grown, store_mb)
