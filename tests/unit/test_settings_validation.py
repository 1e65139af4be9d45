"""Settings are checked before any work: one error naming the key, the value and what is allowed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neurolab.config import compose
from neurolab.errors import ConfigError
from tests.helpers.trust import probe_overrides, tagged_store

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("verb,override,expect", [
    ("probe", "evaluation.percentages=[150]", ["evaluation.percentages=[150]", "150", "(0, 100]"]),
    ("run", "evaluation.percentages=[1,0]", ["evaluation.percentages", "(0, 100]"]),
    ("probe", "data.memory_budget_mb=-1", ["data.memory_budget_mb=-1", "≥ 0"]),
    ("extract", "store.shard_size=0", ["store.shard_size=0", "≥ 1"]),
    ("probe", "store.shard_size=-5", ["store.shard_size=-5"]),
    ("probe", "seed=abc", ["seed='abc'", "integer"]),
    ("extract", "seed=1.5", ["seed=1.5", "integer"]),
    ("probe", "concept=regex", ["concept.pattern", "concept=regex", "concept.pattern='^[A-Z]'"]),
    ("rank", "concept=regex", ["concept.pattern"]),
    ("probe", "trainer.max_epochs=0", ["trainer.max_epochs=0", "≥ 1"]),
    ("evaluate", "trainer.max_epochs=-3", ["trainer.max_epochs=-3"]),
    ("probe", "store.verify=sometimes", ["store.verify='sometimes'", "always, once, never"]),
    ("extract", "store.nonfinite=ignore", ["store.nonfinite='ignore'", "error, warn"]),
    ("extract", "extract.batch_tokens=0", ["extract.batch_tokens=0"]),
    ("probe", "data.batch_size=0", ["data.batch_size=0"]),
    ("probe", "corpus.split=[0.9,0.2,0.1]", ["corpus.split", "at most 1"]),
    ("extract", "corpus=parallel", ["corpus.path is not set"]),
    ("rank", "evaluation.split=validation", ["evaluation.split='validation'"]),
])
def test_bad_setting_is_refused_naming_key_value_and_what_is_allowed(tmp_path, verb, override, expect):
    from neurolab.tasks.validate import validate

    cfg = compose(verb, [override, "ranking=r.json"] if verb == "evaluate" else [override], run_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg, verb)
    for part in expect:
        assert part in str(e.value), str(e.value)


@pytest.mark.parametrize("verb", ["extract", "probe", "rank", "run"])
def test_the_default_settings_pass(tmp_path, verb):
    from neurolab.tasks.validate import validate

    validate(compose(verb, [], run_dir=tmp_path), verb)
    validate(compose(verb, ["trainer=ddp", "concept=regex", "concept.pattern='^[A-Z]'",
                            "evaluation.percentages=['5%',10]"] if verb != "extract" else ["trainer=ddp"],
                     run_dir=tmp_path), verb)


def test_several_problems_in_one_message(tmp_path):
    from neurolab.tasks.validate import validate

    cfg = compose("probe", ["seed=abc", "store.shard_size=0"], run_dir=tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg, "probe")
    assert "seed='abc'" in str(e.value) and "store.shard_size=0" in str(e.value)


def test_every_rule_names_a_key_of_a_verb_config(tmp_path):
    from omegaconf import OmegaConf

    from neurolab.config import VERBS
    from neurolab.tasks.validate import RULES

    cfgs = {v: compose(v, ["ranking=r.json"] if v == "evaluate" else [], run_dir=tmp_path)
            for v in VERBS}
    for rule in RULES:
        found = [v for v in rule.verbs if OmegaConf.select(cfgs[v], rule.key, default="<absent>") != "<absent>"]
        assert found, f"{rule.key}: in no config of {sorted(rule.verbs)}"


def test_percentages_refused_before_training(tmp_path):
    conllu, store = tagged_store(tmp_path / "data")
    run = tmp_path / "run"
    from neurolab.tasks.probe import probe

    with pytest.raises(ConfigError, match=r"evaluation.percentages=\[150\]"):
        probe(compose("probe", probe_overrides(store, conllu, "evaluation.percentages=[150]"), run_dir=run))
    assert not (run / "ranking.json").exists() and not (run / "metrics.json").exists()


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurolab.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "WANDB_MODE": "disabled"})


@pytest.mark.parametrize("verb,override,key", [
    ("probe", "seed=abc", "seed='abc'"),
    ("probe", "concept=regex", "concept.pattern"),
    ("extract", "store.shard_size=0", "store.shard_size=0"),
])
def test_cli_says_one_line_without_traceback(tmp_path, verb, override, key):
    r = _cli(verb, override, f"hydra.run.dir={tmp_path / 'run'}", "logger=none")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"neurolab {verb}: error: ") and key in last


def test_conllu_with_a_byte_order_mark(tmp_path):
    from neurolab.corpus import read_conllu
    from tests.helpers.evaluation import write_tagged_conllu

    plain = write_tagged_conllu(tmp_path / "plain.conllu", num_sentences=5)
    bom = tmp_path / "bom.conllu"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = read_conllu(plain), read_conllu(bom)
    assert b.words() == a.words() and b.fingerprint() == a.fingerprint()
    # a file that starts with a comment line too
    bom2 = tmp_path / "bom2.conllu"
    bom2.write_bytes(b"\xef\xbb\xbf# newdoc id = x\n" + plain.read_bytes())
    assert read_conllu(bom2).words() == a.words()


def test_a_corpus_given_by_path_is_not_called_demo(tmp_path):
    from neurolab.corpus import load_corpus
    from neurolab.tasks.probe import probe
    from neurolab.store.format import StoreMismatchError
    from tests.helpers.evaluation import write_tagged_conllu

    conllu, store = tagged_store(tmp_path / "data")
    assert compose("probe", [], run_dir=tmp_path).corpus.name == "demo"
    cfg = compose("probe", [f"corpus.path={conllu}"], run_dir=tmp_path)
    assert load_corpus(cfg.corpus)[0].name == "tagged"
    other = write_tagged_conllu(tmp_path / "other_words.conllu", num_sentences=20, seed=3)
    with pytest.raises(StoreMismatchError) as e:
        probe(compose("probe", probe_overrides(store, other), run_dir=tmp_path / "run"))
    assert "demo" not in str(e.value) and "other_words" in str(e.value)
