"""Every primary config and every option of every config group composes, and every ``_target_``
node that needs no data instantiates (discovered by listing ``conf/``, so new options are covered)."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neurolab.config import VERBS, compose, config_dir

CONF = Path(config_dir())
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
# groups that are not chosen by users / hold no objects
NOT_GROUPS = {"hydra"}
# values for mandatory (???) keys of some options, so that they can be instantiated
FILL = {
    ("concept", "regex"): ["concept.pattern='^[A-Z]'"],
    ("concept", "function"): ["concept.fn=tests.unit.test_configs.example_concept_fn"],
    ("concept", "feats"): ["concept.attribute=Case"],
}


def example_concept_fn(sentence, i):  # used by the `function` concept above
    return "long" if len(sentence.words[i]) > 4 else "short"


def _defaults(verb: str) -> list[str]:
    spec = yaml.safe_load((CONF / f"{verb}.yaml").read_text())
    out = []
    for d in spec.get("defaults", []):
        if isinstance(d, dict):
            out.extend(k.split("@")[0].replace("override ", "") for k in d)
    return out


def _options() -> list[tuple[str, str]]:
    out = []
    for g in sorted(p for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if g.name in NOT_GROUPS:
            continue
        for f in sorted(g.glob("*.yaml")):
            out.append((g.name, f.stem))
    return out


def _verb_for(group: str) -> str:
    for verb in ("probe", "run", "rank", "extract", "evaluate", "analyze"):
        if (CONF / f"{verb}.yaml").exists() and group in _defaults(verb):
            return verb
    raise AssertionError(f"conf/{group}/ is in no primary config's defaults list")


def test_every_verb_has_a_primary_config():
    for verb in VERBS:
        assert verb in PRIMARY, f"conf/{verb}.yaml is missing"


@pytest.mark.parametrize("verb", PRIMARY)
def test_primary_config_composes(verb, tmp_path):
    spec = yaml.safe_load((CONF / f"{verb}.yaml").read_text())
    d = spec["defaults"]
    assert d[0] == "_self_", f"{verb}.yaml: _self_ must come first in defaults"
    assert {"paths": "default"} in d and {"hydra": "default"} in d
    assert spec["hydra"]["job"]["name"] == verb
    cfg = compose(verb, [], run_dir=tmp_path)
    assert cfg.paths.output_dir == str(tmp_path)
    # everything but deliberately mandatory keys resolves
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("group,option", _options(), ids=lambda x: x if isinstance(x, str) else None)
def test_group_option_composes_and_instantiates(group, option, tmp_path):
    verb = _verb_for(group)
    cfg = compose(verb, [f"{group}={option}", *FILL.get((group, option), [])], run_dir=tmp_path)
    if group in ("experiment", "debug"):
        return  # @package _global_ files: composing is the check
    node = cfg.get(group)
    if group == "logger":
        if option == "none":
            assert not node or "_target_" not in node
            return
        if option == "tensorboard":
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                pytest.importorskip("tensorboardX", reason="neither tensorboard nor tensorboardX is installed")
        lg = instantiate(node)
        assert type(lg).__name__.endswith("Logger")
        return
    if group == "trainer":
        import torch

        if node.get("accelerator") == "gpu" and not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        trainer = instantiate(node, logger=False, enable_progress_bar=False)
        assert trainer.max_epochs == node.max_epochs
        return
    if group == "concept":
        from neurolab.corpus.concepts import Concept

        c = instantiate(node)
        assert isinstance(c, Concept)
        assert c.level in ("word", "sentence") and c.task in ("classification", "regression")
        assert isinstance(c.name, str) and c.name
        return
    if group in ("probe", "method"):
        # the module (probe.module / method) is instantiated as configured (partial or estimator)
        target = node.get("module", node) if group == "probe" else node
        if "_target_" in target:
            obj = instantiate(target)
            if target.get("_partial_", False):
                assert isinstance(obj, functools.partial)
        return
    # any other group: instantiate every _target_ node it holds
    for sub in _target_nodes(node):
        instantiate(sub)


def _target_nodes(node):
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            yield node
            return
        for v in node.values():
            yield from _target_nodes(v)
    elif OmegaConf.is_list(node):
        for v in node:
            yield from _target_nodes(v)
