"""A run directory holds one run's results: a rerun replaces them (never merges), and
``WANDB_MODE=disabled`` switches W&B off even with ``logger=wandb``."""
from __future__ import annotations

import json

import pytest

from neurolab.config import compose
from tests.helpers.trust import probe_overrides, tagged_store

OUTPUTS_FILE = ".neurolab-outputs.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tagged_store(tmp_path_factory.mktemp("data"))


def test_rerun_replaces_results(data, tmp_path, monkeypatch, one_thread):
    from neurolab.tasks.probe import probe

    conllu, store = data
    run = tmp_path / "run"
    m1 = probe(compose("probe", probe_overrides(store, conllu, "concept=upos", "evaluation.plots=true"), run_dir=run))
    assert "test/acc/NOUN" in m1 and (run / "sites.png").exists() and (run / "accuracy.png").exists()
    (run / "notes.txt").write_text("the user's own file")
    m2 = probe(compose("probe", probe_overrides(store, conllu, "concept=lexical.suffix_s"), run_dir=run))
    saved = json.loads((run / "metrics.json").read_text())
    assert "test/acc/NOUN" not in saved and "top/acc@10%" in saved
    assert set(saved) == {k for k, v in m2.items() if isinstance(v, (int, float)) or v is None}
    assert not (run / "sites.png").exists() and not (run / "accuracy.png").exists()  # this run made no plots
    assert json.loads((run / "ranking.json").read_text())["concept"] == "lexical.suffix_s"
    assert (run / "notes.txt").read_text() == "the user's own file"
    listed = json.loads((run / OUTPUTS_FILE).read_text())["files"]
    assert "metrics.json" in listed and "ranking.json" in listed and "notes.txt" not in listed


def test_write_metrics_never_merges(tmp_path):
    from neurolab.tasks.common import write_metrics

    write_metrics(tmp_path, {"a": 1.0, "old": 2.0})
    write_metrics(tmp_path, {"a": 3.0})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 3.0}


def test_results_of_a_run_made_before_the_list_are_replaced_too(tmp_path):
    from neurolab.tasks.common import clear_previous_results

    for name in ("config.yaml", "metrics.json", "ranking.json", "sites.png", "probeless_ranking.json"):
        (tmp_path / name).write_text("old")
    (tmp_path / "photo.png.txt").write_text("not ours")
    removed = clear_previous_results(tmp_path)
    assert sorted(removed) == ["metrics.json", "probeless_ranking.json", "ranking.json", "sites.png"]
    assert (tmp_path / "photo.png.txt").exists()


def test_a_forged_list_cannot_delete_outside_the_run_directory(tmp_path):
    from neurolab.tasks.common import clear_previous_results

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    (run / OUTPUTS_FILE).write_text(json.dumps({"files": ["../precious.txt", str(tmp_path / "precious.txt")]}))
    clear_previous_results(run)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_wandb_mode_disabled_is_honoured(data, tmp_path, monkeypatch, one_thread):
    from neurolab.tasks.probe import probe
    from neurolab.tracking import make_logger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose("probe", ["logger=wandb"], run_dir=tmp_path / "x")
    assert make_logger(cfg, tmp_path / "x") is None
    conllu, store = data
    run = tmp_path / "run"
    overrides = [o for o in probe_overrides(store, conllu) if o != "logger=none"] + ["logger=wandb"]
    probe(compose("probe", overrides, run_dir=run))
    assert (run / "metrics.json").exists()
    assert not (run / "wandb").exists(), sorted(p.name for p in run.iterdir())
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = make_logger(cfg, tmp_path / "x")
    assert type(lg).__name__ == "WandbLogger"
