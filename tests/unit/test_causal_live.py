"""The live model on tiny random BERT / GPT-2 / T5: identities, closed forms, caches, checks, errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from neurolab.causal import (InterventionError, LiveModel, LMHead, NeuronStats, TaggerHead, make_set)
from neurolab.causal.interventions import Intervention, InterventionSet
from neurolab.errors import ConfigError
from tests.helpers.causal import TAGS, random_labels, sentences, tiny_lm

LAST = {"bert": "layers.1", "gpt2": "layers.1", "t5": "decoder.layers.2"}
MLP0 = {"bert": "layers.0.mlp", "gpt2": "layers.0.mlp", "t5": "decoder.layers.1.mlp"}
EMB = {"bert": "embeddings", "gpt2": "embeddings", "t5": "encoder.embeddings"}


def lm_live(kind, model=None, tok=None, **kw):
    if model is None:
        model, tok = tiny_lm(kind)
    words = sentences()
    kw.setdefault("batch_tokens", 96)
    return LiveModel(model, tok, LMHead(), words=words, labels=random_labels(words), concept_values={"A"}, **kw)


def tagger_live(model=None, tok=None, *, site="layers.1", seed=0, weight=None, double=True, **kw):
    if model is None:
        model, tok = tiny_lm("bert", head=False)
    if double:
        model = model.double()
    rng = np.random.default_rng(seed)
    H = 32
    W = rng.normal(size=(3, H)) if weight is None else weight
    head = TaggerHead(site=site).set_weights(W, rng.normal(size=3), TAGS, mean=rng.normal(size=H) * 0.1,
                                             std=1 + rng.random(H))
    words = sentences()
    kw.setdefault("batch_tokens", 96)
    return LiveModel(model, tok, head, words=words, labels=random_labels(words), concept_values={"A"},
                     concept_name="tags", **kw)


def _plain_token_losses(live, batch):
    """Per scored token CE of the LM head from a plain forward pass without any hook (reference)."""
    plan = live.head._plan(live, batch)
    kw = live.model_inputs(batch)
    with torch.no_grad():
        out = live.model(**kw)
    B, T = batch.input_ids.shape
    lg = out.logits.reshape(B * T, -1)[plan["src"]]
    return torch.nn.functional.cross_entropy(lg, plan["gold"], reduction="none")


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_k0_is_bit_identical_to_the_plain_model(kind, one_thread):
    live = lm_live(kind)
    for batch in live.batches("test")[:3]:
        h, _ = live.forward(batch)
        ref = _plain_token_losses(live, batch)
        assert torch.equal(h.signal[0], ref)
    # a k = 0 set goes through the hooks and the prefix cache, and changes no bit
    empty = InterventionSet([Intervention(LAST[kind], [], "set", [])])
    res = live.run([empty], "test", check=True)
    assert np.array_equal(res.sets[0].loss, res.base.loss)
    assert np.array_equal(res.sets[0].correct, res.base.correct)


def test_tagger_matches_hidden_states_by_hand(one_thread):
    live = tagger_live()
    batch = live.batches("test")[0]
    h, _ = live.forward(batch)
    kw = live.model_inputs(batch)
    with torch.no_grad():
        hs = live.model(**kw, output_hidden_states=True).hidden_states[2].numpy()  # layers.1
    tr = batch.token_row.numpy()
    ids, local, gold = live.head.examples(live, batch)
    W, b = live.head.weight.numpy(), live.head.bias.numpy()
    mu, sd = live.head.mean.numpy(), live.head.std.numpy()
    for j, r in enumerate(ids[:20]):
        x = hs[tr == r].mean(0)  # every token of the word (no windows here)
        logits = ((x - mu) / sd) @ W.T + b
        assert np.allclose(h.signal[0, j].numpy(), logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_zero_mlp_unit_equals_zeroed_down_projection_column(kind, one_thread):
    model, tok = tiny_lm(kind)
    model = model.double()
    i = 7
    live = lm_live(kind, model, tok)
    res = live.run([make_set("zero", [(MLP0[kind], i)])], "test")
    ref = copy.deepcopy(model)
    with torch.no_grad():
        if kind == "bert":
            ref.bert.encoder.layer[0].output.dense.weight[:, i] = 0
        elif kind == "gpt2":
            ref.transformer.h[0].mlp.c_proj.weight[i, :] = 0  # Conv1D: weight [in, out]
        else:
            ref.decoder.block[1].layer[-1].DenseReluDense.wo.weight[:, i] = 0
    res_ref = lm_live(kind, ref, tok).run([], "test")
    assert np.allclose(res.sets[0].loss, res_ref.base.loss, rtol=1e-12, atol=1e-12)
    assert not np.allclose(res.sets[0].loss, res.base.loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_cached_prefix_equals_the_full_forward_pass(kind, one_thread):
    live = lm_live(kind)
    sets = [make_set("zero", [(LAST[kind], 3), (MLP0[kind], 4)]), make_set("value", [(LAST[kind], 5)], value=2.5),
            make_set("zero", [(EMB[kind], 1), (LAST[kind], 2)])]
    a = live.run(sets, "test", cache=True)
    b = live.run(sets, "test", cache=False)
    for j in range(len(sets)):
        assert np.array_equal(a.sets[j].loss, b.sets[j].loss)
        assert np.array_equal(a.sets[j].correct, b.sets[j].correct)
    u = np.arange(6)
    assert np.array_equal(live.sweep(MLP0[kind], u, split="test", expand=4),
                          live.sweep(MLP0[kind], u, split="test", expand=4, cache=False))


def test_cached_prefix_skips_the_blocks_below(one_thread):
    live = lm_live("bert")
    calls = [0, 0]
    hooks = [live.model.bert.encoder.layer[i].attention.register_forward_hook(
        lambda m, a, o, _i=i: calls.__setitem__(_i, calls[_i] + 1)) for i in range(2)]
    try:
        n = len(live.batches("test"))
        live.run([make_set("zero", [("layers.1.mlp", 3)]), make_set("zero", [("layers.0", 1)])], "test")
    finally:
        for h in hooks:
            h.remove()
    assert calls == [n, 3 * n]  # block 0 runs once per batch (base pass), block 1 three times


def test_sweep_equals_one_ablation_at_a_time(one_thread):
    live = tagger_live()
    units = np.array([0, 3, 9, 31])
    got = live.sweep("layers.0.mlp", units, 0.0, split="test", expand=3)
    res = live.run([make_set("zero", [("layers.0.mlp", int(u))]) for u in units], "test")
    want = [np.mean(res.sets[j].loss - res.base.loss) for j in range(len(units))]
    assert np.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_first_order_equals_exact_for_a_head_linear_in_the_site(one_thread):
    live = tagger_live()
    H = 32
    for values in (np.zeros(H), np.linspace(-1, 1, H)):  # zero- and value-ablation
        fo = live.first_order({"layers.1": ("set", values)}, split="test", objective="logit")["layers.1"]
        ex = live.sweep("layers.1", np.arange(H), values, split="test", objective="logit", expand=8)
        assert np.allclose(fo, ex, rtol=1e-9, atol=1e-12)
        assert np.abs(ex).max() > 1e-3
    # below the head's site the loss is not linear: the estimate differs from the exact effect
    fo = live.first_order({"layers.0.mlp": ("set", np.zeros(69))}, split="test", objective="loss")["layers.0.mlp"]
    ex = live.sweep("layers.0.mlp", np.arange(69), 0.0, split="test", objective="loss", expand=16)
    assert not np.allclose(fo, ex, rtol=1e-6, atol=1e-9)
    assert np.corrcoef(fo, ex)[0, 1] > 0.9


def _stats_store(tmp_path, live):
    """An ActivationDataModule over a store of random rows for the tiny BERT's sites (the training rows)."""
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from tests.helpers.data import random_corpus, store_for

    corpus = random_corpus(40, seed=3)
    store, acts = store_for(corpus, tmp_path / "s", sites={"layers.0": 32, "layers.0.mlp": 69}, seed=5)
    n = len(corpus)
    splits = {"train": np.arange(0, 30), "dev": np.arange(30, 35), "test": np.arange(35, n)}
    dm = ActivationDataModule(store, corpus, splits, ColumnConcept("upos"), normalize="zscore")
    dm.setup()
    return dm, acts


def test_mean_equals_writing_the_stored_mean(tmp_path, one_thread):
    live = tagger_live()
    dm, acts = _stats_store(tmp_path, live)
    stats = NeuronStats(dm, "train")
    rows = dm.row_ids("train")
    ref = acts["layers.0.mlp"][rows].astype(np.float64).mean(0)
    assert np.allclose(stats.mean[32:], ref, rtol=1e-12, atol=1e-12)
    neurons = [("layers.0.mlp", 2), ("layers.0.mlp", 40), ("layers.0", 5)]
    means = [ref[2], ref[40], acts["layers.0"][rows].astype(np.float64).mean(0)[5]]
    a = live.run([make_set("mean", neurons, stats), make_set("value", neurons, value=means)], "test")
    assert np.allclose(a.sets[0].loss, a.sets[1].loss, rtol=1e-12, atol=1e-12)
    assert not np.allclose(a.sets[0].loss, a.base.loss)
    # the site holds the mean at every token after the intervention
    S = make_set("mean", neurons, stats)
    batch = live.batches("test")[0]
    fns, _, _ = live._set_fns(S, batch, "test", None)
    _, cap = live.forward(batch, fns, capture=["layers.0.mlp"])
    x = cap["layers.0.mlp"][batch.attention_mask.bool()]
    assert np.allclose(x[:, 2].numpy(), ref[2]) and np.allclose(x[:, 40].numpy(), ref[40])


def test_resample_draws_are_reproducible_and_written_per_word(tmp_path, one_thread):
    live = tagger_live()
    dm, _ = _stats_store(tmp_path, live)
    stats = NeuronStats(dm, "train", pool_size=64, seed=1)
    neurons = [("layers.0.mlp", u) for u in (1, 5, 9)]
    r1 = live.run([make_set("resample", neurons, stats, seed=3), make_set("resample", neurons, stats, seed=4)], "test")
    r2 = live.run([make_set("resample", neurons, stats, seed=3)], "test")
    assert np.array_equal(r1.sets[0].loss, r2.sets[0].loss)
    assert not np.array_equal(r1.sets[0].loss, r1.sets[1].loss)
    assert np.array_equal(NeuronStats(dm, "train", pool_size=64, seed=1).pool, stats.pool)
    # every token of a word holds the same donor row of the pool
    S = make_set("resample", neurons, stats, seed=3, scope="words")
    batch = live.batches("test")[0]
    fns, _, _ = live._set_fns(S, batch, "test", None)
    _, cap = live.forward(batch, fns, capture=["layers.0.mlp"])
    donors = live.donors(64, 3)
    tr = batch.token_row.numpy()
    pool = S.items[0].pool
    x = cap["layers.0.mlp"].numpy()
    multi = 0
    for r in np.unique(tr[tr >= 0]):
        got = x[tr == r][:, [1, 5, 9]]
        assert np.allclose(got, pool[donors[r]][None, :].astype(np.float64), atol=1e-6)
        multi += int((tr == r).sum() > 1)
    assert multi > 0  # some words have several subword tokens, all of them changed


def test_scope_changes_only_the_concepts_tokens(one_thread):
    live = tagger_live()
    S = make_set("value", [("layers.0.mlp", 4)], value=9.0, scope="concept")
    batch = live.batches("test")[0]
    fns, _, n = live._set_fns(S, batch, "test", None)
    _, cap = live.forward(batch, fns, capture=["layers.0.mlp"])
    _, base = live.forward(batch, capture=["layers.0.mlp"])
    tr = batch.token_row.numpy()
    is_a = np.array([r >= 0 and live.concept_labels[r] == "A" for r in tr.reshape(-1)]).reshape(tr.shape)
    x, x0 = cap["layers.0.mlp"][..., 4].numpy(), base["layers.0.mlp"][..., 4].numpy()
    assert n == int(is_a.sum()) > 0
    assert np.all(x[is_a] == 9.0)
    assert np.array_equal(x[~is_a], x0[~is_a])


def test_a_hook_that_never_fires_is_an_error(one_thread):
    model, tok = tiny_lm("bert", head=False)
    model.unused = torch.nn.Linear(32, 32)  # a module the forward pass never calls
    live = tagger_live(model, tok)
    with pytest.raises(InterventionError, match="never fired"):
        live.run([make_set("zero", [("unused", 1)])], "test")


def test_an_intervention_that_changes_nothing_is_an_error(one_thread):
    model, tok = tiny_lm("bert", head=False)
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[:, 11] = 0  # unit 11 of layers.0.mlp feeds nothing
    live = tagger_live(model, tok)
    with pytest.raises(InterventionError, match="silent no-op"):
        live.run([make_set("zero", [("layers.0.mlp", 11)])], "test")
    live.run([make_set("zero", [("layers.0.mlp", 12)])], "test")  # another unit does change the output


def test_sites_above_the_heads_site_and_unknown_sites_are_refused(one_thread):
    live = tagger_live(site="layers.0")
    with pytest.raises(ConfigError, match="above the task head"):
        live.run([make_set("zero", [("layers.1.mlp", 1)])], "test")
    with pytest.raises(ConfigError, match="not a site of model"):
        live.check_sites(["layers.7"])
    # early exit: a head on layers.0 never computes block 1
    calls = []
    h = live.model.encoder.layer[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        live.run([make_set("zero", [("layers.0", 1)])], "test")
    finally:
        h.remove()
    assert calls == []


def test_saved_head_roundtrip_and_refusals(tmp_path, one_thread):
    live = tagger_live()
    path = live.head.save(tmp_path / "task" / "tagger.safetensors")
    info = __import__("json").loads(path.with_suffix(".json").read_text())
    assert info["concept"] == "tags" and info["site"] == "layers.1" and info["classes"] == TAGS
    assert info["normalization"] == "zscore" and info["model"]["weights"]
    h2 = TaggerHead(path=str(tmp_path)).load(tmp_path)
    words = sentences()
    model = live.model
    again = LiveModel(model, live.tokenizer, h2, words=words, labels=random_labels(words), concept_name="tags",
                      batch_tokens=96)
    b = again.batches("test")[0]
    assert torch.equal(again.forward(b)[0].signal, live.forward(live.batches("test")[0])[0].signal)
    with pytest.raises(ConfigError, match="trained for concept 'tags'"):
        LiveModel(model, live.tokenizer, TaggerHead().load(path), words=words, labels=random_labels(words),
                  concept_name="xpos")
    other, tok = tiny_lm("bert", head=False, seed=1)
    with pytest.raises(ConfigError, match="trained on model"):
        LiveModel(other.double(), tok, TaggerHead().load(path), words=words, labels=random_labels(words),
                  concept_name="tags")
    with pytest.raises(ConfigError, match="site"):
        TaggerHead(site="layers.0").load(path)


def test_target_class_and_unknown_head_errors(one_thread):
    live = tagger_live()
    with pytest.raises(ConfigError, match="not a class"):
        live.run([], "test", target="NOUN")
    res = live.run([make_set("value", [("layers.1", 0), ("layers.1", 1)], value=[3.0, -3.0])], "test", target="B")
    assert np.all((res.base.p_target >= 0) & (res.base.p_target <= 1))
    with pytest.raises(ConfigError, match="not trained"):
        LiveModel(live.model, live.tokenizer, TaggerHead(site="layers.1"), words=sentences())


def test_windows_long_sentences_keep_every_word(one_thread):
    """A sentence longer than the model limit goes through windows; every word still gets a row and
    an intervention reaches every token of the word in every window."""
    model, tok = tiny_lm("bert", head=False)
    model = model.double()
    words = [sum(sentences(1), [])]  # ~60 words, more than max_length=24 tokens
    rng = np.random.default_rng(0)
    head = TaggerHead(site="layers.1").set_weights(rng.normal(size=(3, 32)), rng.normal(size=3), TAGS)
    live = LiveModel(model, tok, head, words=words, labels=random_labels(words), max_length=24, batch_tokens=512)
    batch = live.batches("test")[0]
    assert batch.input_ids.shape[0] > 1  # several windows, one batch
    assert sorted(batch.rows.tolist()) == list(range(live.corpus.num_rows))
    res = live.run([make_set("zero", [("layers.0.mlp", 3)], scope="words")], "test")
    assert len(res.examples.ids) == live.corpus.num_rows


def test_record_prefix_and_expanded_forward_for_path_methods(one_thread):
    """What attribution-style methods do: record a batch's prefix once, then run several scaled copies
    of one site's activation in one expanded pass from the block above it."""
    live = tagger_live()
    batch = live.batches("test")[0]
    h0 = live.record_prefix(batch)
    scale = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)

    def fn(t):
        B = t.shape[0] // 3
        return t * scale.repeat_interleave(B).view(-1, 1, 1)

    h, _ = live.forward(batch, {"layers.0": fn}, start=live.site_start("layers.0"), expand=3)
    # (a batch of another size may round differently in the last bits: equal to float precision)
    assert torch.allclose(h.signal[0], h0.signal[0], rtol=1e-12, atol=1e-12)
    full, _ = live.forward(batch, {"layers.0": lambda t: t * 0.5})  # no cache, one copy
    assert torch.allclose(h.signal[1], full.signal[0], rtol=1e-12, atol=1e-12)
    assert h.logits.shape == (3, len(h.ids), 3)
