"""The method and evaluation contracts: every `conf/method/*` and `conf/evaluation/*` option composes,
builds through `_target_`, follows the contract and works on a planted store (found by listing conf/,
so a new method or evaluator is covered the day its YAML file lands)."""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from neurolab.config import compose, config_dir
from neurolab.corpus import read_conllu
from neurolab.data import ActivationDataModule, ArrayData, ConceptData, build_datamodule
from neurolab.evaluation import Evaluator, run_evaluation
from neurolab.methods import Method, RunContext
from neurolab.ranking import NeuronRanking
from neurolab.store import write_store
from neurolab.tasks.pipeline import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

CONF = Path(config_dir())
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
EVALUATORS = sorted(p.stem for p in (CONF / "evaluation").glob("*.yaml"))
# methods that need more than one store and a concept (other models' stores, the live model) or rank
# without a concept: their own tests plant their answers
NEEDS_MORE = {
    "maxcorr": "tests/unit/test_analysis_multimodel.py", "mincorr": "tests/unit/test_analysis_multimodel.py",
    "linreg": "tests/unit/test_analysis_multimodel.py", "representatives": "tests/unit/test_analysis_clusters.py",
    "ablation": "tests/unit/test_causal_methods.py", "attribution": "tests/unit/test_attribution.py",
}
# evaluators that need the live model: their tests plant a tagger that reads known units
EVAL_NEEDS_MORE = {"ablation": "tests/unit/test_causal_methods.py"}
# quicker settings for the planted run (the defaults are sized for real corpora)
FAST = {
    "neuron_mask": ["method.max_epochs=8", "method.module.anneal_epochs=4"],
    "random_forest": ["method.n_estimators=30", "method.permute_top=12"],
    "iou": ["method.quantile=0.8"],  # the planted neuron fires on the ~20% nouns
}
PLANTED = 17  # layers.0:5


@pytest.fixture(scope="module")
def planted(tmp_path_factory, demo_conllu):
    """The demo corpus with a write_store store in which layers.0:5 fires on nouns."""
    corpus = read_conllu(demo_conllu)
    sent = np.concatenate([np.full(len(s), i) for i, s in enumerate(corpus.sentences)])
    word = np.concatenate([np.arange(len(s)) for s in corpus.sentences])
    upos = np.concatenate([s.annotations["upos"] for s in corpus.sentences])
    rng = np.random.default_rng(0)
    acts = {s: rng.normal(size=(len(sent), 12)).astype(np.float32) for s in ("embeddings", "layers.0", "layers.1")}
    acts["layers.0"][:, 5] = 3.0 * (upos == "NOUN") + 0.3 * rng.normal(size=len(sent))
    path = tmp_path_factory.mktemp("contract") / "store"
    write_store(path, acts, sent, word, {"model": "toy-model"}, dtype="fp16", shard_size=150)
    return path


def _cfg(store, run_dir, *over):
    return compose("rank", [f"store.dir={store}", "concept.value=NOUN", "logger=none", "trainer.max_epochs=4",
                            "trainer.enable_progress_bar=false", *over], run_dir=run_dir)


@pytest.mark.parametrize("name", [m for m in METHODS if m not in NEEDS_MORE])
def test_every_method_finds_the_planted_neuron(name, planted, tmp_path):
    cfg = _cfg(planted, tmp_path, f"method={name}", *FAST.get(name, []))
    method = build_method(cfg.method)
    assert isinstance(method, Method) and method.name
    dm = build_datamodule(cfg)
    dm.setup()
    assert method.fit(dm, RunContext(cfg=cfg, run_dir=tmp_path, model="toy-model")) is method
    r = method.ranking_
    assert isinstance(r, NeuronRanking) and r.method == method.name and r.concept == "upos=NOUN"
    assert r.model == "toy-model" and r.sites == list(dm.sites) and r.total == 36
    assert sorted(r.indices.tolist()) == list(range(36))
    assert r.indices[0] == PLANTED, (name, r.names[:5])
    assert isinstance(method.metrics_, dict) and all(isinstance(v, (int, float)) for v in method.metrics_.values())
    assert not any(k.startswith("_") for k in method.metrics_)


@pytest.mark.parametrize("name", METHODS)
def test_method_yaml_defaults_are_the_code_defaults(name):
    """One default in one place: a method's YAML lists the same values as its __init__ (nested plain
    mappings compared key by key; `_target_` nodes build objects of their own and are skipped)."""
    from hydra.utils import get_class

    spec = yaml.safe_load((CONF / "method" / f"{name}.yaml").read_text())
    cls = get_class(spec.pop("_target_"))
    params = inspect.signature(cls.__init__).parameters
    for key, value in spec.items():
        assert key in params, f"{name}.yaml: {key} is not a parameter of {cls.__name__}"
        if isinstance(value, dict) and "_target_" in value:
            continue
        default = params[key].default
        if isinstance(value, dict):
            assert dict(default) == value, f"{name}.yaml: {key}"
        elif isinstance(value, list):
            assert list(default) == value, f"{name}.yaml: {key}"
        else:
            assert default == value, f"{name}.yaml: {key} = {value!r}, {cls.__name__} says {default!r}"


@pytest.mark.parametrize("name", [e for e in EVALUATORS if e not in EVAL_NEEDS_MORE])
def test_every_evaluator_returns_its_metrics(name, planted, tmp_path):
    cfg = _cfg(planted, tmp_path, f"evaluation=[{name}]", "evaluation.percentages=[10]")
    node = cfg.evaluation[name]
    assert OmegaConf.select(cfg, f"evaluation.{name}._target_"), f"{name}.yaml needs '# @package evaluation.{name}'"
    dm = build_datamodule(cfg)
    order = [PLANTED] + [i for i in range(36) if i != PLANTED]
    ranking = NeuronRanking.from_order(order, sites=list(dm.sites), neurons_per_site=dict(dm.neurons_per_site),
                                       concept="upos=NOUN", method="oracle", model="toy-model")
    ev = run_evaluation(ranking, dm, cfg, run_dir=tmp_path)
    assert len(ev.metrics) > 4, ev.metrics  # the shared all-neuron figures and the evaluator's own
    from hydra.utils import instantiate

    assert isinstance(instantiate(node), Evaluator)
    assert all(isinstance(v, (int, float)) for v in ev.metrics.values())


def test_both_data_classes_satisfy_the_data_protocol(planted, tmp_path):
    cfg = _cfg(planted, tmp_path)
    dm = build_datamodule(cfg)
    dm.setup()
    arrays = ArrayData.from_split(np.zeros((10, 3), np.float32), np.arange(10) % 2, class_names=["a", "b"])
    for d in (dm, arrays):
        assert isinstance(d, ConceptData)
        members = [m for m in dir(ConceptData) if not m.startswith("_")]
        assert all(hasattr(d, m) for m in members), [m for m in members if not hasattr(d, m)]
    assert isinstance(dm, ActivationDataModule) and dm.concept_name == "upos=NOUN" and dm.positive_class == "NOUN"


def test_an_unknown_target_is_refused(planted, tmp_path):
    from neurolab.errors import ConfigError

    with pytest.raises(ConfigError, match="not a neurolab Method"):
        build_method(OmegaConf.create({"_target_": "collections.OrderedDict"}))


def test_the_readme_example_method_works(planted, tmp_path):
    """The README's "Adding a method" example, run as written on the planted store."""
    import re
    import types

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Adding a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    node = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    mod = types.ModuleType("my_method")
    exec(compile(code, "README.md", "exec"), mod.__dict__)
    cls = getattr(mod, node.pop("_target_").rsplit(".", 1)[1])
    cfg = _cfg(planted, tmp_path)
    dm = build_datamodule(cfg)
    m = cls(**node).fit(dm, RunContext(cfg=cfg))
    assert isinstance(m, Method) and m.ranking_.indices[0] == PLANTED and m.ranking_.method == "mean_gap"


@pytest.mark.parametrize("name", ["linear", "neuron_mask", "gaussian"])
def test_probe_methods_find_the_planted_neuron_streaming(name, planted, tmp_path):
    """data.memory_budget_mb=0: the probe-based methods copy no rows (forward selection, the mask's
    training and dev rows stream from the store; the Gaussian selection holds a sample bounded by
    method.select_budget_mb) and still find the planted neuron."""
    from neurolab.data.memory import HELD

    HELD.clear()
    cfg = _cfg(planted, tmp_path, f"method={name}", "data.memory_budget_mb=0", *FAST.get(name, []))
    dm = build_datamodule(cfg)
    dm.setup()
    assert not dm.in_memory
    method = build_method(cfg.method).fit(dm, RunContext(cfg=cfg, run_dir=tmp_path, model="toy-model"))
    assert method.ranking_.indices[0] == PLANTED, (name, method.ranking_.names[:5])
    # the Gaussian selection holds its (bounded, seeded) sample of the selection splits; nothing else holds rows
    assert all(v == 0 for k, v in HELD.items() if k != "gaussian selection"), HELD
