"""The planted suite: activation stores in which chosen columns are synthetic neurons with a known
relation to the concept, so that a ranking can be scored against the right answer.

A suite starts from a *source*: real activations (a store, e.g. MiniLM over a corpus, with the
corpus its rows come from) or purely synthetic ones (:func:`synthetic_source`, no model). Every
*case* (one planted type × effect size × seed) is a new store written with
:func:`neurolab.store.write_store`: the source's rows and sites, in the source's storage dtype, with
a few columns replaced. Every other column is byte-identical to the source. The concept is binary
and planted as well: for each seed, a random set of words (``prevalence`` of them, drawn
independently of the activations) is labelled ``Planted=Yes`` and the rest ``Planted=No``, written
into the FEATS column of a CoNLL-U copy of the corpus (``corpus-s<seed>.conllu``), so the real
columns carry no information about it and the planted ones are the only right answers. The
concept is ``feats.Planted`` one-vs-rest (``concept=feats concept.attribute=Planted
concept.value=Yes`` on the command line, name ``feats.Planted=Yes``).

Planted types (``y`` = 1 on concept words; ``effect`` = ``d``; every planted signal ``z`` is
standardised over all rows, then written as ``mean + std * z`` of the column it replaces, except the
distractors, which get ``distractor_scale`` times the largest column standard deviation; only columns
that vary are replaced, since a dead unit's scale would flatten the planted signal):

* ``focused`` — one neuron, ``z = d y + e``.
* ``group`` — ``group_size`` (m) neurons decodable only jointly: ``x_j = (d/m) y + a (n_j - mean_j n)
  + e_j / sqrt(m)`` with ``a = group_noise``. The shared noise cancels in the sum, so the best linear
  read-out separates the classes by ``d`` (Mahalanobis), while each neuron alone reaches only about
  ``d / (m sqrt(a^2 (m-1)/m + 1/m))``.
* ``group_xor`` — ``xor_size`` neurons whose sign pattern has odd parity on concept words and even
  parity elsewhere, with probability ``Phi(d/2)`` (else the other way round): no neuron or subset of
  fewer than m neurons carries any information alone; the best classifier on all m reaches balanced
  accuracy ``Phi(d/2)``.
* ``redundant`` — ``copies`` (r) noisy copies of one signal: ``s = d sqrt(1 + t^2) y + e``,
  ``x_i = s + t e_i`` with ``t = copy_noise``; each copy alone separates by ``d``.
* ``polysemous`` — one neuron for two concepts: ``z = d (y + y_B) + e``, ``y_B`` a second random
  concept (``PlantedB=Yes``, disjoint from the first, same prevalence) that the ranked concept
  counts as "rest".
* ``distractors`` — a focused neuron (the gold answer) among ``distractors`` high-variance neurons
  unrelated to the concept (Student-t noise) and a word-frequency neuron (log count of the word form
  in the corpus); the decoys are listed in the gold file, not among the answers.

In every type the effect ``d`` is the separation of the best read-out of the gold neurons:
``Phi(d/2)`` is its balanced accuracy (the Bayes rate for the Gaussian types).

Layout of a suite directory::

    suite.json                  the spec, its hash and the list of cases
    corpus-s<seed>.conllu       the corpus with the planted labels (FEATS Planted / PlantedB)
    <type>-e<effect>-s<seed>/   one case: store/ (the planted store) and gold.json

Example::

    >>> src = synthetic_source(num_sentences=60, units=16, seed=0)                # doctest: +SKIP
    >>> suite = build_suite("suite", src, types=["focused"], effects=[2.0], seeds=[0])  # doctest: +SKIP
    >>> suite.cases[0].gold                                                     # doctest: +SKIP
    [11]
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..corpus.loading import split_sentences
from ..corpus.types import Corpus, Sentence
from ..errors import ConfigError
from ..store import ActivationStore, StoreMismatchError, write_store

log = logging.getLogger(__name__)

__all__ = ["PLANTED_TYPES", "PlantParams", "Source", "PlantedCase", "PlantedSuite", "synthetic_source",
           "source_from_store", "build_suite", "plant_signals", "write_conllu", "CONCEPT_ATTRIBUTE",
           "POSITIVE", "NEGATIVE", "case_name"]

PLANTED_TYPES = ("focused", "group", "group_xor", "redundant", "polysemous", "distractors")
CONCEPT_ATTRIBUTE = "Planted"
SECOND_ATTRIBUTE = "PlantedB"
POSITIVE, NEGATIVE = "Yes", "No"
SUITE_FILE = "suite.json"
GOLD_FILE = "gold.json"
SUITE_VERSION = 2


@dataclass(frozen=True)
class PlantParams:
    """The shape of the planted neurons (see the module docstring)."""

    prevalence: float = 0.15
    group_size: int = 3
    group_noise: float = 8.0
    xor_size: int = 2
    copies: int = 3
    copy_noise: float = 0.5
    distractors: int = 4
    distractor_scale: float = 2.0

    def check(self) -> "PlantParams":
        if not 0.0 < float(self.prevalence) < 0.5:
            raise ConfigError(f"benchmark.plant.prevalence must be in (0, 0.5), got {self.prevalence}")
        for key, low in (("group_size", 2), ("xor_size", 2), ("copies", 2), ("distractors", 0)):
            if int(getattr(self, key)) < low:
                raise ConfigError(f"benchmark.plant.{key} must be at least {low}, got {getattr(self, key)}")
        for key in ("group_noise", "copy_noise", "distractor_scale"):
            if not float(getattr(self, key)) > 0:
                raise ConfigError(f"benchmark.plant.{key} must be positive, got {getattr(self, key)}")
        return self

    def width(self, kind: str) -> tuple[int, int]:
        """(gold neurons, decoys) a case of ``kind`` plants."""
        return {"focused": (1, 0), "group": (int(self.group_size), 0), "group_xor": (int(self.xor_size), 0),
                "redundant": (int(self.copies), 0), "polysemous": (1, 0),
                "distractors": (1, int(self.distractors) + 1)}[kind]


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
@dataclass
class Source:
    """Activations to plant into: ``arrays[site]`` float32 ``[rows, units]`` in corpus order (values
    exactly representable in ``dtype``), the corpus the rows belong to (one row per word),
    ``sentence_ids`` / ``word_ids`` per row, and what identifies it (``identity``)."""

    corpus: Corpus
    arrays: dict[str, np.ndarray]
    sentence_ids: np.ndarray
    word_ids: np.ndarray
    dtype: str = "fp32"
    model: str = "synthetic"
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return list(self.arrays)

    @property
    def neurons_per_site(self) -> dict[str, int]:
        return {s: int(a.shape[1]) for s, a in self.arrays.items()}

    @property
    def num_neurons(self) -> int:
        return sum(self.neurons_per_site.values())

    @property
    def num_rows(self) -> int:
        return len(self.sentence_ids)

    def column(self, index: int) -> tuple[str, int]:
        """(site, unit) of a column of the concatenation of the sites."""
        for s, w in self.neurons_per_site.items():
            if index < w:
                return s, int(index)
            index -= w
        raise IndexError(index)


def _zipf_words(rng: np.random.Generator, vocab: int, n: int) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    return rng.choice(vocab, size=n, p=p / p.sum())


def synthetic_source(*, num_sentences: int = 400, sites: Sequence[str] = ("layers.0", "layers.1"), units: int = 64,
                     vocab: int = 500, factors: int = 6, outliers: int = 2, seed: int = 0) -> Source:
    """Synthetic activations that need no model: sentences of 4–24 Zipf-distributed word forms
    (``w0``, ``w1`` ...), and per site a word-type embedding + a few shared factors + noise, with
    log-normal column scales and ``outliers`` columns of ten times the scale (as transformers have).
    """
    if num_sentences < 10 or units < 4 or not sites:
        raise ConfigError(f"synthetic source: need at least 10 sentences and 4 units per site, got "
                          f"{num_sentences} sentences, {units} units, sites {list(sites)}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    lens = rng.integers(4, 25, size=num_sentences)
    n = int(lens.sum())
    word_type = _zipf_words(rng, vocab, n)
    sent = np.repeat(np.arange(num_sentences), lens).astype(np.int64)
    word = np.concatenate([np.arange(k) for k in lens]).astype(np.int64)
    sentences, at = [], 0
    for i, k in enumerate(lens):
        forms = [f"w{int(t)}" for t in word_type[at:at + k]]
        sentences.append(Sentence(words=forms, annotations={}, sent_id=f"synthetic-{i}"))
        at += k
    arrays = {}
    for s in sites:
        emb = rng.normal(size=(vocab, units)) * 0.7
        load = rng.normal(size=(factors, units)) * 0.5
        x = emb[word_type] + rng.normal(size=(n, factors)) @ load + rng.normal(size=(n, units))
        scale = np.exp(rng.normal(scale=0.5, size=units))
        if outliers:
            scale[rng.choice(units, size=min(outliers, units), replace=False)] *= 10.0
        arrays[str(s)] = (x * scale + rng.normal(size=units)).astype(np.float32)
    corpus = Corpus(sentences, name=f"synthetic-{seed}")
    ident = {"source": "synthetic", "num_sentences": int(num_sentences), "sites": [str(s) for s in sites],
             "units": int(units), "vocab": int(vocab), "factors": int(factors), "outliers": int(outliers),
             "seed": int(seed)}
    return Source(corpus, arrays, sent, word, "fp32", "synthetic", ident)


def source_from_store(store: ActivationStore | str | os.PathLike, corpus: Corpus, *, sites: Sequence[str] | None = None,
                      max_sentences: int | None = None) -> Source:
    """The rows of ``store`` for the first ``max_sentences`` sentences of ``corpus`` (all by default),
    for ``sites`` (all by default), read once. The store must hold one row per word of those
    sentences (a store extracted from this corpus, or ``write_store`` with its ids)."""
    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(store)
    sites = store._check_sites(list(sites) if sites else None)
    n_sent = len(corpus) if not max_sentences else min(int(max_sentences), len(corpus))
    sent_ids = store.sentence_ids
    rows = int(np.searchsorted(sent_ids, n_sent, side="left"))
    sent, word = sent_ids[:rows].astype(np.int64), store.word_ids[:rows].astype(np.int64)
    lens = np.array([len(s) for s in corpus.sentences[:n_sent]], dtype=np.int64)
    expect_word = np.concatenate([np.arange(k) for k in lens]) if len(lens) else np.zeros(0, np.int64)
    expect_sent = np.repeat(np.arange(n_sent), lens)
    if rows != int(lens.sum()) or not (np.array_equal(sent, expect_sent) and np.array_equal(word, expect_word)):
        raise StoreMismatchError(
            f"store {store.path} does not hold one row per word of the first {n_sent} sentences of corpus "
            f"{corpus.name!r} ({int(lens.sum())} words; the store has {rows} rows for them): plant into a store "
            "extracted from this corpus")
    arrays = {s: store.read(slice(0, rows), [s]) for s in sites}
    model = store.identity.get("model") or store.meta.get("model") or ""
    if isinstance(model, dict):
        model = model.get("name") or model.get("name_or_path") or ""
    ident = {"source": "store", "store": str(store.path), "model": str(model), "sites": list(sites),
             "num_sentences": int(n_sent), "rows": rows, "dtype": store.dtype,
             "corpus_fingerprint": corpus.subset(range(n_sent)).fingerprint()}
    return Source(corpus.subset(range(n_sent)), arrays, sent, word, store.dtype, str(model), ident)


# ---------------------------------------------------------------------------------------------
# labels and planted signals
# ---------------------------------------------------------------------------------------------
def planted_labels(num_rows: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The concept (``y``) and the second concept of polysemous neurons (``y_b``, disjoint), as 0/1
    int8 per row, drawn independently of any activation."""
    rng = np.random.default_rng([int(seed), 0x1ABE1])
    y = (rng.random(num_rows) < prevalence).astype(np.int8)
    u = rng.random(num_rows)
    yb = ((y == 0) & (u < prevalence / (1.0 - prevalence))).astype(np.int8)
    return y, yb


def _standardise(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    sd = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def plant_signals(kind: str, effect: float, y: np.ndarray, y_b: np.ndarray, log_freq: np.ndarray,
                  rng: np.random.Generator, params: PlantParams = PlantParams()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The planted neurons of one case: ``(gold [rows, g], decoys [rows, h], roles)`` as standardised
    float64 signals (mean 0, std 1 over the rows). ``roles`` names each gold then decoy column."""
    if kind not in PLANTED_TYPES:
        raise ConfigError(f"planted type {kind!r} is unknown; expected one of {list(PLANTED_TYPES)}")
    d = float(effect)
    n = len(y)
    yf = y.astype(np.float64)
    decoys = np.zeros((n, 0))
    if kind in ("focused", "distractors"):
        gold = (d * yf + rng.normal(size=n))[:, None]
        roles = ["focused"]
        if kind == "distractors":
            h = int(params.distractors)
            noise = rng.standard_t(3, size=(n, h))
            freq = log_freq + 0.1 * rng.normal(size=n)
            decoys = np.concatenate([noise, freq[:, None]], axis=1)
            roles += [f"high_variance_{i}" for i in range(h)] + ["word_frequency"]
    elif kind == "group":
        m, a = int(params.group_size), float(params.group_noise)
        shared = rng.normal(size=(n, m))
        shared -= shared.mean(axis=1, keepdims=True)
        gold = (d / m) * yf[:, None] + a * shared + rng.normal(size=(n, m)) / math.sqrt(m)
        roles = [f"group_{j}" for j in range(m)]
    elif kind == "group_xor":
        m = int(params.xor_size)
        g = np.abs(rng.normal(size=(n, m)))
        signs = rng.integers(0, 2, size=(n, m - 1))
        agree = rng.random(n) < _phi(d / 2.0)
        parity = np.where(agree, y, 1 - y)  # odd parity (1) on concept words with probability Phi(d/2)
        last = (signs.sum(axis=1) + parity) % 2
        bits = np.concatenate([signs, last[:, None]], axis=1)
        gold = np.where(bits == 1, -g, g)
        roles = [f"xor_{j}" for j in range(m)]
    elif kind == "redundant":
        r, t = int(params.copies), float(params.copy_noise)
        s = d * math.sqrt(1.0 + t * t) * yf + rng.normal(size=n)
        gold = s[:, None] + t * rng.normal(size=(n, r))
        roles = [f"copy_{i}" for i in range(r)]
    else:  # polysemous
        gold = (d * (yf + y_b.astype(np.float64)) + rng.normal(size=n))[:, None]
        roles = ["polysemous"]
    return _standardise(gold), _standardise(decoys) if decoys.shape[1] else decoys, roles


def _word_log_freq(corpus: Corpus) -> np.ndarray:
    counts: dict[str, int] = {}
    for s in corpus.sentences:
        for w in s.words:
            k = w.lower()
            counts[k] = counts.get(k, 0) + 1
    return np.array([math.log(counts[w.lower()]) for s in corpus.sentences for w in s.words], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _clean(v: Any) -> str:
    s = "_" if v is None or v == "" else str(v)
    return s.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_conllu(path: str | os.PathLike, corpus: Corpus, extra_feats: Mapping[str, Sequence[Sequence[str]]] = {}) -> Path:
    """Write ``corpus`` as CoNLL-U (the columns it has; ``_`` for the others) with ``extra_feats``
    (attribute -> per-sentence, per-word values) added to FEATS. Tabs and newlines inside a field
    become spaces; nothing else is changed, so sentence and word counts are those of ``corpus``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for i, s in enumerate(corpus.sentences):
        ann = s.annotations
        lines.append(f"# sent_id = {_clean(s.sent_id or f's{i}')}")
        for j, w in enumerate(s.words):
            feats = dict(ann["feats"][j]) if "feats" in ann and ann["feats"][j] else {}
            for attr, vals in extra_feats.items():
                feats[attr] = vals[i][j]
            fs = "|".join(f"{k}={_clean(v)}" for k, v in sorted(feats.items())) or "_"
            head = ann.get("head", [None] * len(s.words))[j]
            head = "_" if head is None or int(head) < 0 else str(int(head))
            cells = [str(j + 1), _clean(w) if str(w).strip() else "_", _clean(ann.get("lemma", [None] * len(s))[j]),
                     _clean(ann.get("upos", [None] * len(s))[j]), _clean(ann.get("xpos", [None] * len(s))[j]), fs,
                     head, _clean(ann.get("deprel", [None] * len(s))[j]), "_", "_"]
            lines.append("\t".join(cells))
        lines.append("")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _per_sentence(values: np.ndarray, corpus: Corpus) -> list[list[str]]:
    out, at = [], 0
    for s in corpus.sentences:
        out.append([POSITIVE if v else NEGATIVE for v in values[at:at + len(s)]])
        at += len(s)
    return out


def case_name(kind: str, effect: float, seed: int) -> str:
    return f"{kind}-e{float(effect):g}-s{int(seed)}"


def _case_rng(kind: str, effect: float, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode("utf-8")), int(round(float(effect) * 1000))])


@dataclass
class PlantedCase:
    """One planted store: where it is, its gold neurons (column ids into the concatenation of the
    store's sites) and decoys, and how to join it with its corpus."""

    type: str
    effect: float
    seed: int
    root: Path
    store_dir: str
    corpus_file: str
    gold: list[int]
    decoys: list[int] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return case_name(self.type, self.effect, self.seed)

    @property
    def store_path(self) -> Path:
        return self.root / self.store_dir

    @property
    def corpus_path(self) -> Path:
        return self.root / self.corpus_file

    @property
    def gold_path(self) -> Path:
        return self.root / self.name / GOLD_FILE

    @property
    def concept_name(self) -> str:
        return f"feats.{CONCEPT_ATTRIBUTE}={POSITIVE}"

    @property
    def positive(self) -> str:
        return POSITIVE

    def concept(self):
        """The ranked concept: FEATS ``Planted=Yes`` against the rest."""
        from ..corpus.concepts import ColumnConcept

        return ColumnConcept(column="feats", attribute=CONCEPT_ATTRIBUTE, value=POSITIVE)

    def datamodule(self, corpus: Corpus | None = None, *, split: Sequence[float] = (0.8, 0.1, 0.1), **kwargs: Any):
        """An ``ActivationDataModule`` of this case (the store joined with its corpus by (sentence, word)
        ids, split by sentence; ``kwargs`` go to the data module). Pass ``corpus`` (the parsed
        :attr:`corpus_path`) to share one parse among the cases of a seed."""
        from ..corpus import read_conllu
        from ..data import ActivationDataModule

        if corpus is None:
            corpus = read_conllu(self.corpus_path)
        splits = split_sentences(len(corpus), split)
        return ActivationDataModule(ActivationStore.open(self.store_path), corpus, splits, self.concept(), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "effect": float(self.effect), "seed": int(self.seed),
                "store": self.store_dir, "corpus": self.corpus_file, "gold": [int(g) for g in self.gold],
                "decoys": [int(g) for g in self.decoys], "roles": list(self.roles)}


@dataclass
class PlantedSuite:
    """The cases of a suite directory (see the module docstring)."""

    root: Path
    cases: list[PlantedCase]
    spec: dict[str, Any]

    @property
    def types(self) -> list[str]:
        return sorted({c.type for c in self.cases}, key=lambda t: PLANTED_TYPES.index(t) if t in PLANTED_TYPES else 99)

    def select(self, types: Iterable[str] | None = None) -> list[PlantedCase]:
        """The cases of ``types`` (all by default); a type the suite lacks is a ``ConfigError``."""
        if types is None:
            return list(self.cases)
        types = [str(t) for t in types]
        missing = [t for t in types if t not in self.types]
        if missing:
            raise ConfigError(f"planted type(s) {missing} not in the suite at {self.root}; it has {self.types}"
                              + ("" if all(t in PLANTED_TYPES for t in missing) else f" (known types: {list(PLANTED_TYPES)})"))
        return [c for c in self.cases if c.type in types]

    @classmethod
    def load(cls, root: str | os.PathLike) -> "PlantedSuite":
        root = Path(root)
        f = root / SUITE_FILE
        if not f.exists():
            raise ConfigError(f"{f}: not found; {root} is not a planted suite (build one with build_suite)")
        d = json.loads(f.read_text(encoding="utf-8"))
        cases = [PlantedCase(c["type"], float(c["effect"]), int(c["seed"]), root, c["store"], c["corpus"],
                             [int(g) for g in c["gold"]], [int(g) for g in c.get("decoys", [])], list(c.get("roles", [])))
                 for c in d["cases"]]
        return cls(root, cases, d.get("spec", {}))


def _spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def build_suite(root: str | os.PathLike, source: Source, *, types: Sequence[str] = PLANTED_TYPES,
                effects: Sequence[float] = (0.5, 1.0, 2.0), seeds: Sequence[int] = (0,),
                params: PlantParams | Mapping[str, Any] | None = None, shard_size: int = 65536,
                reuse: bool = True) -> PlantedSuite:
    """Write one planted store per (type, effect, seed) under ``root`` (see the module docstring).

    With ``reuse`` an existing suite at ``root`` built from the same spec (source identity, types,
    effects, seeds, params) is returned as it is; a different one is rebuilt.
    """
    params = params if isinstance(params, PlantParams) else PlantParams(**dict(params or {}))
    params.check()
    types = [str(t) for t in types]
    bad = [t for t in types if t not in PLANTED_TYPES]
    if bad or not types:
        raise ConfigError(f"planted type(s) {bad or types} unknown; expected some of {list(PLANTED_TYPES)}")
    effects = [float(e) for e in effects]
    if not effects or any(not math.isfinite(e) or e < 0 for e in effects):
        raise ConfigError(f"benchmark.effects must be non-negative numbers, got {effects}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("benchmark.seeds is empty")
    need = max(sum(params.width(t)) for t in types)
    if need > source.num_neurons:
        raise ConfigError(f"the planted types {types} need {need} columns; the source has {source.num_neurons}")
    root = Path(root)
    spec = {"version": SUITE_VERSION, "source": source.identity, "types": types, "effects": effects, "seeds": seeds,
            "params": asdict(params), "dtype": source.dtype}
    spec_hash = _spec_hash(spec)
    if reuse and (root / SUITE_FILE).exists():
        try:
            old = json.loads((root / SUITE_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("spec_hash") == spec_hash and old.get("complete"):
            log.info("planted suite at %s is up to date (%d cases)", root, len(old.get("cases", [])))
            return PlantedSuite.load(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / SUITE_FILE).unlink(missing_ok=True)
    F = source.num_neurons
    sites = source.sites
    offsets = np.cumsum([0] + [source.neurons_per_site[s] for s in sites])
    col_mean = np.concatenate([source.arrays[s].astype(np.float64).mean(0) for s in sites])
    col_std = np.concatenate([source.arrays[s].astype(np.float64).std(0) for s in sites])
    big = float(col_std.max()) if F else 1.0
    # planted neurons take the scale of the column they replace: constant columns (dead units) would
    # flatten them, so only columns that vary are replaced
    positive = col_std[col_std > 0]
    live = np.flatnonzero(col_std > 1e-3 * (np.median(positive) if len(positive) else 1.0))
    if need > len(live):
        raise ConfigError(f"the planted types {types} need {need} columns that vary; the source has {len(live)}")
    log_freq = _word_log_freq(source.corpus)
    cases: list[PlantedCase] = []
    for seed in seeds:
        y, yb = planted_labels(source.num_rows, params.prevalence, seed)
        corpus_file = f"corpus-s{seed}.conllu"
        write_conllu(root / corpus_file, source.corpus, {CONCEPT_ATTRIBUTE: _per_sentence(y, source.corpus),
                                                           SECOND_ATTRIBUTE: _per_sentence(yb, source.corpus)})
        for kind in types:
            for effect in effects:
                rng = _case_rng(kind, effect, seed)
                gold_z, decoy_z, roles = plant_signals(kind, effect, y, yb, log_freq, rng, params)
                cols = live[rng.choice(len(live), size=gold_z.shape[1] + decoy_z.shape[1], replace=False)].astype(np.int64)
                gold_cols, decoy_cols = cols[:gold_z.shape[1]], cols[gold_z.shape[1]:]
                values = np.concatenate([col_mean[gold_cols] + col_std[gold_cols] * gold_z,
                                         col_mean[decoy_cols] + params.distractor_scale * big * decoy_z], axis=1)
                name = case_name(kind, effect, seed)
                saved = _replace_columns(source, offsets, cols, values)
                try:
                    write_store(root / name / "store", source.arrays, source.sentence_ids, source.word_ids,
                                {"model": source.model, "planted": {"type": kind, "effect": effect, "seed": seed},
                                 "written_at": ""}, dtype=source.dtype, shard_size=shard_size, overwrite=True)
                finally:
                    _restore_columns(source, offsets, cols, saved)
                case = PlantedCase(kind, effect, seed, root, f"{name}/store", corpus_file,
                                   [int(c) for c in gold_cols], [int(c) for c in decoy_cols], roles)
                _write_gold(case, source, params, y)
                cases.append(case)
                log.info("planted %s: gold %s%s", name, [source.column(c) for c in gold_cols],
                         f", decoys {[source.column(c) for c in decoy_cols]}" if len(decoy_cols) else "")
    suite = PlantedSuite(root, cases, spec)
    doc = {"spec": spec, "spec_hash": spec_hash, "complete": True, "cases": [c.to_dict() for c in cases]}
    tmp = root / f".{SUITE_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / SUITE_FILE)
    return suite


def _replace_columns(source: Source, offsets: np.ndarray, cols: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    saved = []
    sites = source.sites
    for j, c in enumerate(cols):
        si = int(np.searchsorted(offsets, c, side="right") - 1)
        a = source.arrays[sites[si]]
        u = int(c - offsets[si])
        saved.append(a[:, u].copy())
        a[:, u] = values[:, j].astype(np.float32)
    return saved


def _restore_columns(source: Source, offsets: np.ndarray, cols: np.ndarray, saved: list[np.ndarray]) -> None:
    sites = source.sites
    for c, old in zip(cols, saved):
        si = int(np.searchsorted(offsets, c, side="right") - 1)
        source.arrays[sites[si]][:, int(c - offsets[si])] = old


def _write_gold(case: PlantedCase, source: Source, params: PlantParams, y: np.ndarray) -> Path:
    def named(cols, roles):
        return [{"index": int(c), "site": source.column(int(c))[0], "unit": source.column(int(c))[1], "role": r}
                for c, r in zip(cols, roles)]

    g = len(case.gold)
    doc = {
        "type": case.type, "effect": float(case.effect), "seed": int(case.seed), "concept": case.concept_name,
        "positive": POSITIVE, "second_concept": f"feats.{SECOND_ATTRIBUTE}={POSITIVE}",
        "store": "store", "corpus": f"../{case.corpus_file}", "sites": source.sites,
        "neurons_per_site": source.neurons_per_site, "num_neurons": source.num_neurons,
        "rows": source.num_rows, "concept_rows": int(y.sum()),
        "gold": named(case.gold, case.roles[:g]), "decoys": named(case.decoys, case.roles[g:]),
        "params": asdict(params), "source": source.identity,
    }
    path = case.gold_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path
