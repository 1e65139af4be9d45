"""Extraction never replaces what is not a store, and never mixes shards of other batch settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from neurolab.config import compose
from neurolab.store import ActivationStore, StoreMismatchError
from neurolab.tasks.extract import extract_store
from tests.helpers.extraction import save_tiny_model, write_conllu


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("x")
    model = save_tiny_model("bert", d / "m")
    sents = [["the", "quick", "brown", "fox"], ["she", "sells", "sea", "shells", "by", "the", "shore"],
             ["in", "1999", "people", "walked"], ["hello", "said", "doctor", "smith"]] * 6
    return model, write_conllu(d / "c.conllu", sents)


def _cfg(setup, store: Path, run: Path, *extra: str):
    model, conllu = setup
    return compose("extract", [f"model.name_or_path={model}", f"corpus.path={conllu}", f"store.dir={store}",
                               "extract.progress=false", "sites=layers.0", "store.shard_size=20", *extra], run_dir=run)


def test_extract_overwrite_refuses_a_folder_of_user_files(setup, tmp_path):
    d = tmp_path / "home"
    (d / "thesis").mkdir(parents=True)
    (d / "thesis" / "chapter1.tex").write_text("text")
    (d / "results.csv").write_text("1,2")
    with pytest.raises(StoreMismatchError) as e:
        extract_store(_cfg(setup, d, tmp_path / "run", "store.overwrite=true"))
    assert "results.csv" in str(e.value) and "thesis/" in str(e.value)
    assert sorted(p.name for p in d.iterdir()) == ["results.csv", "thesis"]
    assert (d / "thesis" / "chapter1.tex").read_text() == "text"


def test_batch_settings_are_part_of_the_store_identity(setup, tmp_path, monkeypatch):
    import neurolab.extraction.run as run_mod

    store = tmp_path / "store"
    real = run_mod.write_shards

    def interrupted(extractor, plan, writer, sent_writer, shard_ids, **kw):  # killed after the first shard
        real(extractor, plan, writer, sent_writer, shard_ids[:1], **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "write_shards", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_store(_cfg(setup, store, tmp_path / "r1", "extract.batch_tokens=64"))
    monkeypatch.setattr(run_mod, "write_shards", real)
    with pytest.raises(StoreMismatchError) as e:
        extract_store(_cfg(setup, store, tmp_path / "r2", "extract.batch_tokens=128"))
    assert "batching" in str(e.value) and "64" in str(e.value) and "128" in str(e.value)
    s = extract_store(_cfg(setup, store, tmp_path / "r3", "extract.batch_tokens=64"))  # the same value resumes
    assert s.identity["batching"]["batch_tokens"] == 64
    assert ActivationStore.open(store, verify="always").num_tokens == s.num_tokens
