"""method=neuron_mask method.mode=model on a tiny random BERT with a planted tagger head: the head reads
only three known units of layers.1 (class c's logit is 2 z_c of unit c, z-scored), so the mask under
a KL constraint must keep those units open and may close every other one."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.causal.mask import LiveMask
from neurolab.errors import ConfigError
from neurolab.methods.base import RunContext
from neurolab.probes.mask import NeuronMask
from neurolab.probes.mask_method import NeuronMaskMethod

from neurolab.data import ArrayData
from tests.helpers.causal import TAGS
from tests.helpers.live_mask import PLANTED, SITES, planted_live_mask_data

FAST = dict(eps=0.02, lr=0.1, lambda_lr=0.1, lambda_init=100.0, target_kept=3, anneal_epochs=4)


@pytest.fixture(scope="module")
def planted():
    return planted_live_mask_data(4)


def _method(**kw):
    mod = dict(FAST)
    mod.update(kw.pop("module", {}))
    return NeuronMaskMethod(module=lambda num_gates: NeuronMask(num_gates, **mod), mode="model",
                            max_epochs=kw.pop("max_epochs", 16), live={"batch_sentences": 4, "eps": None, **kw})


def test_mask_keeps_the_planted_units_and_closes_the_rest(planted, one_thread, tmp_path):
    live, data = planted
    m = _method().fit(data.subset(np.arange(32, 64)), RunContext(live=lambda: live, model="tiny"))
    r = m.ranking_
    planted_cols = {32 + u for u in PLANTED}
    assert set(r.indices[:3].tolist()) == planted_cols, r.names[:6]
    assert m.metrics_["mask/kept"] == 3, m.metrics_
    assert m.metrics_["mask/kl"] <= 0.02 and m.metrics_["mask/constraint_met"] == 1
    assert np.isclose(m.metrics_["mask/kept_share"], 3 / 32)
    assert abs(m.metrics_["mask/acc"] - m.metrics_["mask/base_acc"]) <= 0.05  # (random gold labels)
    assert r.method == "neuron_mask" and r.sites == SITES and len(r) == 32 and r.concept == "tags=A"
    # the path: one record per epoch with the KL over the whole split of the test-time gates
    assert len(m.mask_.path_) == 16 + 4 and all("kl" in p and "kept_share" in p for p in m.mask_.path_)
    # an independent check of the reported KL: the live model run by hand with only the kept units open
    mask = m.mask_
    g = np.zeros(32, np.float32)
    g[[c - 32 for c in r.indices[:3]]] = 1.0
    import torch

    kl_hand = mask.evaluate(torch.from_numpy(g))["kl"]
    assert np.isclose(kl_hand, m.metrics_["mask/kl"], atol=1e-6)
    # with every gate closed the KL is large: the constraint is what keeps the planted units
    assert mask.evaluate(torch.zeros(32))["kl"] > 0.1
    paths = m.write(tmp_path)
    assert [p.name for p in paths] == ["mask_path.json", "mask_path.png"] and paths[1].stat().st_size > 1000


def test_same_seed_same_ranking_bytes(planted, one_thread, tmp_path):
    live, data = planted
    d = data.subset(np.arange(32, 64))
    a = _method(max_epochs=4).fit(d, RunContext(live=lambda: live, seed=0)).ranking_.to_json(tmp_path / "a.json")
    b = _method(max_epochs=4).fit(d, RunContext(live=lambda: live, seed=0)).ranking_.to_json(tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()


def test_kept_prefix_gives_the_gates_of_recomputing_it(planted, one_thread):
    """Between epochs the mask keeps, per batch, the outputs of the blocks below the gated site and reruns
    only the blocks above; with no memory for them (reference_mb=0) every pass runs the whole model.
    Both give the same gates, path and ranking."""
    import torch

    live, data = planted
    d = data.subset(np.arange(32, 64))
    kept = _method(max_epochs=3, reference_mb=256.0).fit(d, RunContext(live=lambda: live, seed=0))
    redo = _method(max_epochs=3, reference_mb=0.0).fit(d, RunContext(live=lambda: live, seed=0))
    assert kept.mask_.start_ > 0 and len(kept.mask_._prefix) == len(kept.mask_.batches_)
    assert len(redo.mask_._prefix) == 0
    torch.testing.assert_close(kept.mask_.gates.log_alpha, redo.mask_.gates.log_alpha, rtol=0, atol=1e-6)
    assert [r["kept"] for r in kept.mask_.path_] == [r["kept"] for r in redo.mask_.path_]
    np.testing.assert_allclose([r["kl"] for r in kept.mask_.path_], [r["kl"] for r in redo.mask_.path_], atol=1e-6)
    assert kept.ranking_.indices.tolist() == redo.ranking_.indices.tolist()
    # the epoch-end evaluation is reused only for the very same gates
    m = kept.mask_
    half = torch.ones(32)
    half[::2] = 0
    a, b, a2 = m.evaluate(torch.ones(32)), m.evaluate(half), m.evaluate(torch.ones(32))
    assert a == a2 and a["kl"] < 1e-9 and b["kl"] > 1e-4


def test_two_sites_planted_units_kept(planted, one_thread):
    """Gates on both sites train together; layers.0 feeds layers.1 through the residual stream, so some of
    its units may stay open, but the planted units of layers.1 lead and layers.1's others close."""
    live, data = planted
    m = _method(max_epochs=20).fit(
        data, RunContext(live=lambda: live))
    kept = set(m.mask_.kept().tolist())
    assert {32 + u for u in PLANTED} <= kept
    assert not (kept & (set(range(32, 64)) - {32 + u for u in PLANTED})), m.ranking_.names[:10]
    assert m.metrics_["mask/kl"] <= 0.02 and m.metrics_["mask/constraint_met"] == 1
    assert len(kept) < 64


def test_bad_input(planted, one_thread, caplog):
    live, data = planted
    d = data.subset(np.arange(32, 64))
    with pytest.raises(ConfigError, match="set task="):
        _method().fit(d, RunContext())
    bad = ArrayData({"train": (np.zeros((4, 8), np.float32), np.arange(4) % 3)}, class_names=TAGS,
                    sites=["layers.7"], neurons_per_site={"layers.7": 8}, concept="tags=A")
    with pytest.raises(ConfigError, match="not a site of model"):
        _method().fit(bad, RunContext(live=lambda: live))
    with pytest.raises(ConfigError, match="unknown keys"):
        _method(split_name="dev").fit(d, RunContext(live=lambda: live))
    with pytest.raises(ConfigError, match="scope"):
        _method(scope="concept").fit(d, RunContext(live=lambda: live))
    # an unreachable constraint: eps 0 and gates pushed shut from the first step -> a warning, the closest state
    import logging

    with caplog.at_level(logging.WARNING):
        m = _method(max_epochs=2, module={"eps": 0.0, "lambda_init": 0.01, "lr": 1.0, "anneal_epochs": 0,
                                          "target_kept": None}, init_open=0.5).fit(
            d, RunContext(live=lambda: live))
    assert m.metrics_["mask/constraint_met"] == 0 and m.metrics_["mask/kl"] > 0
    assert "not met" in caplog.text and "closest state" in caplog.text


def test_head_for_another_concept_is_refused(planted, one_thread):
    live, data = planted
    d = data.subset(np.arange(32, 64))
    d.concept = "upos=NOUN"
    with pytest.raises(ConfigError, match="predicts concept 'tags'"):
        _method().fit(d, RunContext(live=lambda: live))


def test_live_mask_subword_gates_follow_the_words(planted, one_thread):
    """A gate multiplies every token of a sentence's window (scope all) or only its words' tokens (words):
    both give the unmasked output with every gate open."""
    import torch

    live, _ = planted
    for scope in ("all", "words"):
        mk = LiveMask(live, ["layers.1"], {"layers.1": 32}, np.arange(32), split="dev", batch_sentences=4, scope=scope)
        assert mk.evaluate(torch.ones(32))["kl"] < 1e-10
        assert mk.evaluate(torch.zeros(32))["kl"] > 0.1


def test_mean_baseline_shut_gates_leave_the_training_means(planted, one_thread):
    """baseline=mean: a shut gate sets its unit to the unit's mean over the training rows; checked against a
    hook on the Hugging Face model's layer 1 output setting every unit to that mean, and the planted units
    are still the ones kept."""
    import torch
    import torch.nn.functional as F

    from neurolab.causal.interventions import NeuronStats

    live, data = planted
    d = data.subset(np.arange(32, 64))
    mu = NeuronStats(d, "train", pool_size=0).mean
    assert np.allclose(mu, data.arrays("train")[0][:, 32:].astype(np.float64).mean(0), atol=1e-5)
    mk = LiveMask(live, ["layers.1"], {"layers.1": 32}, np.arange(32), split="dev", batch_sentences=4,
                  baseline="mean", means=mu)
    got = mk.evaluate(torch.zeros(32))["kl"]
    base = torch.as_tensor(mu, dtype=torch.float32)

    def hook(mod, args, out):
        return (base.expand_as(out[0]).clone(),) + tuple(out[1:]) if isinstance(out, tuple) else base.expand_as(out)

    tot, n = 0.0, 0
    block = live.model.encoder.layer[1]
    for b in live.batches("dev"):
        kw = live.model_inputs(b)
        with torch.no_grad():
            full = live.model(**kw, output_hidden_states=True)
            h = block.register_forward_hook(hook)
            try:
                shut = live.model(**kw, output_hidden_states=True)
            finally:
                h.remove()
        cap = lambda o: {"layers.1": o.hidden_states[2]}
        lp = F.log_softmax(live.head.score(live, b, full, cap(full)).logits[0].double(), -1)
        lq = F.log_softmax(live.head.score(live, b, shut, cap(shut)).logits[0].double(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        tot, n = tot + float(kl.sum()), n + kl.numel()
    assert got > 0.05 and got == pytest.approx(tot / n, rel=1e-4)
    m = _method(baseline="mean").fit(d, RunContext(live=lambda: live))
    assert set(m.ranking_.indices[:3].tolist()) == {32 + u for u in PLANTED}
    assert m.metrics_["mask/constraint_met"] == 1 and m.ranking_.extra["baseline"] == "mean"
    with pytest.raises(ConfigError, match="baseline"):
        _method(baseline="median").fit(d, RunContext(live=lambda: live))
