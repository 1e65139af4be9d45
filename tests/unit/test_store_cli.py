"""`neurolab store info|verify|import|export` in a subprocess: exit codes 0 ok, 1 corrupt, 2 bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurolab.store import ActivationStore, write_store
from tests.helpers.store import flat_rows, neurox_arrays, random_sentences, write_neurox_hdf5, write_neurox_json, write_sentence_file

REPO = Path(__file__).resolve().parents[2]


def cli(*args) -> subprocess.CompletedProcess:
    exe = shutil.which("neurolab")
    cmd = [exe] if exe else [sys.executable, "-m", "neurolab.cli"]
    return subprocess.run(cmd + ["store", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    sents = random_sentences(rng, 12)
    arrays = neurox_arrays(rng, sents, 3, 4)
    return {
        "dir": d,
        "sents": sents,
        "arrays": arrays,
        "sentences": write_sentence_file(d / "s.txt", sents),
        "hdf5": write_neurox_hdf5(d / "a.hdf5", sents, arrays),
        "json": write_neurox_json(d / "a.json", sents, arrays),
        "store": write_store(d / "store", {"x": np.ones((4, 2), np.float32)}, [0, 0, 1, 1], [0, 1, 0, 1], {"model": "m"}, shard_size=3).path,
    }


def test_info(files):
    r = cli("info", files["store"])
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["num_tokens"] == 4 and info["sites"] == ["x"] and info["num_shards"] == 2


def test_verify_ok_then_corrupt(files, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(files["store"], d)
    r = cli("verify", d)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    f = d / "shards" / "000001" / "x.npy"
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))
    r = cli("verify", d)
    assert r.returncode == 1
    assert "CORRUPT" in r.stdout and str(f) in r.stderr


def test_bad_input_exit_2(files, tmp_path):
    r = cli("info", tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "notastore").mkdir()
    r = cli("verify", tmp_path / "notastore")
    assert r.returncode == 2 and "manifest.json" in r.stderr
    r = cli("import", files["hdf5"], "--format", "neurox-hdf5", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--sentences" in r.stderr
    r = cli("import", files["hdf5"], "--format", "neurox-xml", "--out", tmp_path / "o")
    assert r.returncode == 2  # argparse: invalid choice
    short = write_sentence_file(tmp_path / "short.txt", files["sents"][:5])
    r = cli("import", files["hdf5"], "--format", "neurox-hdf5", "--sentences", short, "--out", tmp_path / "o")
    assert r.returncode == 2 and "only 5 lines" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("fmt", ["neurox-hdf5", "neurox-json"])
def test_import(files, tmp_path, fmt):
    src = files["hdf5"] if fmt == "neurox-hdf5" else files["json"]
    out = tmp_path / "imported"
    r = cli("import", src, "--format", fmt, "--sentences", files["sentences"], "--out", out, "--dtype", "fp32",
            "--model", "tiny-bert", "--shard-size", "7")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sites"] == ["embeddings", "layers.0", "layers.1"] and info["meta"]["model"] == "tiny-bert"
    s = ActivationStore.open(out)
    np.testing.assert_allclose(s.read(slice(None)), flat_rows(files["arrays"]), atol=1e-7, rtol=0)
    r = cli("import", src, "--format", fmt, "--sentences", files["sentences"], "--out", out)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli("import", src, "--format", fmt, "--sentences", files["sentences"], "--out", out, "--overwrite")
    assert r.returncode == 0 and ActivationStore.open(out).dtype == "fp16"


def test_export_and_numpy_import(files, tmp_path):
    st = tmp_path / "st"
    assert cli("import", files["hdf5"], "--format", "neurox-hdf5", "--sentences", files["sentences"], "--out", st,
               "--dtype", "fp32").returncode == 0
    r = cli("export", st, "--out", tmp_path / "back.hdf5", "--sentences", files["sentences"])
    assert r.returncode == 0, r.stderr
    r = cli("export", st, "--format", "numpy", "--out", tmp_path / "back.npz", "--sites", "layers.1,embeddings")
    assert r.returncode == 0, r.stderr
    r = cli("import", tmp_path / "back.npz", "--format", "numpy", "--out", tmp_path / "st2", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    s = ActivationStore.open(tmp_path / "st2")
    assert s.sites == ["layers.1", "embeddings"]
    np.testing.assert_array_equal(s.read(slice(None)), flat_rows(files["arrays"], [2, 0]))
    r = cli("import", tmp_path / "back.hdf5", "--format", "neurox-hdf5", "--sentences", files["sentences"],
            "--out", tmp_path / "st3", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(ActivationStore.open(tmp_path / "st3").read(slice(None)), flat_rows(files["arrays"]))
