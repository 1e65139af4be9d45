"""CoNLL-U reading through the ``conllu`` package, with line-precise errors.

Multiword-token lines (``3-4``) and empty nodes (``5.1``) are not words: they are skipped and
counted in ``Corpus.skipped``. Rows of a store follow the remaining word lines.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import conllu

from .columnar import ColumnarBuilder
from .types import Corpus, CorpusFormatError

log = logging.getLogger(__name__)

_ID_WORD = re.compile(r"^[1-9][0-9]*$")
_ID_RANGE = re.compile(r"^[1-9][0-9]*-[1-9][0-9]*$")
_ID_EMPTY = re.compile(r"^[0-9]+\.[1-9][0-9]*$")
COLUMNS = ["id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc"]
#: the annotation columns a corpus keeps (held as columns: :mod:`neurolab.corpus.columnar`)
READ_COLUMNS = ["lemma", "upos", "xpos", "feats", "head", "deprel", "misc"]


def _parse_feats(value: str, where: str) -> dict[str, str]:
    if value == "_" or value == "":
        return {}
    out = {}
    for part in value.split("|"):
        if "=" not in part:
            raise CorpusFormatError(f"{where}: FEATS item {part!r} is not Attribute=Value")
        k, v = part.split("=", 1)
        out[k] = v
    return out


def read_conllu(path: str | os.PathLike, name: str | None = None) -> Corpus:
    """Read a CoNLL-U file into a :class:`Corpus`.

    Raises :class:`CorpusFormatError` naming ``file:line`` for a malformed line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: corpus file not found")
    sentences = ColumnarBuilder(str(path), READ_COLUMNS)
    empty: list[str] = []
    skipped = {"multiword_token_lines": 0, "empty_node_lines": 0}
    block: list[str] = []
    block_start = 0
    expected = 1

    strings: dict[str, str] = {}
    mappings: dict[tuple, dict] = {}

    def intern(x):
        return strings.setdefault(x, x) if isinstance(x, str) else x

    def shared(m) -> dict:
        """The one dict of these items (read-only by convention, like every annotation)."""
        if not m:
            m = {}
        key = tuple((k, v if isinstance(v, (str, int, float, type(None))) else repr(v)) for k, v in m.items())
        got = mappings.get(key)
        if got is None:
            got = mappings[key] = {intern(k): intern(v) for k, v in m.items()}
        return got

    def flush(end_line: int) -> None:
        nonlocal block, expected
        if not block:
            return
        text = "\n".join(block) + "\n\n"
        try:
            tl = conllu.parse(text)[0]
        except Exception as e:  # conllu's own message lacks the file position
            raise CorpusFormatError(f"{path}:{block_start}: cannot parse sentence ({e})") from None
        words, cols = [], {c: [] for c in READ_COLUMNS}
        line_no = block_start + sum(1 for ln in block if ln.startswith("#"))
        for tok in tl:
            tid = tok["id"]
            if isinstance(tid, tuple):
                if len(tid) == 3 and tid[1] == "-":
                    skipped["multiword_token_lines"] += 1
                else:
                    skipped["empty_node_lines"] += 1
                line_no += 1
                continue
            # one object per distinct value (strings, FEATS and MISC mappings) shared by every word
            # that has it: a corpus costs a few pointers per word, not a few hundred bytes
            words.append(intern(tok["form"]))
            cols["lemma"].append(intern(tok["lemma"] if tok["lemma"] is not None else "_"))
            cols["upos"].append(intern(tok["upos"] if tok["upos"] is not None else "_"))
            cols["xpos"].append(intern(tok["xpos"] if tok["xpos"] is not None else "_"))
            cols["feats"].append(shared(tok["feats"]))
            cols["head"].append(tok["head"] if tok["head"] is not None else -1)
            cols["deprel"].append(intern(tok["deprel"] if tok["deprel"] is not None else "_"))
            cols["misc"].append(shared(tok["misc"]))
            line_no += 1
        meta = tl.metadata or {}
        if words:
            sentences.add(words, cols, sent_id=meta.get("sent_id"), line=block_start, text=meta.get("text"))
        else:
            empty.append(f"{path}:{block_start}")
        block = []
        expected = 1

    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                flush(lineno)
                continue
            if not block:
                block_start = lineno
            if line.startswith("#"):
                block.append(line)
                continue
            cells = line.split("\t")
            where = f"{path}:{lineno}"
            if len(cells) != 10:
                raise CorpusFormatError(
                    f"{where}: expected 10 tab-separated CoNLL-U columns, found {len(cells)}: {line[:80]!r}"
                )
            tid = cells[0]
            if _ID_WORD.match(tid):
                if int(tid) != expected:
                    raise CorpusFormatError(f"{where}: word ID {tid} out of sequence, expected {expected}")
                expected += 1
                if cells[1] == "":
                    raise CorpusFormatError(f"{where}: empty FORM")
                if cells[6] not in ("_",) and not cells[6].isdigit():
                    raise CorpusFormatError(f"{where}: HEAD {cells[6]!r} is not a number")
                _parse_feats(cells[5], where)
            elif _ID_RANGE.match(tid) or _ID_EMPTY.match(tid):
                pass
            else:
                raise CorpusFormatError(f"{where}: ID {tid!r} is not a word index, a range (3-4) or an empty node (5.1)")
            block.append(line)
        flush(-1)
    if empty:
        skipped["empty_sentences"] = len(empty)
        for where in empty:
            log.warning("%s: sentence without words, skipped", where)
    if not len(sentences):
        raise CorpusFormatError(f"{path}: no sentences found (is this a CoNLL-U file?)")
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        log.info("%s: skipped %s", path, skipped)
    return Corpus(sentences.build(), name=name or path.stem, skipped=skipped)
