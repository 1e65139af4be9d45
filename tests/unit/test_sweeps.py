"""Every W&B sweep file and every Hydra experiment composes, in every grid cell."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from neurolab.config import compose, config_dir

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
EXPERIMENTS = sorted(p for p in Path(config_dir(), "experiment").glob("*.yaml")
                     if "sweeper" in (yaml.safe_load(p.read_text()).get("hydra") or {}))


def _value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def wandb_cells(spec: dict) -> list[list[str]]:
    keys, choices = [], []
    for key, p in spec["parameters"].items():
        keys.append(key)
        if "values" in p:
            choices.append(list(p["values"]))
        elif "value" in p:
            choices.append([p["value"]])
        else:
            raise AssertionError(f"parameter {key}: a grid sweep needs value/values, got {p}")
    return [[f"{k}={_value(v)}" for k, v in zip(keys, cell)] for cell in itertools.product(*choices)]


def test_there_are_sweeps_and_experiments():
    assert len(SWEEPS) >= 2 and len(EXPERIMENTS) >= 2
    assert (REPO / "sweeps" / "README.md").exists()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_wandb_sweep_file_composes_every_cell(path, tmp_path):
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] == "grid"
    cmd = spec["command"]
    assert cmd[:4] == ["${env}", "${interpreter}", "-m", "neurolab.cli"] and cmd[-1] == "${args_no_hyphens}"
    verb = cmd[4]
    cells = wandb_cells(spec)
    assert len(cells) >= 2
    for cell in cells:
        cfg = compose(verb, cell, run_dir=tmp_path)
        for ov in cell:  # each override reached the composed config
            key, val = ov.split("=", 1)
            node = cfg
            for part in key.split("."):
                node = node[part]
            if not hasattr(node, "keys"):
                assert _value(node) == val or str(node) == val, (path.name, ov, node)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_hydra_experiment_composes_every_cell(path, tmp_path):
    name = path.stem
    text = path.read_text()
    assert text.startswith("# @package _global_")
    spec = yaml.safe_load(text)
    params = spec["hydra"]["sweeper"]["params"]
    keys = list(params)
    choices = [str(params[k]).split(",") for k in keys]
    cells = list(itertools.product(*choices))
    assert len(cells) >= 2
    for cell in cells:
        ov = [f"experiment={name}"] + [f"{k}={v}" for k, v in zip(keys, cell)]
        cfg = compose("probe", ov, run_dir=tmp_path)
        for k, v in zip(keys, cell):
            if k in ("sites", "seed") or k.startswith("regularization."):
                node = cfg
                for part in k.split("."):
                    node = node[part]
                assert str(node) == v or float(node) == float(v), (name, k, v, node)


def test_idani_experiment_composes_for_rank_and_intervene(tmp_path):
    """The IDANI recipe (conf/experiment/idani.yaml) is not a sweep: both of its steps compose."""
    r = compose("rank", ["experiment=idani", "method=probeless"], run_dir=tmp_path)
    assert r.concept.name == "genre" and r.concept.value == "reviews"
    i = compose("intervene", ["experiment=idani", "ranking=r.json"], run_dir=tmp_path)
    assert i.intervene.intervention == "translate" and i.task.concept.column == "upos"
