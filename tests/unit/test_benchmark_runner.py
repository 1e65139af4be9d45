"""The planted-benchmark runner and the `neurolab benchmark` verb: methods through the method contract,
known rankings scored as they must be, failures reported, same seed same bytes, one clear error each."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurolab.benchmark.planted import build_suite, synthetic_source
from neurolab.benchmark.runner import method_nodes, registered_methods, run_planted
from neurolab.config import compose
from neurolab.errors import ConfigError
from neurolab.methods.base import Method, RunContext
from neurolab.ranking import NeuronRanking


class Oracle(Method):
    """Knows the answer: the gold neurons written next to the store, then the rest by index."""

    name = "oracle"

    def fit(self, data, context=None):
        gold = json.loads((Path(data.store.path).parent / "gold.json").read_text())
        first = [g["index"] for g in gold["gold"]]
        order = first + [c for c in range(data.num_features) if c not in first]
        self.ranking_ = NeuronRanking.from_order(order, sites=list(data.sites), neurons_per_site=dict(data.neurons_per_site))
        self.metrics_ = {}
        return self


class Reversed(Oracle):
    name = "reversed"

    def fit(self, data, context=None):
        super().fit(data, context)
        self.ranking_ = NeuronRanking.from_order(self.ranking_.indices[::-1], sites=list(data.sites),
                                                 neurons_per_site=dict(data.neurons_per_site))
        return self


class RandomOrder(Method):
    name = "random"

    def fit(self, data, context=None):
        context = RunContext.ensure(context)
        order = np.random.default_rng(context.seed).permutation(data.num_features)
        self.ranking_ = NeuronRanking.from_order(order, sites=list(data.sites), neurons_per_site=dict(data.neurons_per_site))
        self.metrics_ = {}
        return self


class Broken(Method):
    name = "broken"

    def fit(self, data, context=None):
        raise RuntimeError("no ranking today")


class WrongSize(Method):
    def fit(self, data, context=None):
        self.ranking_ = NeuronRanking.from_order([0], sites=["x"], neurons_per_site={"x": 3})
        return self


class Flag(Method):
    """Records the positive class the runner gives a binary method and what it was fitted on."""

    seen: list = []

    def __init__(self, positive=None):
        self.positive = positive

    def fit(self, data, context=None):
        Flag.seen.append((self.positive, list(data.class_names), context.seed))
        self.ranking_ = Oracle().fit(data).ranking_
        return self


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    src = synthetic_source(num_sentences=80, sites=["layers.0", "layers.1"], units=20, seed=0)
    return build_suite(tmp_path_factory.mktemp("bench") / "suite", src, types=["focused", "group", "redundant"],
                       effects=[1.0, 3.0], seeds=[0, 1])


def test_known_rankings_score_as_they_must(suite, tmp_path):
    run = run_planted(suite.cases, {"oracle": Oracle, "reversed": Reversed, "random": RandomOrder, "broken": Broken,
                                    "wrong": WrongSize}, run_dir=tmp_path)
    rows = run.rows
    assert len(rows) == 5 * len(suite.cases)
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    N = 40
    for r in by["oracle"]:
        assert r["status"] == "ok" and r["ap"] == 1.0 and r["precision@k"] == 1.0 and r["recall@k"] == 1.0
    for r in by["reversed"]:
        assert r["status"] == "ok" and r["precision@k"] == 0.0 and r["recall@k"] == 0.0
        R = r["k"]
        assert r["ap"] == pytest.approx(sum(i / (N - R + i) for i in range(1, R + 1)) / R, abs=1e-6)
    rand = [r["recall@k"] for r in by["random"]]
    assert all(r["status"] == "ok" for r in by["random"])
    assert np.mean(rand) < 0.35  # about k / N = 1/40 .. 3/40 per case
    for r in by["broken"]:
        assert r["status"] == "RuntimeError: no ranking today" and r["ap"] is None
    for r in by["wrong"]:
        assert r["status"] == "ValueError: the ranking covers 3 neurons, the data has 40"
    assert (tmp_path / "rankings" / suite.cases[0].name / "oracle.json").exists()
    assert set(run.seconds) == {"oracle", "reversed", "random", "broken", "wrong"}


def test_binary_methods_get_the_positive_class_and_the_seed(suite):
    Flag.seen = []
    run_planted(suite.cases[:1], {"flag": Flag}, seed=7)
    assert Flag.seen == [("Yes", ["Yes", "rest"], 7)]


def test_k_larger_than_the_neurons_is_an_error(suite):
    with pytest.raises(ConfigError, match=r"benchmark.k=41 is larger than the 40 neurons of planted case focused-e1-s0"):
        run_planted(suite.cases, {"oracle": Oracle}, k=41)
    rows = run_planted(suite.cases[:2], {"oracle": Oracle}, k=40).rows
    assert all(r["k"] == 40 and r["recall@k"] == 1.0 and r["precision@k"] == len(r["ranks"]) / 40 for r in rows)


def test_unknown_method_lists_the_registered_ones():
    known = registered_methods()
    assert "genetic" in known
    with pytest.raises(ConfigError) as e:
        method_nodes(["probeless", "nope"])
    assert "unknown method(s) ['nope']" in str(e.value) and str(known) in str(e.value)
    assert list(method_nodes(None)) == known


# -- the verb ---------------------------------------------------------------------------------
FAST = ["benchmark.synthetic.num_sentences=60", "benchmark.synthetic.units=12", "benchmark.types=[focused,group]",
        "benchmark.effects=[2.0]", "benchmark.seeds=[0]", "benchmark.methods=[probeless,selectivity,genetic]",
        "+benchmark.method_overrides.genetic.k=3", "+benchmark.method_overrides.genetic.generations=10"]


def test_verb_writes_results_and_same_seed_gives_same_bytes(tmp_path):
    from neurolab.tasks.benchmark import benchmark

    a, b = tmp_path / "a", tmp_path / "b"
    m = benchmark(compose("benchmark", FAST, run_dir=a))
    benchmark(compose("benchmark", FAST, run_dir=b))
    assert (a / "benchmark.json").read_bytes() == (b / "benchmark.json").read_bytes()
    res = json.loads((a / "benchmark.json").read_text())["results"]
    assert len(res) == 3 * 2
    for r in res:
        assert list(r)[:8] == ["method", "type", "effect", "seed", "ap", "precision@k", "recall@k", "status"]
        assert r["status"] == "ok"
    focused = {r["method"]: r for r in res if r["type"] == "focused"}
    # d = 2 with ~800 rows (probeless, on raw activations, can lose it to a 10x-scale outlier column)
    assert focused["selectivity"]["ap"] == 1.0 and focused["genetic"]["ap"] == 1.0
    html = (a / "leaderboard.html").read_text()
    assert "genetic" in html and "probeless" in html and "<img" in html
    assert (a / "benchmark_ap.png").exists()
    assert "benchmark/genetic/ap" in m and "time/benchmark_genetic_s" in m
    saved = json.loads((a / "metrics.json").read_text())
    assert saved["benchmark/cases"] == 2
    c = compose("benchmark", FAST + ["seed=43"], run_dir=tmp_path / "c")
    benchmark(c)
    assert (tmp_path / "c" / "benchmark.json").read_bytes() != (a / "benchmark.json").read_bytes()


def test_verb_errors(tmp_path):
    from neurolab.tasks.benchmark import benchmark

    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['nope'\]; registered methods"):
        benchmark(compose("benchmark", FAST[:-3] + ["benchmark.methods=[probeless,nope]"], run_dir=tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"planted type\(s\) \['bogus'\] unknown"):
        benchmark(compose("benchmark", FAST + ["benchmark.types=[focused,bogus]"], run_dir=tmp_path / "b"))
    with pytest.raises(ConfigError, match="benchmark.k=100 is larger than the 24 neurons"):
        benchmark(compose("benchmark", FAST + ["benchmark.k=100"], run_dir=tmp_path / "c"))
    built = tmp_path / "c" / "suite"  # a suite of focused and group cases, loaded as it is
    with pytest.raises(ConfigError, match=r"planted type\(s\) \['redundant'\] not in the suite"):
        benchmark(compose("benchmark", FAST + ["benchmark.source=suite", f"benchmark.suite_dir={built}",
                                               "benchmark.types=[focused,redundant]"], run_dir=tmp_path / "d"))


def test_cli_verb(tmp_path):
    """The verb through the command line (one process: a bad method name is exit code 2 with the message)."""
    r = subprocess.run([sys.executable, "-m", "neurolab.cli", "benchmark", "benchmark.methods=[probeless,nope]",
                        f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2, r.stderr[-2000:]
    assert "neurolab benchmark: error: benchmark.methods: unknown method(s) ['nope']" in r.stderr
