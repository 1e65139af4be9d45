"""Helpers for the live-model tests: tiny random models with their LM heads, word-labelled sentences."""
from __future__ import annotations

import numpy as np
import torch

from tests.helpers.extraction import TRAIN_TEXT, bytelevel_tokenizer, wordpiece_tokenizer

TAGS = ["A", "B", "C"]


def tiny_lm(kind: str, *, hidden: int = 32, layers: int = 2, seed: int = 0, head: bool = True):
    """(model, tokenizer): BERT (masked LM), GPT-2 (causal LM) or T5 (seq2seq LM), random, seeded;
    ``head=False``: the bare model (BertModel, GPT2Model, T5Model)."""
    from transformers import (BertConfig, BertForMaskedLM, BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model, T5Config,
                              T5ForConditionalGeneration, T5Model)

    torch.manual_seed(seed)
    if kind == "bert":
        tok = wordpiece_tokenizer("bert")
        cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=hidden * 2 + 5, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
        model = (BertForMaskedLM if head else BertModel)(cfg)
    elif kind == "gpt2":
        tok = bytelevel_tokenizer()
        cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=2, n_positions=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = (GPT2LMHeadModel if head else GPT2Model)(cfg)
    elif kind == "t5":
        tok = wordpiece_tokenizer("t5")
        cfg = T5Config(vocab_size=len(tok), d_model=hidden, d_ff=hidden * 2 + 5, d_kv=hidden // 2, num_layers=layers,
                       num_decoder_layers=layers + 1, num_heads=2, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
        model = (T5ForConditionalGeneration if head else T5Model)(cfg)
    else:
        raise ValueError(kind)
    return model.eval(), tok


def sentences(repeat: int = 3) -> list[list[str]]:
    return [s.split() for s in TRAIN_TEXT] * repeat


def random_labels(words, seed: int = 0, tags=TAGS):
    rng = np.random.default_rng(seed)
    return [[tags[int(rng.integers(len(tags)))] for _ in s] for s in words]


def planted_tagger(repeat: int, planted=(0, 1, 2), *, double: bool = True, off: float = 0.01, own_labels: bool = True,
                   held_out: str = "test", batch_tokens: int = 128):
    """A tiny BERT (float64 unless ``double=False``) with a tagger head on z-scored layers.1 whose class
    c's logit is 2 z_u (u = ``planted[c]``) plus ``off`` of every other unit, and labels that are the head's
    own predictions (so the unablated accuracy is 1; ``own_labels=False``: seeded random labels). The
    sentences' first half is the train split, the second ``held_out``. Returns (model, tokenizer, head,
    words, labels, splits)."""
    from neurolab.causal import LiveModel, TaggerHead

    model, tok = tiny_lm("bert", head=False)
    if double:
        model = model.double()
    words = sentences(repeat)
    n = len(words)
    splits = {"train": np.arange(0, n // 2), held_out: np.arange(n // 2, n)}
    dummy = TaggerHead(site="layers.1").set_weights(np.zeros((3, 32)), np.zeros(3), TAGS)
    probe = LiveModel(model, tok, dummy, words=words, labels=random_labels(words), splits=splits,
                      batch_tokens=batch_tokens)
    _, a = probe.activations(["layers.1"], "train")
    mu, sd = a["layers.1"].mean(0), a["layers.1"].std(0)
    W = np.full((3, 32), float(off))
    for c, u in enumerate(planted):
        W[c, u] = 2.0
    head = TaggerHead(site="layers.1").set_weights(W, np.zeros(3), TAGS, mean=mu, std=sd)
    if not own_labels:
        return model, tok, head, words, random_labels(words), splits
    probe = LiveModel(model, tok, head, words=words, labels=random_labels(words), splits=splits,
                      batch_tokens=batch_tokens)
    labels = [[None] * len(s) for s in words]
    for split in ("train", held_out):
        res = probe.run([], split)
        for r, p in zip(res.examples.ids, res.base.pred):
            labels[int(probe.corpus.row_sentence[r])][int(probe.corpus.row_word[r])] = TAGS[p]
    return model, tok, head, words, labels, splits


def site_rows(live, sites, nps, concept: str = "tags=A"):
    """The word rows of ``sites`` over the live model's training sentences with their labels, as the
    store-like data a method ranks (its first 10 rows stand in for dev and test)."""
    from neurolab.data import ArrayData

    rows, acts = live.activations(list(sites), "train")
    X = np.concatenate([acts[s] for s in sites], axis=1)
    y = np.array([TAGS.index(live.labels[r]) for r in rows])
    return ArrayData({"train": (X, y), "val": (X[:10], y[:10]), "test": (X[:10], y[:10])}, class_names=TAGS,
                     sites=list(sites), neurons_per_site=dict(nps), concept=concept)
