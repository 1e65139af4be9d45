"""Task heads beyond the tagger: sentence classifiers (the model's own head, and a trained one on
sentence rows), the masked LM's seeded masking, and side-by-side generation of a decoder LM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurolab.causal import ClassifierHead, LiveModel, LMHead, make_set
from neurolab.causal.steering import generate_side_by_side
from neurolab.errors import ConfigError
from tests.helpers.causal import random_labels, sentences, tiny_lm
from tests.helpers.extraction import wordpiece_tokenizer


def _sentence_labels(n, seed=0):
    rng = np.random.default_rng(seed)
    return [["pos", "neg"][int(rng.integers(2))] for _ in range(n)]


def test_own_sequence_classification_head_is_the_models_logits(one_thread):
    from transformers import BertConfig, BertForSequenceClassification

    tok = wordpiece_tokenizer("bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=69, max_position_embeddings=128, pad_token_id=tok.pad_token_id, num_labels=2,
                     id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model = BertForSequenceClassification(cfg).eval()
    head = ClassifierHead(own=True).set_own(model)
    words = sentences()
    live = LiveModel(model, tok, head, words=words, sentence_labels=_sentence_labels(len(words)), batch_tokens=96)
    assert head.classes == ["neg", "pos"] and head.level == "sentence"
    batch = live.batches("test")[0]
    h, _ = live.forward(batch)
    with torch.no_grad():
        ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    _, local, _ = head.examples(live, batch)
    assert torch.equal(h.signal[0], ref[local])  # one window per sentence here
    res = live.run([make_set("zero", [("layers.1", 3), ("layers.0.mlp", 5)])], "test")
    assert len(res.examples.ids) == len(words) and 0 <= res.accuracy(0) <= 1


def test_trained_sentence_classifier_reads_the_mean_of_word_rows(one_thread):
    model, tok = tiny_lm("bert", head=False)
    model = model.double()
    rng = np.random.default_rng(0)
    head = ClassifierHead(site="layers.1", own=False).set_weights(rng.normal(size=(2, 32)), rng.normal(size=2),
                                                                  ["neg", "pos"])
    words = sentences()
    live = LiveModel(model, tok, head, words=words, sentence_labels=_sentence_labels(len(words)), batch_tokens=96)
    rows, acts = live.activations(["layers.1"], "test")
    batch = live.batches("test")[0]
    h, _ = live.forward(batch)
    ids, _, _ = head.examples(live, batch)
    for j, s in enumerate(ids[:5]):
        x = acts["layers.1"][np.isin(rows, live.corpus.rows_of([s]))].astype(np.float64).mean(0)
        assert np.allclose(h.signal[0, j].numpy(), x @ head.weight.numpy().T + head.bias.numpy(), atol=1e-5)


def test_masked_lm_masks_with_the_seed(one_thread):
    model, tok = tiny_lm("bert")
    words = sentences()
    labs = random_labels(words)
    mk = lambda seed: LiveModel(model, tok, LMHead(seed=seed, mask_prob=0.3), words=words, labels=labs,
                                batch_tokens=96)
    a, b, c = mk(1), mk(1), mk(2)
    assert np.array_equal(a.examples("test").ids, b.examples("test").ids)
    assert not np.array_equal(a.examples("test").ids, c.examples("test").ids)
    # every sentence has at least one masked word, and every token of a masked word is masked
    batch = a.batches("test")[0]
    ids = a.model_inputs(batch)["input_ids"]
    tr = batch.token_row
    masked_rows = set(a.head.examples(a, batch)[0].tolist())
    for r in masked_rows:
        assert bool((ids[tr == r] == tok.mask_token_id).all())
    assert {int(a.corpus.row_sentence[r]) for r in masked_rows} == set(batch.sentences.tolist())
    with pytest.raises(ConfigError, match="a target class needs task=tagger or classifier"):
        a.run([], "test", target="A")


def test_generation_side_by_side_is_seeded(one_thread):
    model, tok = tiny_lm("gpt2")
    words = sentences()
    live = LiveModel(model, tok, LMHead(), words=words, labels=random_labels(words), batch_tokens=96)
    S = make_set("value", [("layers.1", u) for u in range(8)], value=5.0)
    g1 = generate_side_by_side(live, S, ["The quick brown"], max_new_tokens=6, seed=3)
    g2 = generate_side_by_side(live, S, ["The quick brown"], max_new_tokens=6, seed=3)
    assert g1 == g2 and set(g1[0]) == {"prompt", "plain", "steered"}
    assert g1[0]["plain"] != g1[0]["steered"]
    bert = LiveModel(*tiny_lm("bert"), LMHead(), words=words, labels=random_labels(words))
    with pytest.raises(ConfigError, match="decoder"):
        generate_side_by_side(bert, S, ["a"])
