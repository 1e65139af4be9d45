"""Tiny random HF models with offline tokenizers, saved as local folders (for extraction tests)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog .",
    "She sells sea shells by the sea shore , doesn't she ?",
    "In 1999 , 42 people walked 3.5 km to Zürich and São Paulo !",
    "\"Hello,\" said Dr. Smith — it's running, walked, talking; unbelievable!",
    "Numbers like 2024-05-01 and $19.99 appear; e-mail me@example.com .",
]


def wordpiece_tokenizer(kind: str = "bert"):
    """A trained WordPiece fast tokenizer. kind='bert' adds [CLS] ... [SEP]; 't5' adds ... </s>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        unk = "[UNK]"
    else:
        specials = ["<pad>", "</s>", "<unk>"]
        unk = "<unk>"
    # the vocabulary a WordPieceTrainer (vocab_size=160) learned from TRAIN_TEXT once, kept in a file: the
    # trainer breaks ties in the order of a randomly seeded hash map, so every process learned another one
    words = json.loads((Path(__file__).with_name("wordpiece_vocab.json")).read_text(encoding="utf-8"))[kind]
    assert words[: len(specials)] == specials
    tok = Tokenizer(models.WordPiece(vocab={w: i for i, w in enumerate(words)}, unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = tok.get_vocab()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def bytelevel_tokenizer():
    """A trained byte-level BPE fast tokenizer (GPT-2 style), prefix space on."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT * 3, trainer=trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", add_prefix_space=True)


def tiny_model(kind: str, *, hidden: int = 32, layers: int = 2, max_pos: int = 128, seed: int = 0):
    """(model, tokenizer) for kind in bert | gpt2 | t5, randomly initialised (seeded)."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, T5Config, T5Model

    torch.manual_seed(seed)
    if kind == "bert":
        tok = wordpiece_tokenizer("bert")
        cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=hidden * 2 + 5, max_position_embeddings=max_pos, pad_token_id=tok.pad_token_id)
        model = BertModel(cfg)
    elif kind == "gpt2":
        tok = bytelevel_tokenizer()
        cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=2, n_positions=max_pos,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2Model(cfg)
    elif kind == "t5":
        tok = wordpiece_tokenizer("t5")
        cfg = T5Config(vocab_size=len(tok), d_model=hidden, d_ff=hidden * 2 + 5, d_kv=hidden // 2, num_layers=layers,
                       num_decoder_layers=layers + 1, num_heads=2, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
        model = T5Model(cfg)
    else:
        raise ValueError(kind)
    return model.eval(), tok


def save_tiny_model(kind: str, folder: Path, **kw) -> Path:
    model, tok = tiny_model(kind, **kw)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_conllu(path: Path, sentences: list[list[str]]) -> Path:
    """A minimal CoNLL-U file (UPOS X) with the given words."""
    lines = []
    for i, words in enumerate(sentences):
        lines.append(f"# sent_id = s{i}")
        for j, w in enumerate(words, 1):
            lines.append(f"{j}\t{w}\t_\tX\t_\t_\t{0 if j == 1 else 1}\t{'root' if j == 1 else 'dep'}\t_\t_")
        lines.append("")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def reference_rows(model, tok, words: list[str], site_fns: dict, aggregation: str, *, enc_dec: bool = False):
    """Per-word activations of one sentence computed by hand: a single unpadded forward pass,
    ``output_hidden_states`` / hand-made hooks, and numpy aggregation over ``word_ids()``.

    ``site_fns``: site name -> ("hidden", stack, index) or ("act", module) (output of module) or
    ("pre", module) (input of module). Returns {site: [words_with_tokens, units]}.
    """
    enc = tok([words], is_split_into_words=True, add_special_tokens=True, return_tensors="pt")
    wid = enc.word_ids(0)
    grabbed = {}
    handles = []
    for name, spec in site_fns.items():
        if spec[0] == "act":
            handles.append(model.get_submodule(spec[1]).register_forward_hook(
                lambda m, a, o, _n=name: grabbed.__setitem__(_n, o.detach().clone())))
        elif spec[0] == "pre":
            handles.append(model.get_submodule(spec[1]).register_forward_pre_hook(
                lambda m, a, _n=name: grabbed.__setitem__(_n, a[0].detach().clone())))
    try:
        with torch.no_grad():
            kw = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
            if enc_dec:
                kw["decoder_input_ids"] = enc["input_ids"]
            out = model(**kw)
    finally:
        for h in handles:
            h.remove()
    res = {}
    for name, spec in site_fns.items():
        if spec[0] == "hidden":
            hs = out.hidden_states if spec[1] is None else (
                out.encoder_hidden_states if spec[1] == "encoder" else out.decoder_hidden_states)
            a = hs[spec[2]][0].numpy()
        else:
            a = grabbed[name][0].numpy()
        rows = []
        for w in sorted({x for x in wid if x is not None}):
            idx = [i for i, x in enumerate(wid) if x == w]
            sub = a[idx]
            rows.append({"first": sub[0], "last": sub[-1], "mean": sub.mean(0), "max": sub.max(0)}[aggregation])
        res[name] = np.stack(rows) if rows else np.zeros((0, a.shape[-1]), np.float32)
    return res


def load_saved(folder: Path):
    """(model, tokenizer) straight from transformers (not through neurolab.models.load_model)."""
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
