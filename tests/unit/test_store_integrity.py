"""Checksums, refusing broken or foreign stores, and opening without reading shard data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neurolab.store import ActivationStore, StoreError, StoreMismatchError, StoreWriter, write_store
from neurolab.store.format import MANIFEST, SCHEMA_VERSION


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(0)
    acts = {"embeddings": rng.standard_normal((30, 4)).astype(np.float32), "layers.0": rng.standard_normal((30, 6)).astype(np.float32)}
    sent = np.repeat(np.arange(10), 3)
    word = np.tile(np.arange(3), 10)
    return write_store(tmp_path / "s", acts, sent, word, {"model": "m"}, dtype="fp16", shard_size=8)


def _flip_byte(path: Path, offset: int = -3) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x01
    path.write_bytes(bytes(b))


def test_verify_clean(store):
    assert store.verify() == []
    assert ActivationStore.open(store.path, verify=True).num_tokens == 30


@pytest.mark.parametrize("name", ["layers.0.npy", "embeddings.npy", "index.npy"])
def test_verify_detects_flipped_byte_and_names_file(store, name):
    f = store.path / "shards" / "000002" / name
    _flip_byte(f)
    problems = ActivationStore.open(store.path, verify="never").verify()
    assert len(problems) == 1
    assert str(f) in problems[0] and "checksum" in problems[0]
    with pytest.raises(StoreError, match="000002"):
        ActivationStore.open(store.path, verify=True)
    with pytest.raises(StoreError, match="000002"):  # the default (verify once) refuses it too
        ActivationStore.open(store.path)


def test_verify_detects_missing_file_and_shard(store):
    (store.path / "shards" / "000001" / "embeddings.npy").unlink()
    shutil.rmtree(store.path / "shards" / "000003")
    problems = ActivationStore.open(store.path, verify="never").verify()
    assert any("000001" in p and "embeddings.npy" in p and "missing" in p for p in problems)
    assert any("000003" in p and "missing" in p for p in problems)


def test_open_missing_directory(tmp_path):
    with pytest.raises(StoreError, match="nowhere"):
        ActivationStore.open(tmp_path / "nowhere")


def test_open_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"empty[/\\]manifest.json: not found"):
        ActivationStore.open(tmp_path / "empty")


def test_open_wrong_schema_version(store):
    mp = store.path / MANIFEST
    m = json.loads(mp.read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    mp.write_text(json.dumps(m))
    with pytest.raises(StoreError, match="schema version") as e:
        ActivationStore.open(store.path)
    assert str(mp) in str(e.value)


def test_open_corrupt_manifest(store):
    mp = store.path / MANIFEST
    mp.write_text("{ not json")
    with pytest.raises(StoreError, match="not valid JSON") as e:
        ActivationStore.open(store.path)
    assert str(mp) in str(e.value)


def test_open_incomplete_store(tmp_path):
    w = StoreWriter(tmp_path / "inc", sites=["a"], neurons_per_site={"a": 2}, dtype="fp32").open()
    w.write_shard(0, {"a": np.zeros((3, 2), np.float32)}, [0, 0, 0], [0, 1, 2])
    with pytest.raises(StoreError, match="incomplete") as e:
        ActivationStore.open(tmp_path / "inc")
    assert str(tmp_path / "inc" / MANIFEST) in str(e.value)


def test_open_reads_no_shard_data(store, monkeypatch):
    # with every data file gone, opening without verification still works: it reads the manifest only
    for f in (store.path / "shards").glob("*/*.npy"):
        f.unlink()
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    s = ActivationStore.open(store.path, verify="never")
    assert (s.num_tokens, s.sites, s.neurons_per_site, s.dtype) == (30, ["embeddings", "layers.0"], {"embeddings": 4, "layers.0": 6}, "fp16")
    assert s.num_neurons() == 10 and len(s.shards) == 4
    assert calls == []
    with pytest.raises(StoreError, match="000000.embeddings.npy"):
        s.read(slice(0, 2), ["embeddings"])


def test_read_refuses_file_of_wrong_shape(store):
    f = store.path / "shards" / "000000" / "layers.0.npy"
    np.save(f, np.zeros((8, 5), np.float16))
    with pytest.raises(StoreError, match="shape"):
        ActivationStore.open(store.path, verify="never").read(slice(0, 3))
    with pytest.raises(StoreError, match="shape"):
        ActivationStore.open(store.path)


def test_writer_refuses_another_identity_unless_overwrite(tmp_path):
    kw = dict(sites=["a"], neurons_per_site={"a": 2}, dtype="fp16")
    w = StoreWriter(tmp_path / "s", identity={"model": "bert", "corpus_fingerprint": "abc"}, **kw).open()
    w.write_shard(0, {"a": np.ones((2, 2), np.float32)}, [0, 0], [0, 1])
    w.finalize(1)
    # the same identity reopens (resume / reuse)
    again = StoreWriter(tmp_path / "s", identity={"model": "bert", "corpus_fingerprint": "abc"}, **kw).open()
    assert again.complete
    with pytest.raises(StoreMismatchError) as e:
        StoreWriter(tmp_path / "s", identity={"model": "gpt2", "corpus_fingerprint": "abc"}, **kw).open()
    msg = str(e.value)
    assert str(tmp_path / "s" / MANIFEST) in msg and "gpt2" in msg and "bert" in msg and "overwrite" in msg
    with pytest.raises(StoreMismatchError, match="corpus_fingerprint"):
        StoreWriter(tmp_path / "s", identity={"model": "bert", "corpus_fingerprint": "xyz"}, **kw).open()
    with pytest.raises(StoreMismatchError, match="dtype"):
        StoreWriter(tmp_path / "s", sites=["a"], neurons_per_site={"a": 2}, dtype="fp32",
                    identity={"model": "bert", "corpus_fingerprint": "abc"}).open()
    w2 = StoreWriter(tmp_path / "s", identity={"model": "gpt2", "corpus_fingerprint": "abc"}, overwrite=True, **kw).open()
    assert not w2.complete and w2.finished_shards() == {}
    w2.write_shard(0, {"a": np.zeros((1, 2), np.float32)}, [0], [0])
    assert w2.finalize(1).identity["model"] == "gpt2"


def test_writer_refuses_non_store_directory(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    with pytest.raises(StoreMismatchError, match="not empty"):
        StoreWriter(d, sites=["a"], neurons_per_site={"a": 1}).open()
    assert (d / "precious.txt").read_text() == "keep me"


def test_write_store_refuses_existing_store(store):
    with pytest.raises(StoreMismatchError, match="already exists"):
        write_store(store.path, {"a": np.zeros((1, 1), np.float32)}, [0], [0])
    s = write_store(store.path, {"a": np.zeros((1, 1), np.float32)}, [0], [0], overwrite=True)
    assert s.sites == ["a"] and s.num_tokens == 1


def test_shards_are_write_once(tmp_path):
    w = StoreWriter(tmp_path / "s", sites=["a"], neurons_per_site={"a": 1}, dtype="fp32").open()
    w.write_shard(0, {"a": np.zeros((1, 1), np.float32)}, [0], [0])
    with pytest.raises(StoreError, match="write-once"):
        w.write_shard(0, {"a": np.zeros((1, 1), np.float32)}, [0], [0])


@pytest.mark.parametrize(
    "acts,sent,word,match",
    [
        ({"a": np.zeros((3, 2))}, [0, 0], [0, 1], "shape"),
        ({"a": np.zeros(3)}, [0, 0, 0], [0, 1, 2], "shape"),
        ({"a": np.zeros((2, 2))}, [0, 0], [0], "word ids"),
        ({"a": np.zeros((2, 2))}, [1, 0], [0, 0], "corpus order"),
        ({}, [], [], "no activations"),
        ({"a/b": np.zeros((1, 1))}, [0], [0], "slashes"),
    ],
)
def test_write_store_bad_input(tmp_path, acts, sent, word, match):
    with pytest.raises(StoreError, match=match):
        write_store(tmp_path / "x", acts, sent, word)


def test_writer_checks_shard_shapes(tmp_path):
    w = StoreWriter(tmp_path / "s", sites=["a", "b"], neurons_per_site={"a": 2, "b": 3}).open()
    with pytest.raises(StoreError, match="site b has shape"):
        w.write_shard(0, {"a": np.zeros((2, 2)), "b": np.zeros((2, 2))}, [0, 0], [0, 1])
    with pytest.raises(StoreError, match="sites"):
        w.write_shard(0, {"a": np.zeros((2, 2))}, [0, 0], [0, 1])
    with pytest.raises(StoreError, match="not written"):
        w.finalize(2)
    with pytest.raises(StoreError, match="dtype"):
        StoreWriter(tmp_path / "t", sites=["a"], neurons_per_site={"a": 1}, dtype="int8")


def test_info_summary(store):
    info = store.info()
    assert info["num_tokens"] == 30 and info["num_sentences"] == 10 and info["num_shards"] == 4
    assert info["num_neurons"] == 10 and info["dtype"] == "fp16"
    data_bytes = 30 * 10 * 2 + 30 * 2 * 4  # fp16 activations + int32 index
    assert data_bytes < info["bytes_on_disk"] < data_bytes + 4 * 3 * 256  # plus .npy headers
    json.dumps(info)


def test_fp16_overflow_is_counted_and_reported(tmp_path, caplog):
    a = np.array([[1.0, 7e4], [-1e5, np.inf], [3.0, 4.0]], dtype=np.float32)
    with caplog.at_level("WARNING", logger="neurolab.store"):
        s = write_store(tmp_path / "o", {"x": a}, [0, 0, 1], [0, 1, 0], dtype="fp16", shard_size=2)
    assert s.meta["fp16_overflow"] == 2  # the inf that was already there is not an overflow
    assert any("fp16 range" in r.message for r in caplog.records)
    np.testing.assert_array_equal(s.read(slice(None)), [[1.0, np.inf], [-np.inf, np.inf], [3.0, 4.0]])
    assert "fp16_overflow" not in write_store(tmp_path / "b", {"x": a}, [0, 0, 1], [0, 1, 0], dtype="bf16").meta
