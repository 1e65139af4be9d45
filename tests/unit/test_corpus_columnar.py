"""The CoNLL-U reader holds sentences as columns: same content as a direct parse with the ``conllu``
package, sentence objects built on demand, and a fraction of the memory of per-word Python lists."""
from __future__ import annotations

import gc
import tracemalloc

import conllu
import numpy as np
import pytest

from neurolab.corpus.columnar import ColumnarSentences
from neurolab.corpus.conllu_reader import read_conllu
from neurolab.corpus.types import Corpus, Sentence, fingerprint_words


def _reference(path):
    """Words and columns of every sentence, parsed by the ``conllu`` package alone."""
    out = []
    with open(path, encoding="utf-8") as f:
        for tl in conllu.parse_incr(f):
            toks = [t for t in tl if isinstance(t["id"], int)]
            if not toks:
                continue
            out.append({
                "words": [t["form"] for t in toks],
                "upos": [t["upos"] for t in toks],
                "lemma": [t["lemma"] for t in toks],
                "feats": [dict(t["feats"] or {}) for t in toks],
                "head": [t["head"] if t["head"] is not None else -1 for t in toks],
                "deprel": [t["deprel"] for t in toks],
                "sent_id": tl.metadata.get("sent_id"),
                "text": tl.metadata.get("text"),
            })
    return out


def test_columnar_corpus_equals_a_direct_parse(ewt_dev):
    corpus = read_conllu(ewt_dev)
    assert isinstance(corpus.sentences, ColumnarSentences)
    ref = _reference(ewt_dev)
    assert len(corpus) == len(ref) and corpus.num_words == sum(len(r["words"]) for r in ref)
    for s, r in zip(corpus.sentences, ref):
        assert s.words == r["words"] and s.sent_id == r["sent_id"] and s.text == r["text"]
        for col in ("upos", "lemma", "head", "deprel"):
            assert s.annotations[col] == r[col], col
        assert [dict(f) for f in s.annotations["feats"]] == r["feats"]
    np.testing.assert_array_equal(corpus.lengths(), [len(r["words"]) for r in ref])
    assert corpus.fingerprint() == fingerprint_words([r["words"] for r in ref])
    assert corpus.columns == sorted(["lemma", "upos", "xpos", "feats", "head", "deprel", "misc"])
    # sources point at the sentence's first line in the file
    lines = open(ewt_dev, encoding="utf-8").read().split("\n")
    s = corpus.sentences[7]
    line = int(s.source.rsplit(":", 1)[1])
    assert lines[line - 1].startswith("#") and any(s.sent_id in ln for ln in lines[line - 1:line + 5])


def test_sequence_behaviour(ewt_dev):
    corpus = read_conllu(ewt_dev)
    seq = corpus.sentences
    n = len(seq)
    assert seq[-1] == seq[n - 1] and seq[0] == next(iter(seq))
    part = seq[3:6]
    assert isinstance(part, list) and [p.words for p in part] == [seq[i].words for i in (3, 4, 5)]
    with pytest.raises(IndexError, match="out of range"):
        seq[n]
    sub = corpus.subset([2, 0])
    assert [s.words for s in sub.sentences] == [seq[2].words, seq[0].words]
    # sentences are built on demand: a caller's changes do not reach the corpus
    s = seq[1]
    s.words[0] = "CHANGED"
    assert seq[1].words[0] != "CHANGED"


def test_columns_hold_a_fraction_of_the_memory_of_word_lists(ewt_dev, tmp_path):
    """Retained memory (tracemalloc) of the columnar corpus against the same sentences as lists of
    Python objects (one Sentence per sentence, one list per column, the strings shared)."""
    big = tmp_path / "x4.conllu"
    blocks = open(ewt_dev, encoding="utf-8").read().split("\n\n")[:600]
    big.write_text(("\n\n".join(blocks) + "\n\n") * 4, encoding="utf-8")
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    corpus = read_conllu(big)
    gc.collect()
    columnar = tracemalloc.get_traced_memory()[0] - base
    objects = Corpus([Sentence(s.words, s.annotations, s.sent_id, s.source, None, s.text) for s in corpus.sentences])
    gc.collect()
    both = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    words = corpus.num_words
    as_lists = both - columnar
    assert len(objects) == len(corpus)
    assert columnar / words < 70, f"{columnar / words:.0f} bytes per word held as columns"
    assert columnar < as_lists / 2, (columnar / words, as_lists / words)
