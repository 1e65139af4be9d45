"""The real command under data parallelism and interruption.

- ``neurolab probe|rank|extract trainer=ddp trainer.devices=2`` start from the command line on CPU
  (gloo): Lightning's launcher restarts the program for rank 1, which must re-enter the same verb;
- killing a data-parallel run (SIGKILL of the process the user started) leaves no rank behind;
- Ctrl-C (SIGINT) ends a run with one line, no traceback, and a store that a rerun completes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.extraction import save_tiny_model
from tests.helpers.trust import QUICK, tagged_store

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _cmd(verb: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "neurolab.cli", verb, *args]


def _run(verb: str, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(verb, *args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tagged_store(tmp_path_factory.mktemp("data"), num_sentences=80)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_model("bert", tmp_path_factory.mktemp("bert"), hidden=64, layers=2)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, demo_conllu):
    text = Path(demo_conllu).read_text(encoding="utf-8")
    p = tmp_path_factory.mktemp("corpus") / "demo2.conllu"
    p.write_text(text * 2, encoding="utf-8")
    return p


def _verb_args(data, run: Path, *extra: str) -> list[str]:
    conllu, store = data
    return [f"store.dir={store}", f"corpus.path={conllu}", f"hydra.run.dir={run}", "extract_if_missing=false", *QUICK,
            *extra]


def test_probe_with_two_processes_from_the_command_line(data, tmp_path):
    args = [a for a in _verb_args(data, tmp_path / "one") if not a.startswith("viz.")]
    one = _run("probe", *args)
    assert one.returncode == 0, one.stderr[-3000:]
    args = [a for a in _verb_args(data, tmp_path / "two", *DDP) if not a.startswith("viz.")]
    two = _run("probe", *args)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "can't open file" not in two.stderr and "unknown verb" not in two.stderr
    # rank 1 re-entered the verb through Hydra (its own log) and joined the process group (else no end)
    assert "probe done" in (tmp_path / "two" / "train_ddp_process_1.log").read_text()
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["test/acc"] == pytest.approx(m1["test/acc"], abs=1e-6)


def test_rank_with_two_processes_from_the_command_line(data, tmp_path):
    r = _run("rank", *_verb_args(data, tmp_path / "rank", "method=probeless", *DDP))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank done" in (tmp_path / "rank" / "train_ddp_process_1.log").read_text()
    m = json.loads((tmp_path / "rank" / "metrics.json").read_text())
    assert "top/acc@10%" in m


def test_extract_with_two_processes_and_kill_leaves_no_process(bert_dir, big_corpus, tmp_path):
    args = [f"model.name_or_path={bert_dir}", f"corpus.path={big_corpus}", "sites=all", "store.shard_size=200",
            "extract.batch_tokens=512", "extract.progress=false", "logger=none", *DDP]
    store = tmp_path / "store"
    p = subprocess.Popen(_cmd("extract", *args, f"store.dir={store}", f"hydra.run.dir={tmp_path / 'run_k'}"),
                         cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not kids:
            time.sleep(0.2)
            kids = [k for k in _children(p.pid) if "neurolab.extraction.build" in
                    Path(f"/proc/{k}/cmdline").read_text(errors="replace").replace("\0", " ")]
        assert kids, "rank 1 never started"
        time.sleep(2.0)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        end = time.time() + 30
        while time.time() < end and any(_alive(k) for k in kids):
            time.sleep(0.2)
        assert not any(_alive(k) for k in kids), f"rank 1 ({kids}) outlived the killed launcher"
    finally:
        if p.poll() is None:
            p.kill()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
    # a rerun with two processes resumes and finishes the store
    r = _run("extract", *args, f"store.dir={store}", f"hydra.run.dir={tmp_path / 'run_r'}")
    assert r.returncode == 0, r.stderr[-3000:]
    v = subprocess.run([sys.executable, "-m", "neurolab.cli", "store", "verify", str(store)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert v.returncode == 0 and "OK" in v.stdout, v.stdout + v.stderr


def test_ctrl_c_stops_with_one_line_and_a_resumable_store(bert_dir, big_corpus, tmp_path):
    args = [f"model.name_or_path={bert_dir}", f"corpus.path={big_corpus}", "sites=all", "store.shard_size=200",
            "extract.batch_tokens=512", "extract.progress=false", "logger=none", f"store.dir={tmp_path / 'store'}"]
    p = subprocess.Popen(_cmd("extract", *args, f"hydra.run.dir={tmp_path / 'run_i'}"), cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = tmp_path / "store" / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if shards.exists() and [d for d in shards.iterdir() if not d.name.startswith(".")]:
            break
        time.sleep(0.1)
    assert p.poll() is None, "finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("neurolab extract: interrupted") and "resume" in last
    r = _run("extract", *args, f"hydra.run.dir={tmp_path / 'run_r'}")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "run_r" / "metrics.json").read_text())
    total = len(json.loads((tmp_path / "store" / "manifest.json").read_text())["shards"])
    assert 0 < m["extract/shards_written"] < total  # resumed: the shards written before Ctrl-C were kept
