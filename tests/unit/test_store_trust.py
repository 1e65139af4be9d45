"""A store is never trusted blindly and never deletes what is not its own.

- ``store.overwrite`` replaces only a neurolab store or an empty directory; anything else is refused
  naming what is there, and nothing outside the store is written or deleted whatever the manifest says;
- every read checks the manifest against the shard headers (a dtype edited fp16 -> bf16), shard
  directories inside the store, checksums once per store (a marker keyed by the manifest's hash) and
  non-finite values (refused naming file and row, or counted with ``store.nonfinite=warn``);
- ``store verify`` names a missing shard directory and a writer's leftover temporary directory;
- writers into one store are serialised by a lock file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurolab.store import ActivationStore, StoreError, StoreMismatchError, StoreWriter, write_store
from tests.helpers.trust import edit_manifest, flip_byte, manifest_digest, reseal, set_value

MARKER = ".verified.json"

REPO = Path(__file__).resolve().parents[2]


def _acts(rows: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"embeddings": rng.standard_normal((rows, 4)).astype(np.float32),
            "layers.0": rng.standard_normal((rows, 6)).astype(np.float32)}


def _ids(rows: int = 30):
    return np.arange(rows) // 3, np.arange(rows) % 3


@pytest.fixture()
def store(tmp_path):
    sent, word = _ids()
    return write_store(tmp_path / "s", _acts(), sent, word, {"model": "m"}, dtype="fp16", shard_size=8)


def _age(path: Path, seconds: float = 60.0) -> None:
    """Set every file's modification time into the past (as for a store written a while ago)."""
    t = time.time() - seconds
    for f in Path(path).rglob("*"):
        if f.is_file():
            os.utime(f, (t, t))


def _tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(Path(path).rglob("*")) if f.is_file()}


# -- 1. overwrite replaces only a store ------------------------------------------------------------------
def test_overwrite_refuses_a_directory_of_user_files(tmp_path):
    d = tmp_path / "thesis-folder"
    (d / "thesis").mkdir(parents=True)
    (d / "thesis" / "chapter1.tex").write_text("\\chapter{One}")
    (d / "results.csv").write_text("a,b\n1,2\n")
    before = _tree(d)
    sent, word = _ids()
    for kw in ({"overwrite": True}, {}):
        with pytest.raises(StoreMismatchError) as e:
            write_store(d, _acts(), sent, word, **kw)
        assert "results.csv" in str(e.value) and "thesis/" in str(e.value)
        with pytest.raises(StoreMismatchError, match="results.csv"):
            StoreWriter(d, sites=["a"], neurons_per_site={"a": 1}, **kw).open()
    assert _tree(d) == before  # nothing deleted, nothing (not even a lock file) added


def test_overwrite_refuses_a_store_holding_foreign_files(store):
    (store.path / "notes.txt").write_text("mine")
    sent, word = _ids()
    with pytest.raises(StoreMismatchError, match="notes.txt"):
        write_store(store.path, _acts(seed=1), sent, word, overwrite=True)
    assert (store.path / "notes.txt").read_text() == "mine"
    assert ActivationStore.open(store.path).num_tokens == 30  # the store is intact too


def test_overwrite_refuses_a_manifest_that_is_not_a_store(tmp_path):
    d = tmp_path / "web"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"name": "my web app", "version": 3}))
    sent, word = _ids()
    with pytest.raises(StoreMismatchError, match="not a neurolab store manifest"):
        write_store(d, _acts(), sent, word, overwrite=True)
    assert json.loads((d / "manifest.json").read_text())["name"] == "my web app"


def test_overwrite_replaces_a_store_and_an_empty_directory(store, tmp_path):
    sent, word = _ids(12)
    s = write_store(store.path, _acts(12, seed=3), sent, word, overwrite=True, dtype="fp32")
    assert s.num_tokens == 12 and s.dtype == "fp32"
    assert ActivationStore.open(store.path).num_tokens == 12
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_store(empty, _acts(12), sent, word, overwrite=True).num_tokens == 12


def test_overwrite_never_follows_a_link_out_of_the_store(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    link = store.path / "shards" / "000001" / "evil"
    link.symlink_to(outside, target_is_directory=True)
    sent, word = _ids()
    write_store(store.path, _acts(seed=5), sent, word, overwrite=True)
    assert (outside / "keep.txt").read_text() == "keep"


def test_shard_directory_outside_the_store_is_refused(store, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "shards" / "000001"
    shutil.copytree(store.path / "shards" / "000001", elsewhere)
    m = json.loads((store.path / "manifest.json").read_text())
    m["shards"][1]["dir"] = "../../elsewhere/shards/000001"
    m["digest"] = manifest_digest(m)  # even a self-consistent manifest
    (store.path / "manifest.json").write_text(json.dumps(m))
    before = _tree(tmp_path / "elsewhere")
    for mode in ("never", "once", "always"):
        with pytest.raises(StoreError, match="not a plain name"):
            ActivationStore.open(store.path, verify=mode)
    # overwriting the store deletes its own files only
    sent, word = _ids()
    write_store(store.path, _acts(seed=2), sent, word, overwrite=True)
    assert _tree(tmp_path / "elsewhere") == before


# -- 2. every read checks what it reads -------------------------------------------------------------------
def test_manifest_dtype_edited_fp16_to_bf16_is_caught(store):
    edit_manifest(store.path, dtype="bf16", identity=dict(store.identity, dtype="bf16"))
    with pytest.raises(StoreError, match="manifest"):
        ActivationStore.open(store.path)
    # an edit that also fixes the digest is still caught, by the shard headers, in every mode
    m = json.loads((store.path / "manifest.json").read_text())
    m["digest"] = manifest_digest(m)
    (store.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"float16.*bf16"):
        ActivationStore.open(store.path)
    s = ActivationStore.open(store.path, verify="never")
    with pytest.raises(StoreError, match="bf16"):
        s.read(slice(0, 3))
    with pytest.raises(StoreError, match="bf16"):
        s.read(np.array([5, 1]))
    from neurolab.data.reader import RowReader

    with pytest.raises(StoreError, match="bf16"):
        RowReader(s, s.sites).read_rows(np.arange(3))


def test_flipped_byte_refused_by_default_and_named(store):
    f = store.path / "shards" / "000001" / "layers.0.npy"
    flip_byte(f, -5)
    with pytest.raises(StoreError, match="000001.layers.0.npy: checksum mismatch"):
        ActivationStore.open(store.path)
    assert ActivationStore.open(store.path, verify="never").num_tokens == 30  # opted out


def test_once_hashes_a_store_once_and_again_only_what_changed(store):
    _age(store.path)
    first = ActivationStore.open(store.path).verification
    n_files = sum(len(sh["files"]) + 1 for sh in store.shards)
    assert first.files_hashed == n_files and first.files_trusted == 0
    assert (store.path / MARKER).exists()
    again = ActivationStore.open(store.path).verification
    assert again.files_hashed == 0 and again.files_trusted == n_files and again.bytes_hashed == 0
    always = ActivationStore.open(store.path, verify="always").verification
    assert always.files_hashed == n_files
    assert ActivationStore.open(store.path, verify="never").verification is None
    # a file changed after it was verified is read again, and the damage found
    f = store.path / "shards" / "000002" / "embeddings.npy"
    flip_byte(f, -1)
    with pytest.raises(StoreError, match="000002.embeddings.npy: checksum"):
        ActivationStore.open(store.path)


def test_marker_is_keyed_by_the_manifest(store):
    _age(store.path)
    ActivationStore.open(store.path)
    mp = store.path / "manifest.json"
    m = json.loads(mp.read_text())
    m["meta"]["note"] = "edited and re-digested"
    m["digest"] = manifest_digest(m)
    mp.write_text(json.dumps(m))
    rep = ActivationStore.open(store.path).verification
    assert rep.files_trusted == 0 and rep.files_hashed > 0


def test_marker_falls_back_to_the_cache_for_a_read_only_store(store, monkeypatch):
    from neurolab.store import integrity

    _age(store.path)
    real = integrity.write_json_atomic

    def read_only(path, obj):
        if Path(path).parent == store.path:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, obj)

    monkeypatch.setattr(integrity, "write_json_atomic", read_only)
    assert ActivationStore.open(store.path).verification.files_hashed > 0
    assert not (store.path / MARKER).exists()
    assert ActivationStore.open(store.path).verification.files_hashed == 0  # remembered in the cache folder


def test_nonfinite_value_refused_naming_file_and_row(store):
    f = set_value(store.path, "000001", "layers.0", 2, 4, np.inf)
    with pytest.raises(StoreError, match="checksum"):  # changed after it was written
        ActivationStore.open(store.path)
    reseal(store.path)  # as if it had been written so: the value itself is the problem
    _age(store.path)
    with pytest.raises(StoreError) as e:
        ActivationStore.open(store.path)
    msg = str(e.value)
    assert str(f) in msg and "row 2 (store row 10)" in msg and "unit 4 (layers.0:4)" in msg and "inf" in msg
    assert "store.nonfinite=warn" in msg
    # remembered: the second open refuses from the marker, without reading the file again
    with pytest.raises(StoreError, match="row 2"):
        ActivationStore.open(store.path)


def test_nonfinite_values_counted_when_the_user_opts_in(store, caplog):
    from neurolab.store import integrity

    set_value(store.path, "000001", "layers.0", 2, 4, np.inf)
    set_value(store.path, "000003", "embeddings", 0, 0, np.nan)
    reseal(store.path)
    with caplog.at_level("WARNING", logger="neurolab.store"):
        s = ActivationStore.open(store.path, nonfinite="warn")
    assert s.verification.nonfinite_values == 2
    assert any("2 non-finite values in 2 files" in r.message for r in caplog.records)
    with integrity.store_checks({"store": {"nonfinite": "warn"}}) as checks:
        ActivationStore.open(store.path)
    assert [r.nonfinite_values for r in checks.reports] == [2]
    with pytest.raises(StoreError, match="2 non-finite values"):
        ActivationStore.open(store.path)


def test_fp16_overflow_store_refused_when_read_with_the_reason(tmp_path):
    a = np.array([[1.0, 7e4], [2.0, 3.0], [3.0, 4.0]], dtype=np.float32)
    write_store(tmp_path / "o", {"x": a}, [0, 0, 1], [0, 1, 0], dtype="fp16")
    with pytest.raises(StoreError, match=r"beyond the fp16 range.*extract.dtype=bf16"):
        ActivationStore.open(tmp_path / "o")


def test_store_checks_follow_the_run_config(store):
    from neurolab.store import integrity

    _age(store.path)
    with integrity.store_checks({"store": {"verify": "always"}}):
        assert ActivationStore.open(store.path).verification.files_trusted == 0
        assert ActivationStore.open(store.path).verification.files_trusted == 0
    with integrity.store_checks({"store": {"verify": "never"}}):
        assert ActivationStore.open(store.path).verification is None
    assert integrity.policy() == integrity.Policy()
    from neurolab.errors import ConfigError

    with pytest.raises(ConfigError, match="store.verify='sometimes'"):
        integrity.policy_of({"store": {"verify": "sometimes"}})


# -- store verify --------------------------------------------------------------------------------------------
def _store_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurolab.cli", "store", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_store_verify_reports_a_missing_shard_directory_and_leftovers(store):
    shutil.rmtree(store.path / "shards" / "000002")
    (store.path / "shards" / ".tmp-000004-123-abcdef01").mkdir()
    r = _store_cli("verify", store.path)
    assert r.returncode == 1
    assert "1 shard directories missing" in r.stdout
    assert f"{store.path / 'shards' / '000002'}: shard directory missing" in r.stderr
    assert ".tmp-000004-123-abcdef01: not part of the store" in r.stderr


def test_store_verify_finds_an_edited_dtype(store):
    m = json.loads((store.path / "manifest.json").read_text())
    m["dtype"] = m["identity"]["dtype"] = "bf16"
    m["digest"] = manifest_digest(m)
    (store.path / "manifest.json").write_text(json.dumps(m))
    r = _store_cli("verify", store.path)
    assert r.returncode == 1 and "CORRUPT" in r.stdout and "bf16" in r.stderr


# -- concurrent writers ----------------------------------------------------------------------------------------
_WRITER = """
import sys, time, numpy as np
sys.path.insert(0, {repo!r})
import neurolab.store.store as st
from neurolab.store import write_store
real = st.write_npy
def slow(p, a):
    time.sleep(0.05)
    return real(p, a)
st.write_npy = slow
rows = 400
rng = np.random.default_rng(0)
acts = {{"a": rng.standard_normal((rows, 8)).astype(np.float32)}}
try:
    write_store(sys.argv[1], acts, np.arange(rows) // 4, np.arange(rows) % 4, shard_size=20)
    print("wrote")
except Exception as e:
    print("refused", type(e).__name__, e)
"""


def test_two_writers_into_one_store_are_serialised(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(_WRITER.format(repo=str(REPO)))
    target = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    lines = sorted(o[0].strip() for o in outs)
    # one writes the store; the other waits for the lock, then finds a complete store there
    assert lines[1] == "wrote" and lines[0].startswith("refused StoreMismatchError"), outs
    assert "already exists" in lines[0]
    assert "OSError" not in "".join(o[1] for o in outs)
    s = ActivationStore.open(target, verify="always")
    assert s.num_tokens == 400 and s.stray_entries() == []
    assert not [p for p in (target / "shards").iterdir() if p.name.startswith(".tmp-")]


# -- the verbs get the checks without code of their own ---------------------------------------------------------
def test_probe_and_rank_refuse_a_store_with_an_inf_and_report_it_when_asked(tmp_path, one_thread):
    from neurolab.config import compose
    from neurolab.tasks.probe import probe
    from neurolab.tasks.rank import rank
    from tests.helpers.trust import probe_overrides, tagged_store, verb_overrides

    conllu, store = tagged_store(tmp_path / "data")
    set_value(store, "000001", "layers.1", 3, 1, np.inf)
    with pytest.raises(StoreError, match="checksum"):
        probe(compose("probe", probe_overrides(store, conllu), run_dir=tmp_path / "p0"))
    reseal(store)
    for fn, verb, ov in ((probe, "probe", probe_overrides(store, conllu)),
                         (rank, "rank", verb_overrides(store, conllu, "method=probeless"))):
        with pytest.raises(StoreError, match=r"000001.layers.1.npy: row 3 \(store row 103\), unit 1"):
            fn(compose(verb, ov, run_dir=tmp_path / verb))
        assert not (tmp_path / verb / "ranking.json").exists()
    # opted in: read as they are (a probe may not survive an inf; rank's statistics do), counted and reported
    m = rank(compose("rank", verb_overrides(store, conllu, "method=probeless", "store.nonfinite=warn",
                                            "evaluation.retrain=null"), run_dir=tmp_path / "rw"))
    assert m["store/nonfinite_values"] == 1
