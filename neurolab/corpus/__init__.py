"""Corpora: CoNLL-U and other readers, concepts and control tasks."""
from .concepts import Concept
from .conllu_reader import read_conllu
from .control import control_task
from .loading import load_corpus, read_corpus_file, split_sentences
from .types import Corpus, CorpusFormatError, Sentence, fingerprint_words

__all__ = [
    "Corpus", "Sentence", "CorpusFormatError", "Concept", "control_task", "read_conllu", "read_corpus_file",
    "fingerprint_words", "load_corpus", "split_sentences",
]
