"""Integrated gradients in the live model (method=attribution) on a tiny random BERT (float64) with a
planted tagger head that reads z-scored layers.1 (class c's logit is 2 z_c plus 0.01 of every other
unit; labels are its own predictions). Checked against closed forms, Captum and planted units."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolab.causal import LiveModel
from neurolab.causal.attribution import AttributionMethod, integrated_gradients, path_points
from neurolab.data import ArrayData
from neurolab.errors import ConfigError
from neurolab.methods.base import RunContext
from neurolab.models.hooks import capture, intervene
from tests.helpers.causal import TAGS, planted_tagger

PLANTED = [0, 1, 2]  # unit c of layers.1 drives class c
SITES = ["layers.0", "layers.1"]
NPS = {"layers.0": 32, "layers.1": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


def _live(model, tok, head, words, labels, splits, **kw):
    return LiveModel(model, tok, head, words=words, labels=labels, splits=splits, concept_values={"A"},
                     concept_name="tags", **kw)


@pytest.fixture(scope="module")
def planted():
    model, tok, head, words, labels, splits = planted_tagger(2, PLANTED)
    live = _live(model, tok, head, words, labels, splits, batch_tokens=128)
    return live, (model, tok, head, words, labels, splits)


def _data(live):
    rows, acts = live.activations(SITES, "train")
    X = np.concatenate([acts[s] for s in SITES], axis=1)
    y = np.array([TAGS.index(live.labels[r]) for r in rows])
    return ArrayData({"train": (X, y), "val": (X[:10], y[:10]), "test": (X[:10], y[:10])}, class_names=TAGS,
                     sites=SITES, neurons_per_site=NPS, concept="tags=A")


def test_path_points():
    a, w = path_points(4)
    assert np.allclose(a, [0, .25, .5, .75]) and np.allclose(w, .25)
    a, w = path_points(3, "gauss_legendre")
    assert np.isclose(w.sum(), 1) and np.isclose((w * a ** 5).sum(), 1 / 6)  # exact up to degree 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="at least 1 step"):
            path_points(bad)
    with pytest.raises(ConfigError, match="rule="):
        path_points(4, "simpson")


def test_completeness_error_shrinks_with_steps(planted):
    """Sum of attributions vs f(actual) - f(baseline): the left Riemann sum's error falls like 1/steps;
    Gauss-Legendre is exact to rounding on this smooth path (the head's site, softmax of a linear map)."""
    live, _ = planted
    err = {}
    for steps in (2, 16):
        res = integrated_gradients(live, ["layers.1"], split="test", max_sentences=4, steps=steps)
        err[steps] = res.completeness_error()
        assert np.all(np.isfinite(res.f_baseline["layers.1"])) and np.all(res.f_actual > 0)
    assert err[16] < err[2] / 4 and err[16] < 0.05, err
    gl = integrated_gradients(live, ["layers.1"], split="test", max_sentences=4, steps=16, rule="gauss_legendre")
    assert gl.completeness_error() < 1e-8
    # left Riemann: f(baseline) comes from the path's first point; Gauss-Legendre needs its own pass: equal
    assert np.allclose(gl.f_baseline["layers.1"], res.f_baseline["layers.1"], atol=1e-12)
    # a site below the head (through attention and layer norms): still shrinking
    e2 = integrated_gradients(live, ["layers.0.mlp"], split="test", max_sentences=4, steps=2).completeness_error()
    e16 = integrated_gradients(live, ["layers.0.mlp"], split="test", max_sentences=4, steps=16).completeness_error()
    assert e16 < e2 / 4, (e2, e16)


@pytest.mark.parametrize("positions", ["target", "all"])
def test_head_linear_in_the_site_gives_w_times_difference(planted, positions):
    """At the head's own site with objective=logit the prediction is linear in the site: IG is exactly
    w * (a - a') (a: the word's aggregated row; z-scoring divides w by the std), at any step count."""
    live, (model, tok, head, *_) = planted
    W = head.weight.numpy() / head.std.numpy()
    rows, acts = live.activations(["layers.1"], "test", max_sentences=5)
    a = acts["layers.1"].astype(np.float64)
    gold = np.array([TAGS.index(live.labels[r]) for r in rows])
    base = np.linspace(-0.3, 0.3, 32)
    for steps, rule in ((1, "riemann_left"), (3, "gauss_legendre")):
        res = integrated_gradients(live, ["layers.1"], split="test", max_sentences=5, steps=steps, rule=rule,
                                   objective="logit", positions=positions, baselines={"layers.1": base})
        assert np.array_equal(res.rows, rows)
        want = W[gold] * (a - base)  # (positions=all scales special tokens too; the head reads word tokens)
        assert np.allclose(res.attributions["layers.1"], want, atol=1e-10), np.abs(res.attributions["layers.1"] - want).max()
        assert res.completeness_error() < 1e-10


@pytest.mark.parametrize("positions", ["target", "all"])
@pytest.mark.parametrize("rule", ["riemann_left", "gauss_legendre"])
@pytest.mark.parametrize("site", ["layers.0", "layers.1.mlp"])
def test_equals_captum(planted, positions, rule, site):
    """Per-token attributions at every position of layers.0 for one word equal Captum's
    IntegratedGradients over the same path (the site's activation as the input of the rest of the
    model; the baseline: zero at the word's tokens, or at every position)."""
    from captum.attr import IntegratedGradients

    live, (model, tok, head, words, labels, splits) = planted
    sent = 1
    one = _live(model, tok, head, [words[sent]], [labels[sent]], {"test": [0]})
    res = integrated_gradients(one, [site], split="test", steps=7, rule=rule, positions=positions,
                               keep_tokens=True)
    batch = one.batches("test")[0]
    ids, am = batch.input_ids, batch.attention_mask
    trow = batch.token_row[0]
    with torch.no_grad(), capture(model, [site]) as cap:
        model(input_ids=ids, attention_mask=am)
    a0 = cap[site].clone()
    for r in res.rows:
        toks = torch.nonzero(trow == int(r)).flatten()
        gold = TAGS.index(one.labels[r])

        def f(a):  # a [N, T, H] -> p(gold) of word r
            N = a.shape[0]
            with intervene(model, {site: lambda t: a}), capture(model, ["layers.1"], detach=False) as c1:
                model(input_ids=ids.repeat(N, 1), attention_mask=am.repeat(N, 1))
            row = c1["layers.1"][:, toks].mean(1)
            return torch.softmax(head.logits_of(row), -1)[:, gold]

        baseline = torch.zeros_like(a0)
        if positions == "target":
            baseline = a0.clone()
            baseline[:, toks] = 0
        ref = IntegratedGradients(f).attribute(a0, baselines=baseline, n_steps=7, internal_batch_size=7,
                                               method={"gauss_legendre": "gausslegendre"}.get(rule, rule)).numpy()
        got = res.tokens[site][int(r)]
        # Captum computes its path's points in float32 (torch.linspace): agreement to ~1e-7 relative; the
        # zero baseline in the residual stream makes steep paths (attributions up to ~1e7)
        tol = 1e-6 * np.abs(ref).max() + 1e-12
        assert got.shape == ref.shape and np.abs(ref).max() > 0
        assert np.abs(got - ref).max() < tol, np.abs(got - ref).max() / np.abs(ref).max()
        assert np.abs(res.attributions[site][res.rows == r][0] - ref.sum((0, 1))).max() < 1e-6 * np.abs(ref).sum((0, 1)).max() + 1e-12


def test_batched_equals_one_at_a_time(planted):
    live, (model, tok, head, words, labels, splits) = planted
    kw = dict(split="test", max_sentences=6, steps=5, objective="loss")
    batched = integrated_gradients(live, SITES, chunk_tokens=1 << 16, sentences_per_pass=8, **kw)
    default = integrated_gradients(live, SITES, **kw)
    single = _live(model, tok, head, words, labels, splits, batch_tokens=128, max_batch_sentences=1)
    alone = integrated_gradients(single, SITES, chunk_tokens=1, cache=False, **kw)
    assert np.array_equal(batched.rows, alone.rows) and np.array_equal(default.rows, alone.rows)
    for s in SITES:
        assert np.allclose(default.attributions[s], alone.attributions[s], atol=1e-10)
        assert np.allclose(batched.attributions[s], alone.attributions[s], atol=1e-10)
        assert np.allclose(batched.f_baseline[s], alone.f_baseline[s], atol=1e-12)
    assert np.allclose(batched.f_actual, alone.f_actual, atol=1e-12)


def test_method_finds_the_planted_units(planted, tmp_path):
    live, _ = planted
    data = _data(live)
    m = AttributionMethod(steps=8, split="test", max_sentences=12)
    m.fit(data.subset(np.arange(32, 64)), RunContext(live=lambda: live, model="tiny"))
    assert m.ranking_.method == "attribution" and len(m.ranking_) == 32 and m.ranking_.concept == "tags=A"
    assert m.ranking_.indices[0] == 32 + PLANTED[0], m.ranking_.names[:5]
    for c, u in zip(TAGS, PLANTED):
        assert m.rankings_[c].indices[0] == 32 + u and m.rankings_[c].concept == f"tags={c}"
    assert 0 <= m.metrics_["attribution/completeness_error"] < 0.1
    assert "attribution/completeness_error/layers.0" not in m.metrics_  # no column there: not attributed
    paths = m.write(tmp_path)
    z = np.load(paths[0])
    assert z["attributions"].dtype == np.float16 and z["attributions"].shape == (len(z["rows"]), 32)
    assert {p.name for p in paths[1:]} == {"A.json", "B.json", "C.json"}
    share = AttributionMethod(steps=8, split="test", max_sentences=12, rank_by="share", baseline="mean")
    share.fit(data.subset(np.arange(32, 64)), RunContext(live=lambda: live, model="tiny"))
    assert share.ranking_.indices[0] == 32 + PLANTED[0], share.ranking_.names[:5]


def test_bad_input(planted):
    live, _ = planted
    with pytest.raises(ConfigError, match="at least 1 step"):
        integrated_gradients(live, ["layers.0"], split="test", steps=0)
    with pytest.raises(ConfigError, match="not a site of model"):
        integrated_gradients(live, ["layers.9"], split="test", steps=2)
    with pytest.raises(ConfigError, match="'layers.7' is not a site of model"):
        AttributionMethod(steps=2).fit(
            ArrayData({"train": (np.zeros((4, 4)), np.zeros(4, int))}, class_names=TAGS, sites=["layers.7"],
                      neurons_per_site={"layers.7": 4}), RunContext(live=lambda: live))
    with pytest.raises(ConfigError, match="at least 1 step"):
        AttributionMethod(steps=0).fit(_data(live), RunContext(live=lambda: live))
    with pytest.raises(ConfigError, match="needs the live model"):
        AttributionMethod().fit(_data(live), RunContext())
    with pytest.raises(ConfigError, match="sentences_per_pass"):
        integrated_gradients(live, ["layers.0"], split="test", sentences_per_pass=0)
    with pytest.raises(ConfigError, match="positions="):
        integrated_gradients(live, ["layers.0"], split="test", positions="first")


def test_knowledge_neuron_refinement_closed_form():
    from neurolab.causal.attribution import coarse_neurons, knowledge_neurons, refine_neurons

    A = np.array([[1.0, 0.3, 0.1, -2.0], [0.0, -1.0, -0.5, 0.0], [0.5, 0.5, 0.09, 0.11]])
    assert coarse_neurons(A, 0.2).tolist() == [[True, True, False, False], [False] * 4, [True, True, False, True]]
    share = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.1, 0.1, 0.1])
    C = np.arange(10)[:, None] < np.round(share * 10)[None, :]  # neuron j in the first 10 * share[j] examples
    cols, p = refine_neurons(C, 0.7)
    assert cols.tolist() == [0, 1, 2] and p == 0.7
    cols, p = refine_neurons(C, 0.7, keep=(1, 1))
    assert cols.tolist() == [0] and p == 0.95
    cols, p = refine_neurons(C, 0.7, keep=(5, 8))
    assert cols.tolist() == [0, 1, 2, 3, 4] and p == 0.5
    kn = knowledge_neurons(np.where(C, 1.0, 0.0), ["x"] * 10)
    assert kn["x"]["neurons"].tolist() == [0, 1, 2] and kn["x"]["examples"] == 10
    with pytest.raises(ConfigError, match="no example"):
        refine_neurons(np.zeros((0, 3), bool))


def test_knowledge_neurons_suppress_and_enhance(planted):
    """The planted tagger: class c's knowledge neurons include unit c of layers.1; zeroing them lowers
    p(gold) on class c's words, doubling them raises it. (Raw zero is not neutral for the other
    words here: the head z-scores its input, so zeroing moves them too; the real-data test compares.)"""
    from neurolab.causal.attribution import knowledge_effects, knowledge_neurons

    live, _ = planted
    data = _data(live)
    m = AttributionMethod(steps=8, split="test", max_sentences=12).fit(data.subset(np.arange(32, 64)),
                                                                       RunContext(live=lambda: live))
    kn = knowledge_neurons(m.attributions_, m.result_.labels, t=0.2, p=0.7)
    assert set(kn) == set(TAGS)
    for c, u in zip(TAGS, PLANTED):
        assert u in kn[c]["neurons"].tolist() and 1 <= len(kn[c]["neurons"]) <= 5, kn[c]
    eff = knowledge_effects(live, {c: [("layers.1", int(u)) for u in kn[c]["neurons"]] for c in TAGS}, split="test",
                            max_sentences=12)
    for c in TAGS:
        assert eff[f"kn/suppress/{c}/own"] < -0.05 and np.isfinite(eff[f"kn/suppress/{c}/other"]), eff
        assert eff[f"kn/enhance/{c}/own"] > 0, eff
