"""Stored rows == activations computed by hand (unbatched forward, output_hidden_states, hand hooks)."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.store import ActivationStore
from neurolab.tasks.extract import extract, extract_store
from tests.helpers.extraction import load_saved, reference_rows, save_tiny_model, write_conllu

SENTS = [
    ["The", "quick", "brown", "fox", "jumps", "."],
    ["\"Hello,\"", "said", "Dr.", "Smith", "—", "it's", "unbelievable!"],
    ["Zürich", "and", "São", "Paulo", "cost", "$19.99", "in", "1999"],
    ["a"],
    ["Supercalifragilisticexpialidocious", "e-mail", "me@example.com", "?"],
]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_conllu(tmp_path_factory.mktemp("corpus") / "c.conllu", SENTS)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {k: save_tiny_model(k, tmp_path_factory.mktemp(k)) for k in ("bert", "gpt2", "t5")}


def _cfg(tmp_path, model_dir, corpus_file, *extra):
    return compose(
        "extract",
        [f"model.name_or_path={model_dir}", f"corpus.path={corpus_file}", f"store.dir={tmp_path / 'store'}",
         "logger=none", "extract.progress=false", *extra],
        run_dir=tmp_path / "run",
    )


def _reference(model_dir, words_list, site_fns, agg, kind="bert"):
    model, tok = load_saved(model_dir)
    refs = [reference_rows(model, tok, w, site_fns, agg, enc_dec=(kind == "t5")) for w in words_list]
    return {s: np.concatenate([r[s] for r in refs]) for s in site_fns}


BERT_SITES = {
    "embeddings": ("hidden", None, 0),
    "layers.0": ("hidden", None, 1),
    "layers.1": ("hidden", None, 2),
    "layers.0.mlp": ("act", "encoder.layer.0.intermediate.intermediate_act_fn"),
    "layers.1.attn": ("pre", "encoder.layer.1.attention.output.dense"),
}


@pytest.mark.parametrize("agg", ["first", "last", "mean", "max"])
def test_bert_rows_equal_hand_reference(tmp_path, model_dirs, corpus_file, agg):
    cfg = _cfg(tmp_path, model_dirs["bert"], corpus_file, f"extract.aggregation={agg}", "extract.dtype=fp32",
               "sites=[all_layers,layers.0.mlp,layers.1.attn]", "extract.batch_tokens=40")
    metrics = extract(cfg)
    store = ActivationStore.open(tmp_path / "store", verify=True)
    assert store.sites == ["embeddings", "layers.0", "layers.1", "layers.0.mlp", "layers.1.attn"]
    ref = _reference(model_dirs["bert"], SENTS, BERT_SITES, agg)
    n = sum(len(s) for s in SENTS)
    assert store.num_tokens == n == metrics["extract/words"]
    assert store.sentence_ids.tolist() == [i for i, s in enumerate(SENTS) for _ in s]
    assert store.word_ids.tolist() == [j for s in SENTS for j in range(len(s))]
    for site in BERT_SITES:
        np.testing.assert_allclose(store.read(slice(None), [site]), ref[site], rtol=1e-4, atol=1e-5, err_msg=site)


def test_gpt2_rows_fp16(tmp_path, model_dirs, corpus_file):
    cfg = _cfg(tmp_path, model_dirs["gpt2"], corpus_file, "sites=all", "extract.batch_tokens=64")
    extract(cfg)
    store = ActivationStore.open(tmp_path / "store")
    assert store.dtype == "fp16"
    sites = {
        "embeddings": ("hidden", None, 0), "layers.0": ("hidden", None, 1), "layers.1": ("hidden", None, 2),
        "layers.0.mlp": ("act", "h.0.mlp.act"), "layers.1.mlp": ("act", "h.1.mlp.act"),
        "layers.0.attn": ("pre", "h.0.attn.c_proj"),
    }
    ref = _reference(model_dirs["gpt2"], SENTS, sites, "mean", "gpt2")
    for site in sites:
        got = store.read(slice(None), [site])
        np.testing.assert_allclose(got, ref[site], rtol=2e-3, atol=2e-3, err_msg=site)


def test_t5_both_stacks(tmp_path, model_dirs, corpus_file):
    cfg = _cfg(tmp_path, model_dirs["t5"], corpus_file, "sites=[all_layers,mlp,decoder.layers.2.attn]",
               "extract.aggregation=max", "extract.dtype=fp32")
    extract(cfg)
    store = ActivationStore.open(tmp_path / "store")
    assert store.sites[:3] == ["encoder.embeddings", "encoder.layers.0", "encoder.layers.1"]
    assert "decoder.layers.2" in store.sites and "decoder.layers.2.mlp" in store.sites
    sites = {
        "encoder.embeddings": ("hidden", "encoder", 0), "encoder.layers.1": ("hidden", "encoder", 2),
        "decoder.layers.0": ("hidden", "decoder", 1), "decoder.layers.2": ("hidden", "decoder", 3),
        "encoder.layers.0.mlp": ("act", "encoder.block.0.layer.1.DenseReluDense.act"),
        "decoder.layers.1.mlp": ("act", "decoder.block.1.layer.2.DenseReluDense.act"),
        "decoder.layers.2.attn": ("pre", "decoder.block.2.layer.0.SelfAttention.o"),
    }
    ref = _reference(model_dirs["t5"], SENTS, sites, "max", "t5")
    for site in sites:
        np.testing.assert_allclose(store.read(slice(None), [site]), ref[site], rtol=1e-4, atol=1e-5, err_msg=site)


def test_windowing_matches_hand_windows(tmp_path, model_dirs):
    """A sentence longer than max_length: every word gets a row, taken from the window where it has most
    context; the rows equal forward passes over those windows made by hand."""
    from neurolab.extraction.plan import window_starts

    words = (["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", ",", "unbelievable!"] * 4)
    corpus_file = write_conllu(tmp_path / "long.conllu", [words, ["short", "one"]])
    max_length, stride = 16, 5
    cfg = _cfg(tmp_path, model_dirs["bert"], corpus_file, f"model.max_length={max_length}",
               f"extract.stride={stride}", "extract.dtype=fp32", "sites=[layers.1]", "extract.aggregation=mean")
    m = extract(cfg)
    assert m["extract/windowed_sentences"] == 1
    store = ActivationStore.open(tmp_path / "store")
    assert store.num_tokens == len(words) + 2
    model, tok = load_saved(model_dirs["bert"])
    import torch

    enc = tok(words, is_split_into_words=True, add_special_tokens=False)
    ids, wid = enc["input_ids"], enc.word_ids()
    W = max_length - 2
    starts = window_starts(len(ids), W, stride)
    assert len(starts) > 2
    outs = []
    for s in starts:
        x = torch.tensor([[tok.cls_token_id] + ids[s : s + W] + [tok.sep_token_id]])
        with torch.no_grad():
            outs.append(model(input_ids=x, output_hidden_states=True).hidden_states[2][0].numpy())
    got = store.read(slice(0, len(words)), ["layers.1"])
    for w in range(len(words)):
        toks = [i for i, x in enumerate(wid) if x == w]
        a, b = toks[0], toks[-1] + 1
        best = max(range(len(starts)), key=lambda j: (min(a - starts[j], starts[j] + W - b)
                                                        if a >= starts[j] and b <= starts[j] + W else -1, -j))
        ref = outs[best][[t - starts[best] + 1 for t in toks]].mean(0)
        np.testing.assert_allclose(got[w], ref, rtol=1e-4, atol=1e-5, err_msg=f"word {w}")
    # with a limit the sentence fits into, the result is the plain single-pass one
    cfg2 = _cfg(tmp_path / "b", model_dirs["bert"], corpus_file, "extract.dtype=fp32", "sites=[layers.1]")
    full = extract_store(cfg2).read(slice(0, len(words)))
    assert not np.allclose(full, got, atol=1e-5)  # the windows really saw less context


def test_word_longer_than_window_is_split_not_truncated(tmp_path, model_dirs):
    """A word with more subwords than a window: each subword from the window where it has most context."""
    import torch

    from neurolab.extraction.plan import window_starts

    words = ["a", "unbelievablewalkedtalkingrunning", "b"]
    corpus_file = write_conllu(tmp_path / "w.conllu", [words])
    max_length = 8
    cfg = _cfg(tmp_path, model_dirs["bert"], corpus_file, f"model.max_length={max_length}", "extract.dtype=fp32",
               "sites=[layers.1]", "extract.aggregation=mean")
    extract(cfg)
    store = ActivationStore.open(tmp_path / "store")
    assert store.num_tokens == 3
    model, tok = load_saved(model_dirs["bert"])
    enc = tok(words, is_split_into_words=True, add_special_tokens=False)
    ids, wid = enc["input_ids"], enc.word_ids()
    W = max_length - 2
    assert wid.count(1) > W
    starts = window_starts(len(ids), W, W // 2)
    outs = []
    for s0 in starts:
        x = torch.tensor([[tok.cls_token_id] + ids[s0 : s0 + W] + [tok.sep_token_id]])
        with torch.no_grad():
            outs.append(model(input_ids=x, output_hidden_states=True).hidden_states[2][0].numpy())
    vecs = []
    for t in [i for i, x in enumerate(wid) if x == 1]:
        ctx = [min(t - s0, s0 + W - 1 - t) if s0 <= t < s0 + W else -1 for s0 in starts]
        j = int(np.argmax(ctx))
        vecs.append(outs[j][t - starts[j] + 1])
    np.testing.assert_allclose(store.read(slice(1, 2))[0], np.mean(vecs, 0), rtol=1e-4, atol=1e-5)


def test_sentence_rows_second_store(tmp_path, model_dirs, corpus_file):
    cfg = _cfg(tmp_path, model_dirs["bert"], corpus_file, "extract.sentence_rows=mean", "extract.dtype=fp32",
               "sites=[layers.1]")
    store = extract_store(cfg)
    sent = ActivationStore.open(tmp_path / "store" / "sentences")
    assert sent.num_tokens == len(SENTS)
    assert sent.sentence_ids.tolist() == list(range(len(SENTS)))
    words = store.read(slice(None))
    ref = np.stack([words[store.sentence_ids == i].mean(0) for i in range(len(SENTS))])
    np.testing.assert_allclose(sent.read(slice(None)), ref, rtol=1e-5, atol=1e-6)
    cfg = _cfg(tmp_path / "f", model_dirs["bert"], corpus_file, "extract.sentence_rows=first", "extract.dtype=fp32",
               "sites=[layers.1]")
    extract_store(cfg)
    first = ActivationStore.open(tmp_path / "f" / "store" / "sentences").read(slice(None))
    model, tok = load_saved(model_dirs["bert"])
    import torch

    for i, w in enumerate(SENTS):
        enc = tok([w], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            cls = model(**enc, output_hidden_states=True).hidden_states[2][0, 0].numpy()
        np.testing.assert_allclose(first[i], cls, rtol=1e-4, atol=1e-5)


def test_words_without_subwords_are_counted(tmp_path, model_dirs):
    corpus_file = write_conllu(tmp_path / "z.conllu", [["a", "\u200b", "b"], ["c"]])
    cfg = _cfg(tmp_path, model_dirs["bert"], corpus_file, "sites=[layers.0]")
    m = extract(cfg)
    assert m["extract/words_without_subwords"] == 1
    assert m["extract/words"] == 4 and m["extract/rows"] == 3
    store = ActivationStore.open(tmp_path / "store")
    assert store.word_ids.tolist() == [0, 2, 0]
    assert store.meta["words_without_subwords"] == 1
    assert store.meta["words_without_subwords_examples"] == [[0, 1]]


def test_random_init_is_seeded(tmp_path, model_dirs, corpus_file):
    a = extract_store(_cfg(tmp_path / "a", model_dirs["bert"], corpus_file, "model.random_init=true", "seed=3",
                           "sites=[layers.1]"))
    b = extract_store(_cfg(tmp_path / "b", model_dirs["bert"], corpus_file, "model.random_init=true", "seed=3",
                           "sites=[layers.1]"))
    c = extract_store(_cfg(tmp_path / "c", model_dirs["bert"], corpus_file, "sites=[layers.1]"))
    assert np.array_equal(a.read(slice(None)), b.read(slice(None)))
    assert not np.allclose(a.read(slice(None)), c.read(slice(None)))
    assert a.identity["model"]["random_init"] is True


def test_bf16_storage(tmp_path, model_dirs, corpus_file):
    s = extract_store(_cfg(tmp_path, model_dirs["bert"], corpus_file, "extract.dtype=bf16", "sites=[layers.1]"))
    ref = _reference(model_dirs["bert"], SENTS, {"layers.1": ("hidden", None, 2)}, "mean")["layers.1"]
    assert s.dtype == "bf16"
    np.testing.assert_allclose(s.read(slice(None)), ref, rtol=1e-2, atol=1e-2)


def test_reuse_and_mismatch(tmp_path, model_dirs, corpus_file):
    from neurolab.store import StoreMismatchError

    cfg = _cfg(tmp_path, model_dirs["bert"], corpus_file, "sites=[layers.1]")
    assert extract(cfg)["extract/reused"] == 0
    assert extract(cfg)["extract/reused"] == 1
    other = _cfg(tmp_path, model_dirs["gpt2"], corpus_file, "sites=[layers.1]")
    with pytest.raises(StoreMismatchError, match="manifest.json"):
        extract(other)
    other = _cfg(tmp_path, model_dirs["gpt2"], corpus_file, "sites=[layers.1]", "store.overwrite=true")
    assert extract(other)["extract/reused"] == 0
    assert ActivationStore.open(tmp_path / "store").meta["model_type"] == "gpt2"


def test_default_store_dir_under_store_root(tmp_path, model_dirs, corpus_file):
    cfg = compose("extract", [f"model.name_or_path={model_dirs['bert']}", f"corpus.path={corpus_file}",
                              "sites=[layers.0]", "extract.progress=false", f"paths.store_root={tmp_path / 'root'}"],
                  run_dir=tmp_path / "run")
    s = extract_store(cfg)
    assert s.path.parent == tmp_path / "root"
    assert s.path.name.startswith(model_dirs["bert"].name)


def test_sentence_rows_added_to_existing_store(tmp_path, model_dirs, corpus_file):
    s1 = extract_store(_cfg(tmp_path, model_dirs["bert"], corpus_file, "sites=[layers.1]"))
    checks = s1.manifest["shards"]
    extract_store(_cfg(tmp_path, model_dirs["bert"], corpus_file, "sites=[layers.1]", "extract.sentence_rows=last"))
    assert ActivationStore.open(tmp_path / "store").manifest["shards"] == checks
    assert ActivationStore.open(tmp_path / "store" / "sentences").num_tokens == len(SENTS)
