"""Integrated gradients through ``task=lm`` (the model's own LM head) on tiny random float64 models: a
causal GPT-2 (next token: the positions that predict a word's tokens are scaled) and a masked BERT
(the word's masked tokens). Checked against a reference written directly on the transformers model
(its logits, an autograd gradient at each path point, no live-model code beyond the head's choice
of inputs and words), and by completeness."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolab.causal import LiveModel, LMHead
from neurolab.causal.attribution import integrated_gradients, path_points
from neurolab.models.hooks import intervene
from tests.helpers.causal import random_labels, sentences, tiny_lm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["gpt2", "bert"])
def lm(request):
    model, tok = tiny_lm(request.param)
    model = model.double()
    words = sentences(1)
    n = len(words)
    live = LiveModel(model, tok, LMHead(seed=0, mask_prob=0.3), words=words, labels=random_labels(words),
                     splits={"test": np.arange(n)}, batch_tokens=256)
    return request.param, live


def _reference(live, site: str, steps: int) -> dict[int, np.ndarray]:
    """Per example row: IG of the mean log-probability of the word's gold tokens, computed on the
    transformers model: the site's activation at the positions that predict the word (the token
    before each token for a causal LM, the masked tokens themselves for a masked LM) is moved from 0
    to its value, everything else keeps its value."""
    alphas, weights = path_points(steps)
    model = live.model
    out: dict[int, np.ndarray] = {}
    for batch in live.batches("test"):
        kw = live.model_inputs(batch)
        plan = live.head._plan(live, batch)
        B, T = batch.input_ids.shape
        hook = live.site(site)  # (the last layer of GPT-2 is read after its final norm, as stored)
        acts = {}
        with torch.no_grad(), intervene(model, {hook: lambda t: acts.setdefault("a", t)}):
            model(**kw)
        a = acts["a"].detach().clone()  # [B, T, H]
        for j, row in enumerate(plan["rows"].tolist()):
            sel = plan["seg"] == j
            src, gold = plan["src"][sel], plan["gold"][sel]
            if live.head.lm == "masked":
                assert torch.equal(src, plan["pos"][sel])
            else:
                assert torch.equal(src, plan["pos"][sel] - 1)
            flat_a = a.reshape(B * T, -1)[src]  # [k, H]
            total = torch.zeros(a.shape[-1], dtype=torch.float64)
            for al, w in zip(alphas, weights):
                leaf = (al * flat_a).clone().requires_grad_(True)

                def fn(t, leaf=leaf):
                    t = t.clone().reshape(B * T, -1)
                    t[src] = leaf
                    return t.reshape(B, T, -1)

                with intervene(model, {hook: fn}):
                    logits = model(**kw).logits.reshape(B * T, -1)
                f = torch.log_softmax(logits[src], -1).gather(1, gold.view(-1, 1)).mean()
                (g,) = torch.autograd.grad(f, [leaf])
                total += w * (g * flat_a).sum(0)
            out[row] = total.numpy()
    return out


@pytest.mark.parametrize("site", ["layers.0.mlp", "layers.0", "layers.1"])
def test_lm_attribution_equals_a_direct_reference(lm, site):
    kind, live = lm
    res = integrated_gradients(live, [site], split="test", steps=4, objective="loss")
    ref = _reference(live, site, 4)
    assert sorted(ref) == res.rows.tolist()
    got = res.attributions[site]
    want = np.stack([ref[r] for r in res.rows])
    assert np.allclose(got, want, atol=1e-10, rtol=1e-7), np.abs(got - want).max()
    # every word's prediction depends on the positions scaled: the baseline changes it (for the causal
    # LM this needs the positions before the word's tokens, its own cannot reach its first token)
    delta = res.f_actual - res.f_baseline[site]
    assert np.all(np.abs(delta) > 1e-8), kind
    assert np.all(np.abs(got).sum(1) > 0)


def test_lm_attribution_completeness(lm):
    """Sum of attributions = f(actual) - f(baseline): the Riemann error shrinks with the steps and
    Gauss-Legendre is near exact on this smooth path; the head's f(actual) is its own log-probability."""
    kind, live = lm
    err = {k: integrated_gradients(live, ["layers.0.mlp"], split="test", steps=k, objective="loss").completeness_error()
           for k in (2, 16)}
    assert err[16] < err[2] / 4 and err[16] < 0.05, (kind, err)
    gl = integrated_gradients(live, ["layers.0.mlp"], split="test", steps=12, rule="gauss_legendre", objective="loss")
    assert gl.completeness_error() < 1e-6, kind
    # f(actual) of objective=loss is minus the head's per-word loss on the unchanged model
    run = live.run([], "test")
    pos = np.searchsorted(run.examples.ids, gl.rows)
    assert np.allclose(gl.f_actual, -run.base.loss[pos], atol=1e-10)
