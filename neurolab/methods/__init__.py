"""Non-gradient, corpus-based methods: streaming statistics over the store, vectorised over all neurons.

Neuron search (concept → ranked neurons): :class:`ProbelessRanker`, :class:`SelectivityRanker`,
:class:`IoURanker` (+ compositional explanations), :class:`APRanker`; concept search (neuron →
concepts): :class:`ConceptSearch`. ``RANKERS`` maps ``cfg.method`` names to classes.
"""
from .annotations import AnnotationTable
from .compositional import Explanation, explain_neurons
from .concept_search import ConceptSearch, Description, top_contexts
from .rankers import RANKERS, APRanker, CorpusRanker, IoURanker, ProbelessRanker, SelectivityRanker, fit_rankers
from .source import ChunkSource, encode_labels, row_labels, rows_of_sentences
from .stats import ClassHistogram, ClassMoments, NeuronStats, TopActivations, compute_stats

__all__ = [
    "RANKERS", "CorpusRanker", "ProbelessRanker", "SelectivityRanker", "IoURanker", "APRanker", "fit_rankers",
    "ChunkSource", "encode_labels", "row_labels", "rows_of_sentences", "ClassMoments", "ClassHistogram",
    "TopActivations", "NeuronStats", "compute_stats", "ConceptSearch", "Description", "top_contexts",
    "AnnotationTable", "Explanation", "explain_neurons",
]
