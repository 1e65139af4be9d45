"""evaluate_ranking on planted data, against references computed another way."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.evaluation import ProbeJob, Retrainer, evaluate_ranking, masked_accuracy, minimal_neuron_set, sizes_from_config
from neurolab.probes.lambda_search import choose_lambda, select_lambda, with_lambda
from neurolab.ranking import NeuronRanking
from tests.helpers.evaluation import planted_data  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted():
    return planted_data(n=2000, planted=(3, 25, 31), seed=0)


def _cfg(tmp_path, *extra):
    return compose("probe", ["logger=none", "trainer.enable_progress_bar=false", "probe.batch_size=256", "probe.module.optimizer.lr=0.03",
                             "evaluation.percentages=[5,25]",
                             "evaluation.retrain.random_seeds=[0,1,2]", *extra], run_dir=tmp_path)


def _ranking(dm, order):
    return NeuronRanking.from_order(order, sites=dm.sites, neurons_per_site=dm.neurons_per_site, concept="planted",
                                    method="oracle")


def test_planted_top_beats_random_beats_bottom(planted, tmp_path):
    from sklearn.linear_model import LogisticRegression

    dm, plant = planted
    F = dm.num_features
    rest = [i for i in range(F) if i not in plant]
    ranking = _ranking(dm, plant + rest)  # an oracle ranking: planted first
    cfg = _cfg(tmp_path)
    m = evaluate_ranking(ranking, dm, cfg)
    # sizes: 5% of 40 = 2 neurons, 25% = 10
    assert sizes_from_config({"percentages": [5, 25]}, F)[0].k == 2
    # the all-neuron accuracy agrees with scikit-learn's logistic regression on the same split
    Xtr, ytr = dm.arrays("train")
    Xte, yte = dm.arrays("test")
    ref = LogisticRegression(max_iter=2000).fit(Xtr, ytr).score(Xte, yte)
    assert abs(m["test/acc"] - ref) < 0.03
    for lab in ("5%", "25%"):
        assert m[f"top/acc@{lab}"] > m[f"random/acc@{lab}"] + 0.1
        assert m[f"random/acc@{lab}"] >= m[f"bottom/acc@{lab}"] - 0.02
        assert m[f"random/acc_std@{lab}"] >= 0
    # bottom neurons are pure noise: about chance (1/3)
    assert m["bottom/acc@25%"] < 0.45
    # top-10 (all planted) retrained: as good as sklearn on those columns
    cols = ranking.top(10)
    ref_top = LogisticRegression(max_iter=2000).fit(Xtr[:, cols], ytr).score(Xte[:, cols], yte)
    assert abs(m["top/acc@25%"] - ref_top) < 0.03
    # control labels are independent of X: control accuracy near the majority rate of the test split
    _, yc = dm.with_control().arrays("test")
    majority = np.bincount(yc).max() / len(yc)
    assert abs(m["control/acc"] - majority) < 0.08
    # selectivity, from accuracies by hand
    assert m["selectivity"] == pytest.approx(m["test/acc"] - m["control/acc"])
    for lab in ("5%", "25%"):
        assert m[f"top/selectivity@{lab}"] == pytest.approx(m[f"top/acc@{lab}"] - m[f"top/control_acc@{lab}"])
    # masking: the all-neuron probe with only the planted columns is still far above chance
    assert m["mask/acc@25%"] > 0.6
    # minimal set: planted neurons suffice; never more than all
    assert 1 <= m["minimal/neurons"] <= 10
    assert m["minimal/acc"] >= 0.97 * m["test/acc"]
    assert m["sites/layers.0@10%"] + m["sites/layers.1@10%"] == 4


def test_bank_equals_separate_probes(planted, tmp_path):
    dm, plant = planted
    rest = [i for i in range(dm.num_features) if i not in plant]
    ranking = _ranking(dm, plant + rest)
    over = ["evaluation=[retrain,control,sites]", "evaluation.retrain.random_seeds=[0]", "evaluation.percentages=[5]"]
    a = evaluate_ranking(ranking, dm, _cfg(tmp_path, *over))
    b = evaluate_ranking(ranking, dm, _cfg(tmp_path, *over, "evaluation.bank=false"))
    # two banks: the all-neuron probes (task and control, as the probe is configured) and the retrained ones
    assert a["eval/probe_banks"] == 2 and b["eval/probe_banks"] == 0
    for k, v in a.items():
        if k.startswith(("top/", "random/", "bottom/", "control/", "test/acc")) and "std" not in k:
            assert b[k] == pytest.approx(v, abs=0.02), k


def test_banked_retraining_keeps_proximal_l1_and_the_retrain_overrides(planted, tmp_path):
    from neurolab.evaluation.masking import probe_weights
    from neurolab.probes import fit_probe

    dm, plant = planted
    cfg = _cfg(tmp_path, "regularization.l1_mode=proximal", "regularization.lambda_l1=0.02",
               "evaluation.retrain_probe.module.optimizer.lr=0.2")
    tr = Retrainer(dm, cfg, retrain_probe=cfg.evaluation.retrain_probe)
    assert tr.cfg.probe.module.optimizer.lr == 0.2 and tr.cfg_all.probe.module.optimizer.lr == 0.03
    cols = np.arange(0, dm.num_features, 2)
    all_job, half = ProbeJob("all", None, kind="all"), ProbeJob("half", cols)
    tr.train([all_job, half])
    assert tr.banks == 2 and tr.num_fits == 2
    W = probe_weights(tr.predictor(all_job))[0]
    single, m_all = fit_probe(tr.dm, tr.cfg_all, save=False)  # all neurons: the probe's own settings
    Ws = single.weight_matrix
    assert (Ws == 0).mean() > 0.3  # proximal L1 at this lambda zeroes many weights
    assert ((W == 0) == (Ws == 0)).mean() > 0.97
    assert tr.score(all_job) == pytest.approx(m_all["test/acc"], abs=0.01)
    # asking again (under another name) trains nothing
    assert tr.score(ProbeJob("again", cols)) == tr.score(half) and tr.num_fits == 2
    # selected neurons: the retrain overrides (a 0.2 learning rate gives other weights than 0.03)
    slow, _ = fit_probe(tr.dm, tr.cfg_all, columns=cols, save=False)
    fast, _ = fit_probe(tr.dm, tr.cfg, columns=cols, save=False)
    Wh = probe_weights(tr.predictor(half))[0]
    assert np.abs(Wh - fast.weight_matrix).max() < 0.1 * np.abs(fast.weight_matrix).max()
    assert np.abs(Wh - slow.weight_matrix).max() > np.abs(Wh - fast.weight_matrix).max()


def test_masked_accuracy_reference():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(3, 6))
    b = rng.normal(size=3)
    X = rng.normal(size=(200, 6))
    y = rng.integers(0, 3, 200)
    keep = [1, 4]
    Xm = np.zeros_like(X)
    Xm[:, keep] = X[:, keep]
    ref = np.mean(np.argmax(Xm @ W.T + b, axis=1) == y)
    assert masked_accuracy(W, b, X, y, keep) == pytest.approx(ref)


def test_minimal_set_search_finds_the_threshold():
    # accuracy grows with n and first reaches 0.9 at n = 37
    acc = lambda n: 0.5 + 0.4 * min(n, 37) / 37 - (0.0 if n >= 37 else 1e-6)
    calls = []

    def batched(ns):
        calls.append(list(ns))
        return {n: acc(n) for n in ns}

    n, a, info = minimal_neuron_set(batched, 1000, 0.9, max_steps=12, batched=True)
    assert n == 37 and info["exact"] and info["reached"]
    assert len(calls) <= 3
    n, a, info = minimal_neuron_set(acc, 1000, 0.95)  # unreachable
    assert n == 1000 and not info["reached"]


def test_select_lambda_largest_within_tolerance():
    scores = {0.0: 0.90, 1e-4: 0.905, 1e-3: 0.901, 1e-2: 0.85}
    assert select_lambda(scores, 0.005) == 1e-3
    assert select_lambda(scores, 0.0) == 1e-4


def test_choose_lambda_on_dev(planted, tmp_path):
    dm, _ = planted
    cfg = _cfg(tmp_path)
    lam, m = choose_lambda(dm, cfg, grid=[0.0, 1e-3, 1.0], tolerance=0.01)
    # a huge penalty ruins dev accuracy; the choice is the largest λ within the tolerance of the best
    assert m["lambda/acc@1"] < max(m["lambda/acc@0"], m["lambda/acc@0.001"]) - 0.1
    best = max(m[f"lambda/acc@{g:g}"] for g in (0.0, 1e-3, 1.0))
    assert lam == max(g for g in (0.0, 1e-3, 1.0) if m[f"lambda/acc@{g:g}"] >= best - 0.01)
    assert m["lambda/chosen"] == lam
    c = with_lambda(cfg, 0.5)
    assert c.regularization.lambda_l1 == 0.5 and c.regularization.lambda_l2 == 0.5 and cfg.regularization.lambda_l1 != 0.5


def test_imbalanced_concept_reports_majority_rate_and_macro_f1(tmp_path):
    """On a 95/5 binary concept, pure-noise neurons retrain to the majority rate: accuracy alone looks
    fine, macro-F1 shows the probe never predicts the rare class (sklearn's f1 of all-majority
    predictions is 0.487 here)."""
    from sklearn.metrics import f1_score

    from neurolab.data import ArrayData

    rng = np.random.default_rng(0)
    n = 3000
    y = (rng.random(n) < 0.05).astype(np.int64)
    X = rng.standard_normal((n, 20)).astype(np.float32)
    X[:, 7] += 4.0 * y
    dm = ArrayData.from_split(X, y, class_names=["no", "yes"], sites=["layers.0"], neurons_per_site={"layers.0": 20})
    ranking = _ranking(dm, [7] + [i for i in range(20) if i != 7])
    m = evaluate_ranking(ranking, dm, _cfg(tmp_path, "evaluation=[retrain]", "evaluation.percentages=[5]"))
    yt = dm.arrays("test")[1]
    assert m["majority/acc"] == pytest.approx(np.bincount(yt).max() / len(yt))
    assert m["bottom/acc@5%"] == pytest.approx(m["majority/acc"], abs=0.01)
    all_majority = f1_score(yt, np.zeros_like(yt), average="macro")
    assert m["bottom/f1_macro@5%"] == pytest.approx(all_majority, abs=0.03)
    assert m["top/f1_macro@5%"] > 0.85 > m["bottom/f1_macro@5%"] + 0.3
