"""Word alignment properties: every word gets exactly the subwords it produces alone, in order."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolab.extraction.alignment import special_tokens, tokenize_words, word_spans
from neurolab.extraction.plan import make_batches, make_plan, shard_windows
from tests.helpers.extraction import bytelevel_tokenizer, wordpiece_tokenizer

TOKS = {}


def tok(kind):
    if kind not in TOKS:
        TOKS[kind] = wordpiece_tokenizer("bert") if kind == "bert" else bytelevel_tokenizer()
    return TOKS[kind]


alphabet = st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Co", "Cn"))
word = st.one_of(
    st.text(alphabet, min_size=1, max_size=8),
    st.sampled_from([".", ",", "!?", "\"", "'s", "--", "Zürich", "naïve", "日本語", "emoji😀", "$19.99", "e-mail"]),
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=40, max_size=120),  # very long words
)
sentence = st.lists(word, min_size=1, max_size=12)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sents=st.lists(sentence, min_size=1, max_size=4))
def test_each_word_gets_its_own_subwords_in_order(kind, sents):
    t = tok(kind)
    res = tokenize_words(t, sents)
    for words, r in zip(sents, res):
        assert r.num_words == len(words)
        assert np.all(np.diff(r.word) >= 0)  # in order
        for w, text in enumerate(words):
            alone = t([text], is_split_into_words=True, add_special_tokens=False)["input_ids"]
            assert r.ids[r.word == w].tolist() == alone, (kind, text)
        present = set(r.word.tolist())
        assert sorted(set(range(len(words))) - present) == r.missing


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=8), w=st.integers(3, 20), stride=st.integers(1, 20),
       agg=st.sampled_from(["first", "last", "mean", "max"]))
def test_windows_cover_every_word_once(lengths, w, stride, agg):
    """Synthetic token->word maps: every row is fed, positions stay inside windows, no truncation."""
    from neurolab.extraction.alignment import Tokenized

    rng = np.random.default_rng(sum(lengths) + w)
    toks = []
    for n in lengths:
        word = np.sort(rng.integers(0, max(n // 2, 1), size=n))
        word = np.unique(word, return_inverse=True)[1].astype(np.int64)
        toks.append(Tokenized(np.arange(n, dtype=np.int64), word, int(word.max()) + 1, []))
    plan = make_plan(toks, [101], [102], w + 2, stride, shard_size=7)
    assert sum(s.rows for s in plan.shards) == plan.num_rows == sum(int(t.word.max()) + 1 for t in toks)
    for shard in plan.shards:
        windows, split = shard_windows(plan, shard, agg)
        fed = np.zeros(shard.rows, dtype=int)
        for win in windows:
            assert win.length <= w + 2
            assert np.all((win.pos >= 1) & (win.pos < win.length - 1))
            # the token at each position belongs to the row's word
            t = plan.tokens[win.sentence]
            tok_index = win.start + win.pos - 1
            base = plan.row_offset[win.sentence] - shard.row_start
            assert np.array_equal(t.word[tok_index], win.row - base)
            np.add.at(fed, win.row, 1)
        assert np.all(fed >= 1)
        batches = make_batches(windows, batch_tokens=40)
        assert sorted(id(x) for b in batches for x in b) == sorted(id(x) for x in windows)
        for b in batches:
            assert len(b) == 1 or len(b) * max(x.length for x in b) <= 40


def test_special_tokens():
    assert special_tokens(tok("bert")) == ([tok("bert").cls_token_id], [tok("bert").sep_token_id])
    assert special_tokens(tok("gpt2")) == ([], [])


def test_word_spans():
    words, a, b = word_spans(np.array([0, 0, 1, 3, 3, 3]))
    assert words.tolist() == [0, 1, 3] and a.tolist() == [0, 2, 3] and b.tolist() == [2, 3, 6]
