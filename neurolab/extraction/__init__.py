"""Extraction: word alignment, windows, length-sorted batches, subword aggregation, store writing."""
from .alignment import Tokenized, special_tokens, tokenize_words
from .extractor import AGGREGATIONS, Extractor, ShardResult, resolve_device
from .plan import Plan, Shard, Window, make_batches, make_plan, window_starts
from .run import SENTENCE_STORE, extract_to_store, store_identity

__all__ = [
    "Extractor", "ShardResult", "AGGREGATIONS", "resolve_device", "Tokenized", "special_tokens", "tokenize_words",
    "Plan", "Shard", "Window", "make_batches", "make_plan", "window_starts", "SENTENCE_STORE", "extract_to_store",
    "store_identity",
]
