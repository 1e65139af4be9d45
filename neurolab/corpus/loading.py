"""Build a corpus and its train/dev/test split from a ``corpus`` config node."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .conllu_reader import read_conllu
from .types import Corpus

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


def split_sentences(
    num_sentences: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), shuffle: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """Sentence indices of train/dev/test.

    Contiguous by default (first 80% train, next 10% dev, last 10% test); ``shuffle=True`` permutes
    the sentences with ``seed`` first. Sizes: floor of each fraction, the remainder going to train.
    """
    fr = [float(x) for x in fractions]
    if len(fr) != 3 or any(x < 0 for x in fr) or not 0 < sum(fr) <= 1.0 + 1e-9:
        raise ConfigError(f"corpus.split must be three non-negative fractions summing to at most 1, got {list(fractions)}")
    order = np.arange(num_sentences)
    if shuffle:
        order = np.random.default_rng(seed).permutation(num_sentences)
    n_dev = int(np.floor(fr[1] * num_sentences))
    n_test = int(np.floor(fr[2] * num_sentences))
    n_train = int(np.floor(fr[0] * num_sentences))
    if abs(sum(fr) - 1.0) < 1e-9:
        n_train = num_sentences - n_dev - n_test
    return {
        "train": np.sort(order[:n_train]),
        "dev": np.sort(order[num_sentences - n_dev - n_test : num_sentences - n_test]) if n_dev else np.zeros(0, np.int64),
        "test": np.sort(order[num_sentences - n_test :]) if n_test else np.zeros(0, np.int64),
    }


def read_corpus_file(path: str | Path, fmt: str = "conllu", **kwargs: Any) -> Corpus:
    """Read one corpus file of format ``fmt`` (see :mod:`neurolab.corpus.readers`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: corpus file not found")
    if fmt == "conllu":
        return read_conllu(path)
    from .readers import read_format

    return read_format(path, fmt, **kwargs)


#: reader options taken from the corpus config
READER_OPTIONS = ("label_column", "tagger", "spacy_model")


def _reader_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in READER_OPTIONS if cfg.get(k) is not None}


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, Path)):
        return [x]
    return list(x)


def load_corpus(cfg: Mapping[str, Any]) -> tuple[Corpus, dict[str, np.ndarray]]:
    """Corpus (all sentences, in store row order) and sentence indices per split.

    With ``train``/``dev``/``test`` files, the corpus is their concatenation in that order and the
    split follows the files; otherwise ``path`` (a file, a folder of ``*.conllu`` files, or a list)
    is read in order and split by ``split`` / ``shuffle`` / ``split_seed``.
    """
    fmt = cfg.get("format", "conllu") or "conllu"
    parts = {k: cfg.get(k) for k in SPLITS if cfg.get(k)}
    if parts:
        corpora, splits, start = [], {}, 0
        for name in SPLITS:
            if name not in parts:
                splits[name] = np.zeros(0, np.int64)
                continue
            files = _expand(parts[name], fmt)
            labels = _as_list(cfg.get(f"{name}_labels"))
            c = _concat(_read_files(files, labels, fmt, cfg, key=f"corpus.{name}_labels"), name)
            corpora.append(c)
            splits[name] = np.arange(start, start + len(c))
            start += len(c)
        corpus = _concat(corpora, cfg.get("name") or "corpus")
        return corpus, splits
    path = cfg.get("path")
    if path is None:
        raise ConfigError("corpus.path is not set (a CoNLL-U file, a folder, or a list of files)")
    files = _expand(path, fmt)
    labels = _as_list(cfg.get("labels"))
    corpus = _concat(_read_files(files, labels, fmt, cfg, key="corpus.labels"), cfg.get("name") or Path(str(files[0])).stem)
    split = cfg.get("split", (0.8, 0.1, 0.1))
    splits = split_sentences(len(corpus), split, bool(cfg.get("shuffle", False)), int(cfg.get("split_seed", 0) or 0))
    return corpus, splits


def _read_files(files: list[Path], labels: list, fmt: str, cfg: Mapping[str, Any], key: str) -> list[Corpus]:
    """Read ``files``; label-file formats pair them with ``labels`` (same count, same order)."""
    kw = _reader_kwargs(cfg)
    if fmt in ("parallel", "sentence_labels"):
        if len(labels) == 1 and Path(str(labels[0])).is_dir():
            labels = sorted(Path(str(labels[0])).iterdir())
        if len(labels) != len(files):
            raise ConfigError(
                f"{key}: {len(labels)} label files for {len(files)} sentence files ({[str(f) for f in files][:5]}); "
                "give one label file per sentence file, in the same order"
            )
        return [read_corpus_file(f, fmt, labels=lab, **kw) for f, lab in zip(files, labels)]
    return [read_corpus_file(f, fmt, **kw) for f in files]


def _expand(path: Any, fmt: str) -> list[Path]:
    if isinstance(path, (list, tuple)) or (hasattr(path, "__iter__") and not isinstance(path, (str, Path))):
        out: list[Path] = []
        for p in path:
            out.extend(_expand(p, fmt))
        return out
    p = Path(str(path))
    if p.is_dir():
        ext = {"conllu": "*.conllu"}.get(fmt, "*")
        files = sorted(f for f in p.glob(ext) if f.is_file() and not f.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"{p}: folder holds no {ext} files")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{p}: corpus file not found")
    return [p]


def _concat(corpora: Sequence[Corpus], name: str) -> Corpus:
    if len(corpora) == 1:
        corpora[0].name = name
        return corpora[0]
    sentences, skipped = [], {}
    for c in corpora:
        sentences.extend(c.sentences)
        for k, v in c.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return Corpus(sentences, name=name, skipped=skipped)
