"""`neurolab evaluate` takes the concept, the sites and the model from the ranking it evaluates."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.corpus import read_conllu
from neurolab.errors import ConfigError
from neurolab.store import write_store

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["logger=none", "trainer.max_epochs=3", "trainer.enable_progress_bar=false", "evaluation.percentages=[10]",
        "evaluation=[retrain,sites]", "evaluation.retrain.random_seeds=[0]"]


@pytest.fixture()
def tense_store(tmp_path, demo_conllu):
    corpus = read_conllu(demo_conllu)
    sent = np.concatenate([np.full(len(s), i) for i, s in enumerate(corpus.sentences)])
    word = np.concatenate([np.arange(len(s)) for s in corpus.sentences])
    feats = [f or "" for s in corpus.sentences for f in s.annotations["feats"]]
    past = np.array(["Tense=Past" in f for f in feats])
    rng = np.random.default_rng(0)
    acts = {"layers.0": rng.normal(size=(len(sent), 12)).astype(np.float32)}
    acts["layers.0"][:, 4] += 3.0 * past
    write_store(tmp_path / "store", acts, sent, word, {"model": "toy-model"})
    return tmp_path / "store"


def test_evaluate_uses_the_rankings_concept(tmp_path, tense_store):
    from neurolab.tasks.evaluate import evaluate
    from neurolab.tasks.rank import rank

    rank(compose("rank", [f"store.dir={tense_store}", "method=probeless", "concept=feats.Tense", "evaluation=[]",
                          "viz.enabled=false", *FAST[:3]], run_dir=tmp_path / "r"))
    ranking = tmp_path / "r" / "ranking.json"
    base = [f"ranking={ranking}", f"store.dir={tense_store}", *FAST]
    implicit = evaluate(compose("evaluate", base, run_dir=tmp_path / "e1"))
    explicit = evaluate(compose("evaluate", [*base, "concept=feats.Tense"], run_dir=tmp_path / "e2"))
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert strip(implicit) == strip(explicit) and "top/acc@10%" in implicit
    with pytest.raises(ConfigError, match="conflicts with the ranking's concept 'feats.Tense'"):
        evaluate(compose("evaluate", [*base, "concept=upos"], run_dir=tmp_path / "e3"))
