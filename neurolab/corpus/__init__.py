"""Corpora: CoNLL-U and other readers, concepts and control tasks."""
from .conllu_reader import read_conllu
from .loading import load_corpus, split_sentences
from .types import Corpus, CorpusFormatError, Sentence, fingerprint_words

__all__ = [
    "Corpus", "Sentence", "CorpusFormatError", "read_conllu", "fingerprint_words", "load_corpus", "split_sentences",
]
