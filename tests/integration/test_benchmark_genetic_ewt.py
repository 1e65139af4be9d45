"""method=genetic on EWT dev / MiniLM / UPOS: its top 26 neurons (1%) retrained by the evaluation reach
at least the forward-selection ranking's accuracy minus 0.02 (both through the same retraining)."""
from __future__ import annotations

import json
import time

import pytest

from neurolab.config import compose

EVAL = ["evaluation=[retrain]", "evaluation.percentages=[1]", "evaluation.retrain.random_seeds=[0]",
        "evaluation.retrain.bottom=false", "evaluation.plots=false", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_genetic_top_1pct_on_upos_reaches_forward_selection(tmp_path, ewt_store, ewt_dev, minilm_dir):
    from neurolab.data import build_datamodule
    from neurolab.methods.base import RunContext
    from neurolab.methods.genetic import GeneticSelection
    from neurolab.tasks.evaluate import evaluate
    from neurolab.tasks.probe import probe

    common = [f"store.dir={ewt_store}", f"corpus.path={ewt_dev}", "corpus.name=ewt_dev",
              f"model.name_or_path={minilm_dir}", "sites=all_layers", *EVAL]
    fwd = probe(compose("probe", common, run_dir=tmp_path / "probe"))  # method=linear, ordering=forward (default)
    ranking = json.loads((tmp_path / "probe" / "ranking.json").read_text())
    assert ranking["extra"]["ordering"].startswith("forward")

    cfg = compose("probe", common, run_dir=tmp_path / "genetic")
    dm = build_datamodule(cfg)
    dm.setup()
    t0 = time.perf_counter()
    m = GeneticSelection().fit(dm, RunContext(seed=42))  # conf/method/genetic.yaml's defaults: k = 1%
    seconds = time.perf_counter() - t0
    assert m.ranking_.extra["k"] == 26 and len(m.ranking_) == 2688
    m.ranking_.to_json(tmp_path / "genetic" / "ranking.json")
    gen = evaluate(compose("evaluate", common + [f"ranking={tmp_path / 'genetic' / 'ranking.json'}"],
                           run_dir=tmp_path / "evaluate"))
    print(json.dumps({"forward_top1pct_acc": fwd["top/acc@1%"], "genetic_top1pct_acc": gen["top/acc@1%"],
                      "genetic_s": round(seconds, 1), "genetic_dev_loglik": m.best_fitness_,
                      "generations": m.ranking_.extra["generations"], "evaluations": m.ranking_.extra["evaluations"]}))
    assert gen["top/acc@1%"] >= fwd["top/acc@1%"] - 0.02
    assert gen["top/acc@1%"] > gen["random/acc@1%"] + 0.2
