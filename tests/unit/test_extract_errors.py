"""Bad input to extraction gets one clear error naming what is wrong."""
from __future__ import annotations


import pytest

from neurolab.config import compose
from neurolab.errors import ConfigError
from neurolab.models import load_model
from neurolab.tasks.extract import extract_store
from tests.helpers.extraction import save_tiny_model, write_conllu


def test_missing_model_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no-such-model"):
        load_model({"name_or_path": str(missing)})
    with pytest.raises(ConfigError, match="not-a-model"):
        load_model({"name_or_path": "not-a-model-anywhere-xyz"})


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty"):
        load_model({"name_or_path": str(tmp_path / "empty")})


def test_minilm_alias_resolves_to_package(minilm_dir):
    from neurolab.models import resolve_name_or_path

    assert resolve_name_or_path("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_dir)
    assert resolve_name_or_path("all-MiniLM-L6-v2") == str(minilm_dir)


def test_bad_extract_options(tmp_path):
    d = save_tiny_model("bert", tmp_path / "m")
    c = write_conllu(tmp_path / "c.conllu", [["a", "b"]])
    base = [f"model.name_or_path={d}", f"corpus.path={c}", f"store.dir={tmp_path / 's'}", "extract.progress=false"]
    for bad, key in [("extract.aggregation=median", "aggregation"), ("extract.dtype=int8", "dtype"),
                     ("sites=layers.9", "layers.9"), ("extract.sentence_rows=cls", "sentence_rows")]:
        with pytest.raises(ConfigError, match=key):
            extract_store(compose("extract", base + [bad], run_dir=tmp_path / "run"))
