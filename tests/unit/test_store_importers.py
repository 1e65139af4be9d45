"""Importers of NeuroX HDF5/JSON files and .npz archives, and export back (files written by the test)."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from neurolab.store import StoreError, write_store
from neurolab.store.importers import (
    export_neurox_hdf5,
    export_numpy,
    import_neurox_hdf5,
    import_neurox_json,
    import_numpy,
    neurox_layer_to_site,
    read_sentence_file,
)
from tests.helpers.store import (
    flat_rows,
    neurox_arrays,
    random_sentences,
    write_neurox_hdf5,
    write_neurox_json,
    write_sentence_file,
)

LAYERS, UNITS = 4, 6
ALL_SITES = ["embeddings", "layers.0", "layers.1", "layers.2"]


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    sents = random_sentences(rng, 25)
    sents[3] = sents[1]  # a repeated sentence (NeuroX keys it "... (Occurrence 2)")
    sents[7] = ["A", "longer", "sentence", "of", "words", "."]
    arrays = neurox_arrays(rng, sents, LAYERS, UNITS)
    return sents, arrays, write_sentence_file(tmp_path / "sentences.txt", sents)


def _ids(sents):
    sent = np.concatenate([np.full(len(w), i) for i, w in enumerate(sents)])
    word = np.concatenate([np.arange(len(w)) for w in sents])
    return sent, word


def test_layer_to_site():
    assert neurox_layer_to_site(0) == "embeddings"
    assert neurox_layer_to_site(1) == "layers.0"
    assert neurox_layer_to_site(13) == "layers.12"


def test_sentence_file_split_like_neurox(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("a b  c\n\n  x y \n", encoding="utf-8")
    assert read_sentence_file(p) == [["a", "b", "", "c"], [""], ["x", "y"]]


@pytest.mark.parametrize("h5dtype", ["float32", "float16"])
def test_hdf5_roundtrip(tmp_path, corpus, h5dtype):
    sents, arrays, sfile = corpus
    f = write_neurox_hdf5(tmp_path / "acts.hdf5", sents, arrays, dtype=h5dtype)
    s = import_neurox_hdf5(f, sfile, tmp_path / "st", dtype="fp32", model="tiny", shard_size=17)
    assert s.sites == ALL_SITES
    assert s.neurons_per_site == {x: UNITS for x in ALL_SITES}
    sent, word = _ids(sents)
    np.testing.assert_array_equal(s.sentence_ids, sent)
    np.testing.assert_array_equal(s.word_ids, word)
    expect = flat_rows([a.astype(h5dtype) for a in arrays])
    np.testing.assert_array_equal(s.read(slice(None)), expect)
    # one site = that NeuroX layer
    np.testing.assert_array_equal(s.read(slice(None), ["layers.1"]), flat_rows(arrays, [2]).astype(h5dtype).astype(np.float32))
    assert s.meta["model"] == "tiny" and s.identity["source"] == "neurox-hdf5"
    assert s.meta["import"]["num_rows"] == len(sent) and s.meta["import"]["skipped_sentences"] == []
    assert s.verify() == []


def test_hdf5_fp16_store(tmp_path, corpus):
    sents, arrays, sfile = corpus
    f = write_neurox_hdf5(tmp_path / "acts.hdf5", sents, arrays)
    s = import_neurox_hdf5(f, sfile, tmp_path / "st")  # default storage dtype fp16
    assert s.dtype == "fp16"
    np.testing.assert_array_equal(s.read(slice(None)), flat_rows(arrays).astype(np.float16).astype(np.float32))


def test_json_roundtrip(tmp_path, corpus):
    sents, arrays, sfile = corpus
    f = write_neurox_json(tmp_path / "acts.json", sents, arrays)
    s = import_neurox_json(f, sfile, tmp_path / "st", dtype="fp32", shard_size=10)
    assert s.sites == ALL_SITES
    np.testing.assert_allclose(s.read(slice(None)), flat_rows(arrays), atol=1e-7, rtol=0)  # 8 decimals in JSON
    np.testing.assert_array_equal(s.sentence_ids, _ids(sents)[0])


def test_ignore_embeddings_and_filter_layers(tmp_path, corpus):
    sents, arrays, sfile = corpus
    # written with --ignore_embeddings: axis k is NeuroX layer k+1
    f = write_neurox_hdf5(tmp_path / "noemb.hdf5", sents, [a[1:] for a in arrays])
    s = import_neurox_hdf5(f, sfile, tmp_path / "a", dtype="fp32", ignore_embeddings=True)
    assert s.sites == ["layers.0", "layers.1", "layers.2"]
    np.testing.assert_array_equal(s.read(slice(None), ["layers.2"]), flat_rows(arrays, [3]))
    # written with --filter_layers 3,0
    f = write_neurox_hdf5(tmp_path / "filt.hdf5", sents, [a[[3, 0]] for a in arrays])
    s = import_neurox_hdf5(f, sfile, tmp_path / "b", dtype="fp32", layers="3,0")
    assert s.sites == ["layers.2", "embeddings"]
    np.testing.assert_array_equal(s.read(slice(None)), flat_rows(arrays, [3, 0]))
    with pytest.raises(StoreError, match="names 3 layers but the files hold 2"):
        import_neurox_hdf5(f, sfile, tmp_path / "c", layers=[0, 1, 2])
    with pytest.raises(StoreError, match="same site twice"):
        import_neurox_hdf5(f, sfile, tmp_path / "d", layers=[1, 1])


@pytest.mark.parametrize("fmt", ["hdf5", "json"])
def test_decomposed_layer_files(tmp_path, corpus, fmt):
    sents, arrays, sfile = corpus
    writer = write_neurox_hdf5 if fmt == "hdf5" else write_neurox_json
    files = [writer(tmp_path / f"acts-layer{l}.{fmt}", sents, [a[[l]] for a in arrays]) for l in (2, 0)]
    fn = import_neurox_hdf5 if fmt == "hdf5" else import_neurox_json
    s = fn(files, sfile, tmp_path / "st", dtype="fp32")
    assert s.sites == ["layers.1", "embeddings"]
    np.testing.assert_allclose(s.read(slice(None)), flat_rows(arrays, [2, 0]), atol=1e-7, rtol=0)
    other = writer(tmp_path / f"plain.{fmt}", sents, [a[[1]] for a in arrays])
    with pytest.raises(StoreError, match="layers are unknown"):
        fn([files[0], other], sfile, tmp_path / "st2")


def test_row_count_mismatch_names_sentence(tmp_path, corpus):
    sents, arrays, sfile = corpus
    bad = list(arrays)
    bad[7] = bad[7][:, :-1]  # one row short (NeuroX truncated it, or another sentence file)
    f = write_neurox_hdf5(tmp_path / "acts.hdf5", sents, bad)
    with pytest.raises(StoreError) as e:
        import_neurox_hdf5(f, sfile, tmp_path / "st")
    msg = str(e.value)
    assert "sentence 7 " in msg and "line 8" in msg and str(sfile) in msg and f"{len(sents[7])} words" in msg
    # skip: left out, counted and reported
    s = import_neurox_hdf5(f, sfile, tmp_path / "skip", on_mismatch="skip", dtype="fp32")
    assert 7 not in set(s.sentence_ids.tolist())
    assert [d["sentence"] for d in s.meta["import"]["skipped_sentences"]] == [7]
    keep = [i for i in range(len(sents)) if i != 7]
    np.testing.assert_array_equal(s.read(slice(None)), flat_rows([arrays[i] for i in keep]))
    # prefix: the rows NeuroX kept are the first words
    s = import_neurox_hdf5(f, sfile, tmp_path / "prefix", on_mismatch="prefix", dtype="fp32")
    rows = s.sentence_ids == 7
    assert s.word_ids[rows].tolist() == list(range(len(sents[7]) - 1))
    assert s.meta["import"]["truncated_sentences"] == [{"sentence": 7, "words": len(sents[7]), "rows": len(sents[7]) - 1}]
    np.testing.assert_array_equal(s.read(np.flatnonzero(rows)), flat_rows([bad[7]]))


def test_sentence_count_mismatch(tmp_path, corpus):
    sents, arrays, sfile = corpus
    f = write_neurox_hdf5(tmp_path / "few.hdf5", sents[:-2], arrays[:-2])
    with pytest.raises(StoreError, match=r"holds 23 sentences but .* has 25 lines; no activations for sentence 23"):
        import_neurox_hdf5(f, sfile, tmp_path / "a")
    short = write_sentence_file(tmp_path / "short.txt", sents[:10])
    with pytest.raises(StoreError, match="only 10 lines"):
        import_neurox_hdf5(write_neurox_hdf5(tmp_path / "all.hdf5", sents, arrays), short, tmp_path / "b")
    j = write_neurox_json(tmp_path / "few.json", sents[:-2], arrays[:-2])
    with pytest.raises(StoreError, match="holds 23 sentences"):
        import_neurox_json(j, sfile, tmp_path / "c")
    with pytest.raises(StoreError, match="only 10 lines"):
        import_neurox_json(write_neurox_json(tmp_path / "all.json", sents, arrays), short, tmp_path / "d")


def test_bad_files(tmp_path, corpus):
    sents, arrays, sfile = corpus
    notfile = tmp_path / "x.hdf5"
    notfile.write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5"):
        import_neurox_hdf5(notfile, sfile, tmp_path / "a")
    with pytest.raises(StoreError, match="not found"):
        import_neurox_hdf5(tmp_path / "missing.hdf5", sfile, tmp_path / "a")
    with pytest.raises(StoreError, match="sentence file not found"):
        import_neurox_hdf5(notfile, tmp_path / "nope.txt", tmp_path / "a")
    bad = tmp_path / "bad.json"
    bad.write_text('{"linex_index": 0, "features": [{"token": "a", "layers": [{"index": 0, "values": [1.0]}]}]}\n{"oops": 1}\n')
    with pytest.raises(StoreError, match=r"bad.json, line 2: not a NeuroX JSON"):
        import_neurox_json(bad, sfile, tmp_path / "b", on_mismatch="skip")
    with h5py.File(tmp_path / "odd.hdf5", "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(StoreError, match="unexpected datasets"):
        import_neurox_hdf5(tmp_path / "odd.hdf5", sfile, tmp_path / "c")


def test_refuses_existing_store(tmp_path, corpus):
    sents, arrays, sfile = corpus
    f = write_neurox_hdf5(tmp_path / "acts.hdf5", sents, arrays)
    import_neurox_hdf5(f, sfile, tmp_path / "st")
    with pytest.raises(StoreError, match="already exists"):
        import_neurox_hdf5(f, sfile, tmp_path / "st")
    assert import_neurox_hdf5(f, sfile, tmp_path / "st", overwrite=True, dtype="bf16").dtype == "bf16"


def test_export_neurox_hdf5_roundtrip(tmp_path, corpus):
    sents, arrays, sfile = corpus
    s = import_neurox_hdf5(write_neurox_hdf5(tmp_path / "in.hdf5", sents, arrays), sfile, tmp_path / "st", dtype="fp32")
    out = export_neurox_hdf5(s, tmp_path / "out.hdf5", sentences=sfile)
    with h5py.File(out, "r") as f:
        index = json.loads(f["sentence_to_index"][0])
        assert index[" ".join(sents[0])] == "0"
        assert index[" ".join(sents[1]) + " (Occurrence 2)"] == "3"
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(f[str(i)][()], a)
    s2 = import_neurox_hdf5(out, sfile, tmp_path / "st2", dtype="fp32")
    np.testing.assert_array_equal(s2.read(slice(None)), s.read(slice(None)))
    # a subset of sites, float16, default keys
    out = export_neurox_hdf5(s.path, tmp_path / "sub.hdf5", sites=["layers.2", "embeddings"], dtype="float16")
    with h5py.File(out, "r") as f:
        assert f["4"].dtype == np.float16 and f["4"].shape == (2, len(sents[4]), UNITS)
        np.testing.assert_array_equal(f["4"][()], arrays[4][[3, 0]].astype(np.float16))
        assert json.loads(f["sentence_to_index"][0])["sentence 4"] == "4"


def test_export_refuses_mixed_widths(tmp_path):
    s = write_store(tmp_path / "s", {"a": np.zeros((2, 3)), "b": np.zeros((2, 4))}, [0, 0], [0, 1])
    with pytest.raises(StoreError, match="widths"):
        export_neurox_hdf5(s, tmp_path / "o.hdf5")
    export_neurox_hdf5(s, tmp_path / "o.hdf5", sites=["b"])


def test_numpy_import_and_export(tmp_path):
    rng = np.random.default_rng(1)
    sent = np.repeat(np.arange(6), 4)
    word = np.tile(np.arange(4), 6)
    acts = {"layers.3.mlp": rng.standard_normal((24, 5)).astype(np.float32), "embeddings": rng.standard_normal((24, 2))}
    np.savez(tmp_path / "a.npz", sentence_ids=sent, word_ids=word, **acts)
    s = import_numpy(tmp_path / "a.npz", tmp_path / "st", dtype="fp32", model="m", shard_size=5)
    assert s.sites == ["layers.3.mlp", "embeddings"] and s.meta["model"] == "m"
    np.testing.assert_array_equal(s.read(slice(None)), np.concatenate([acts["layers.3.mlp"], acts["embeddings"].astype(np.float32)], 1))
    s = import_numpy(tmp_path / "a.npz", tmp_path / "st2", dtype="fp32", sites=["embeddings"])
    assert s.sites == ["embeddings"]
    out = export_numpy(s, tmp_path / "back.npz")
    with np.load(out, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["embeddings"], acts["embeddings"].astype(np.float32))
        np.testing.assert_array_equal(z["sentence_ids"], sent)
    np.savez(tmp_path / "obj.npz", sentence_ids=sent, word_ids=word, x=np.array([{"a": 1}] * 24, dtype=object))
    with pytest.raises(StoreError, match="object arrays"):
        import_numpy(tmp_path / "obj.npz", tmp_path / "st3")
    np.savez(tmp_path / "noids.npz", x=np.zeros((3, 2)))
    with pytest.raises(StoreError, match="sentence_ids"):
        import_numpy(tmp_path / "noids.npz", tmp_path / "st4")
    np.savez(tmp_path / "short.npz", sentence_ids=sent, word_ids=word, x=np.zeros((3, 2)))
    with pytest.raises(StoreError, match=r"site 'x'"):
        import_numpy(tmp_path / "short.npz", tmp_path / "st5")
    with pytest.raises(StoreError, match="not in the archive"):
        import_numpy(tmp_path / "a.npz", tmp_path / "st6", sites=["layers.9"])
