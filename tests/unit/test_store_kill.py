"""A writer killed with SIGKILL leaves no visible half-written shard; a rerun resumes to the same store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurolab.store import ActivationStore, StoreError
from neurolab.store.format import SHARD_META, sha256_file
from tests.helpers.store import KILL_ROWS, KILL_SHARDS, KILL_UNITS, kill_shard_data, run_kill_writer

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _start(path: Path, pause_after_files: int = -1, marker: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.helpers.store", str(path)]
    if pause_after_files >= 0:
        cmd += [str(pause_after_files), str(marker)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill(p: subprocess.Popen, may_have_finished: bool = False) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    p.stderr.close()
    # a writer may finish between poll() and the signal (exit status 0): that run was simply not killed
    assert p.returncode == -signal.SIGKILL or (may_have_finished and p.returncode == 0), p.returncode


def _visible_shards_are_whole(path: Path) -> list[int]:
    """Every non-temporary shard directory holds all its files with their recorded checksums."""
    ids = []
    for d in sorted((path / "shards").iterdir()):
        if d.name.startswith(".tmp-"):
            continue
        meta = json.loads((d / SHARD_META).read_text())
        assert set(meta["files"]) == {"index.npy"} | {f"{s}.npy" for s in KILL_UNITS}
        for name, digest in meta["files"].items():
            assert sha256_file(d / name) == digest, f"{d / name} is half-written"
        ids.append(int(d.name))
    return ids


def _snapshot(path: Path) -> dict[str, bytes]:
    """The store's files (not a reader's verification marker nor the writers' lock file)."""
    from neurolab.store.integrity import LOCK, MARKER

    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.name not in (MARKER, LOCK)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run (in this process)."""
    path = tmp_path_factory.mktemp("ref") / "store"
    run_kill_writer(str(path))
    return path


def test_reference_store_content(reference):
    s = ActivationStore.open(reference, verify=True)
    assert s.num_tokens == KILL_SHARDS * KILL_ROWS
    i = 5
    acts, sent, word = kill_shard_data(i)
    rows = slice(i * KILL_ROWS, (i + 1) * KILL_ROWS)
    np.testing.assert_array_equal(s.read(rows, ["layers.0.mlp"]), acts["layers.0.mlp"].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(s.sentence_ids[rows], sent)
    np.testing.assert_array_equal(s.word_ids[rows], word)


def test_sigkill_mid_shard_then_resume(tmp_path, reference):
    path = tmp_path / "store"
    marker = tmp_path / "paused"
    files_per_shard = 1 + len(KILL_UNITS)
    # pause (and get killed) after shard 4's index and first site file: shards 0-3 done, 4 half-written
    p = _start(path, pause_after_files=4 * files_per_shard + 2, marker=marker)
    deadline = time.time() + 60
    while not marker.exists():
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() < deadline, "writer never reached the pause point"
        time.sleep(0.05)
    _kill(p)
    assert ".tmp-000004" in marker.read_text()  # it was inside shard 4's temporary directory
    tmps = [d for d in (path / "shards").iterdir() if d.name.startswith(".tmp-")]
    assert len(tmps) == 1 and not (tmps[0] / SHARD_META).exists()
    assert _visible_shards_are_whole(path) == [0, 1, 2, 3]
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore.open(path)
    before = {i: (path / "shards" / f"{i:06d}" / "index.npy").stat().st_ino for i in range(4)}

    p = _start(path)  # rerun the same command
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    assert not [d for d in (path / "shards").iterdir() if d.name.startswith(".tmp-")]
    # finished shards were kept, not rewritten
    assert before == {i: (path / "shards" / f"{i:06d}" / "index.npy").stat().st_ino for i in range(4)}
    assert ActivationStore.open(path, verify=True).num_tokens == KILL_SHARDS * KILL_ROWS
    assert _snapshot(path) == _snapshot(reference)


def test_sigkill_at_random_moments(tmp_path, reference):
    path = tmp_path / "store"
    rng = np.random.default_rng(7)
    for _ in range(6):
        p = _start(path)
        time.sleep(float(rng.uniform(0.05, 0.3)))  # a whole run takes about 0.25 s here
        if p.poll() is None:
            _kill(p, may_have_finished=True)
        else:
            p.communicate()
        if (path / "shards").exists():
            _visible_shards_are_whole(path)
    p = _start(path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    assert _snapshot(path) == _snapshot(reference)
