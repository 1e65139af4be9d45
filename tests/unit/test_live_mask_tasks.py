"""method=neuron_mask method.mode=model with task=lm (a tiny random GPT-2: next-token distributions; a
tiny random BERT masked LM: the masked words' distributions) and task=classifier (a planted sentence
classifier on layers.1; the model's own sequence-classification head): end to end through the Python
method, the constraint met, and the reported KL confirmed by an independent run of the Hugging Face model
with forward hooks that shut every gated unit outside the kept set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurolab.causal import ClassifierHead, LiveModel, LMHead
from neurolab.data import ArrayData
from neurolab.errors import ConfigError
from neurolab.methods.base import RunContext
from neurolab.probes.mask import NeuronMask
from neurolab.probes.mask_method import NeuronMaskMethod
from tests.helpers.causal import TAGS, random_labels, sentences, tiny_lm
from tests.helpers.extraction import wordpiece_tokenizer

FAST = dict(lr=0.1, lambda_lr=0.2, lambda_init=1.0, target_kept=None, anneal_epochs=0)


def _splits(n):
    return {"train": np.arange(0, n // 2), "dev": np.arange(n // 2, n)}


def _data(site="layers.1", width=32, concept="tags"):
    X = np.zeros((6, width), np.float32)
    return ArrayData({"train": (X, np.arange(6) % 3)}, class_names=TAGS, sites=[site],
                     neurons_per_site={site: width}, concept=concept)


def _fit(live, data, eps, epochs=12, **live_opts):
    mod = dict(FAST, eps=eps)
    m = NeuronMaskMethod(module=lambda num_gates: NeuronMask(num_gates, **mod), mode="model", max_epochs=epochs,
                         live={"batch_sentences": 4, "eps": None, **live_opts})
    return m.fit(data, RunContext(live=lambda: live, seed=0))


def _hand_kl(live, block, kept, width=32):
    """Mean KL(p_full || p_kept) over the head's scored examples of the dev split: the Hugging Face model
    run twice per batch, the second time with a hook on ``block`` (the module whose output is the gated
    site) multiplying its output by the kept set's 0/1 gates; the head's own scoring picks the examples."""
    g = torch.zeros(width)
    g[list(kept)] = 1.0

    def hook(mod, args, out):
        if isinstance(out, tuple):
            return (out[0] * g,) + tuple(out[1:])
        return out * g

    tot, n = 0.0, 0
    for b in live.batches("dev"):
        kw = live.model_inputs(b)
        with torch.no_grad():
            full = live.model(**kw)
            h = block.register_forward_hook(hook)
            try:
                masked = live.model(**kw)
            finally:
                h.remove()
        lp = live.head.score(live, b, full, {}).logits[0]
        lq = live.head.score(live, b, masked, {}).logits[0]
        lp, lq = F.log_softmax(lp.double(), -1), F.log_softmax(lq.double(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        tot += float(kl.sum())
        n += kl.numel()
    return tot / n, n


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_lm_mask_meets_its_constraint_and_the_kl_is_confirmed(kind, one_thread):
    model, tok = tiny_lm(kind)
    words = sentences(4)
    live = LiveModel(model, tok, LMHead(mask_prob=0.3, seed=0), words=words, labels=random_labels(words),
                     splits=_splits(len(words)), batch_tokens=256)
    # the module whose output is layers.1 (the last of two layers: GPT-2's final layer norm)
    block = model.transformer.ln_f if kind == "gpt2" else model.bert.encoder.layer[1]
    # a random LM is near uniform: the constraint is set at a fifth of the KL with every gate shut
    shut, _ = _hand_kl(live, block, [])
    eps = shut / 5
    m = _fit(live, _data(), eps)
    met = m.metrics_
    assert met["mask/constraint_met"] == 1 and met["mask/kl"] <= eps, met
    kept = m.mask_.kept()
    assert met["mask/kept"] == len(kept) and "mask/acc" not in met  # no class accuracy for an LM
    kl, n = _hand_kl(live, block, kept)
    assert n == met["mask/examples"] > 0
    assert kl == pytest.approx(met["mask/kl"], rel=1e-3, abs=1e-9)
    # (a random LM spreads its output over every unit of the residual stream: the gates close together or
    # not at all, and the state within eps may be the full one; the KL of the mask's evaluation is checked
    # on a state with half the units shut as well)
    half = np.random.default_rng(0).permutation(32)[:16]
    g = torch.zeros(32)
    g[torch.as_tensor(half)] = 1.0
    kl_half, _ = _hand_kl(live, block, half)
    assert kl_half > 1e-4 and m.mask_.evaluate(g)["kl"] == pytest.approx(kl_half, rel=1e-3)
    assert m.mask_.evaluate(torch.zeros(32))["kl"] == pytest.approx(shut, rel=1e-3)
    assert m.ranking_.extra["task"] == "lm" and len(m.ranking_) == 32


def test_classifier_mask_keeps_the_planted_units(one_thread):
    """A sentence classifier reading only units 5 and 17 of layers.1 (the mean of the sentence's word rows,
    z-scored): the mask keeps them and closes the other 30."""
    model, tok = tiny_lm("bert", head=False)
    words = sentences(4)
    rng = np.random.default_rng(0)
    labs = [["pos", "neg"][int(rng.integers(2))] for _ in words]
    splits = _splits(len(words))
    probe = LiveModel(model, tok, ClassifierHead(site="layers.1", own=False).set_weights(
        np.zeros((2, 32)), np.zeros(2), ["neg", "pos"]), words=words, sentence_labels=labs, splits=splits)
    _, a = probe.activations(["layers.1"], "train")
    mu, sd = a["layers.1"].mean(0), a["layers.1"].std(0)
    W = np.zeros((2, 32))
    W[0, 5], W[1, 17] = 8.0, 8.0
    head = ClassifierHead(site="layers.1", own=False).set_weights(W, np.zeros(2), ["neg", "pos"], mean=mu, std=sd)
    live = LiveModel(model, tok, head, words=words, sentence_labels=labs, splits=splits, concept_name="sentiment",
                     batch_tokens=256)
    m = _fit(live, _data(concept="sentiment"), 0.01, epochs=16)
    met = m.metrics_
    assert met["mask/constraint_met"] == 1 and met["mask/kl"] <= 0.01
    assert sorted(m.mask_.kept().tolist()) == [5, 17], m.ranking_.names[:4]
    assert met["mask/examples"] == len(splits["dev"])  # one example per sentence
    assert set(m.ranking_.indices[:2].tolist()) == {5, 17}
    # the reported KL against the head computed by hand: mean of the word rows of the kept units only
    assert m.mask_.evaluate(torch.ones(32))["kl"] < 1e-10
    kl_all_shut = m.mask_.evaluate(torch.zeros(32))["kl"]
    assert kl_all_shut > 0.1


def test_own_classification_head_mask_kl_confirmed(one_thread):
    from transformers import BertConfig, BertForSequenceClassification

    tok = wordpiece_tokenizer("bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=69, max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=3,
                     id2label={i: str(i) for i in range(3)}, label2id={str(i): i for i in range(3)})
    model = BertForSequenceClassification(cfg).eval()
    words = sentences(4)
    rng = np.random.default_rng(1)
    labs = [str(int(rng.integers(3))) for _ in words]
    head = ClassifierHead(own=True).set_own(model)
    live = LiveModel(model, tok, head, words=words, sentence_labels=labs, splits=_splits(len(words)),
                     batch_tokens=256)
    m = _fit(live, _data(), 0.002)
    met = m.metrics_
    assert met["mask/constraint_met"] == 1 and met["mask/kl"] <= 0.002
    assert 0 <= met["mask/acc"] <= 1 and 0 <= met["mask/base_acc"] <= 1
    kl, n = _hand_kl(live, model.bert.encoder.layer[1], m.mask_.kept())
    assert n == met["mask/examples"] == len(_splits(len(words))["dev"])
    assert kl == pytest.approx(met["mask/kl"], rel=1e-3, abs=1e-7)


def test_bad_input_for_other_tasks(one_thread):
    model, tok = tiny_lm("bert", head=False)
    words = sentences(2)
    splits = _splits(len(words))
    labs = ["pos"] * len(words)
    head = ClassifierHead(site="layers.0", own=False).set_weights(np.zeros((2, 32)), np.zeros(2), ["neg", "pos"])
    live = LiveModel(model, tok, head, words=words, sentence_labels=labs, splits=splits, batch_tokens=256)
    with pytest.raises(ConfigError, match="lies above the task head's site"):  # gates the head cannot see
        _fit(live, _data(concept="sentiment"), 0.01, epochs=1)
    with pytest.raises(ConfigError, match="has 32 units"):
        _fit(live, _data(site="layers.0", width=40, concept="sentiment"), 0.01, epochs=1)
    with pytest.raises(ConfigError, match="split 'test'"):
        _fit(live, _data(site="layers.0", concept="sentiment"), 0.01, epochs=1, split="test")
    lm, ltok = tiny_lm("gpt2")
    llive = LiveModel(lm, ltok, LMHead(), words=words, labels=random_labels(words), splits=splits, batch_tokens=256)
    with pytest.raises(ConfigError, match="not a site of model"):
        _fit(llive, _data(site="layers.7"), 0.01, epochs=1)
