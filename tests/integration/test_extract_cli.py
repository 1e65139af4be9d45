"""`neurolab extract` through the CLI in subprocesses: bad input, SIGKILL + resume, 2 processes, MiniLM end to end."""
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

from neurolab.store import ActivationStore
from tests.helpers.extraction import save_tiny_model

ENV = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _cmd(args, run_dir):
    return [sys.executable, "-m", "neurolab.cli", "extract", *args, f"hydra.run.dir={run_dir}", "logger=none",
            "extract.progress=false"]


def _cli(args, run_dir, timeout=300):
    return subprocess.run(_cmd(args, run_dir), capture_output=True, text=True, env=ENV, timeout=timeout)


def _shards(store: Path) -> list[dict]:
    return json.loads((store / "manifest.json").read_text())["shards"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_model("bert", tmp_path_factory.mktemp("bert"), hidden=64, layers=2)


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, demo_conllu):
    """The demo corpus x2 (about 7k words): enough shards to kill a run in the middle."""
    text = Path(demo_conllu).read_text(encoding="utf-8")
    p = tmp_path_factory.mktemp("corpus") / "demo2.conllu"
    p.write_text(text * 2, encoding="utf-8")
    return p


@pytest.mark.slow
def test_cli_malformed_conllu_names_file_and_line(tmp_path, bert_dir):
    bad = tmp_path / "bad.conllu"
    bad.write_text("# sent_id = 1\n1\tHello\t_\tX\t_\t_\t0\troot\t_\t_\n2\tworld\tonly-three-columns\n\n", encoding="utf-8")
    r = _cli([f"model.name_or_path={bert_dir}", f"corpus.path={bad}", f"store.dir={tmp_path / 's'}"], tmp_path / "run")
    assert r.returncode == 2, r.stderr[-2000:]
    err = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert err and f"{bad}:" in err[-1], r.stderr[-2000:]
    line = err[-1].split(f"{bad}:")[1].split(":")[0]
    assert line.isdigit() and int(line) in (2, 3)
    r = _cli([f"model.name_or_path={tmp_path / 'nope'}", "sites=layers.0"], tmp_path / "run")
    assert r.returncode == 2 and "nope" in r.stderr.splitlines()[-1]


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_store(tmp_path, bert_dir, big_corpus):
    from neurolab.config import compose
    from neurolab.tasks.extract import extract_store

    args = [f"model.name_or_path={bert_dir}", f"corpus.path={big_corpus}", "sites=all", "store.shard_size=300",
            "extract.batch_tokens=1024"]
    ref = tmp_path / "ref"  # the uninterrupted run, in this process
    extract_store(compose("extract", args + [f"store.dir={ref}", "extract.progress=false"], run_dir=tmp_path / "run_ref"))
    n_shards = len(_shards(ref))
    assert n_shards >= 10
    killed = tmp_path / "killed"
    p = subprocess.Popen(_cmd(args + [f"store.dir={killed}"], tmp_path / "run_k"), env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    shards_dir = killed / "shards"
    try:
        while time.time() < deadline:
            done = [d for d in shards_dir.iterdir() if not d.name.startswith(".")] if shards_dir.exists() else []
            if len(done) >= 2:
                break
            if p.poll() is not None:
                break
            time.sleep(0.02)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["complete"] is False
    finished = [d for d in shards_dir.iterdir() if not d.name.startswith(".")]
    assert 2 <= len(finished) < n_shards
    for d in finished:  # every visible shard is complete
        assert (d / "shard.json").exists()
    with pytest.raises(Exception, match="incomplete"):
        ActivationStore.open(killed)
    r = _cli(args + [f"store.dir={killed}"], tmp_path / "run_k2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout + r.stderr
    metrics = json.loads((tmp_path / "run_k2" / "metrics.json").read_text())
    assert metrics["extract/shards_written"] == n_shards - len(finished)
    assert _shards(killed) == _shards(ref)  # same checksums, shard by shard
    assert ActivationStore.open(killed, verify=True).num_tokens == ActivationStore.open(ref).num_tokens


@pytest.mark.distributed
def test_two_processes_equal_one(tmp_path, bert_dir, demo_conllu):
    args = [f"model.name_or_path={bert_dir}", f"corpus.path={demo_conllu}", "sites=[all_layers,mlp]",
            "store.shard_size=300"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _cli(args + [f"store.dir={one}"], tmp_path / "run1")
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _cli(args + [f"store.dir={two}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
              tmp_path / "run2", timeout=500)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "rank 1 wrote shard" in r2.stderr
    assert len(_shards(one)) >= 4
    assert _shards(one) == _shards(two)  # identical checksums: each shard is computed from the same batches
    a, b = ActivationStore.open(one), ActivationStore.open(two, verify=True)
    np.testing.assert_array_equal(a.read(slice(None)), b.read(slice(None)))


@pytest.mark.slow
def test_minilm_demo_end_to_end(tmp_path, minilm_dir):
    r = _cli([f"store.dir={tmp_path / 'store'}"], tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    store = ActivationStore.open(tmp_path / "store", verify=True)
    assert store.sites == ["embeddings"] + [f"layers.{i}" for i in range(6)]
    assert store.num_neurons() == 7 * 384
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["extract/rows"] == store.num_tokens == metrics["extract/words"]
    assert metrics["extract/words_per_s"] > 0
    from neurolab.corpus import read_conllu
    from neurolab.config import demo_corpus_path

    corpus = read_conllu(demo_corpus_path())
    assert store.num_tokens == corpus.num_words
    # spot check against transformers directly: sentence 0, mean of subwords, last layer
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    words = corpus[0].words
    enc = tok([words], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states[6][0].numpy()
    wid = enc.word_ids(0)
    ref = np.stack([hs[[i for i, x in enumerate(wid) if x == w]].mean(0) for w in range(len(words))])
    np.testing.assert_allclose(store.read(slice(0, len(words)), ["layers.5"]), ref, rtol=1e-2, atol=1e-2)
