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
