"""Methods: the :class:`Method` contract every neuron ranking follows, and the non-gradient,
corpus-based methods (streaming statistics over the store, vectorised over all neurons).

Neuron search (concept → ranked neurons): :class:`ProbelessRanker`, :class:`SelectivityRanker`,
:class:`IoURanker` (+ compositional explanations), :class:`APRanker`;
concept search (neuron → concepts): :class:`ConceptSearch`. Each method is registered by its
``conf/method/<name>.yaml`` (``_target_``), not by a list here.
"""
from .annotations import AnnotationTable
from .base import Method, RunContext
from .compositional import Explanation, explain_neurons
from .concept_search import ConceptSearch, Description, top_contexts
from .rankers import APRanker, CorpusRanker, IoURanker, ProbelessRanker, SelectivityRanker, fit_rankers
from .stats import ClassHistogram, ClassMoments, NeuronStats, TopActivations, compute_stats

__all__ = [
    "Method", "RunContext", "CorpusRanker", "ProbelessRanker", "SelectivityRanker", "IoURanker", "APRanker",
    "fit_rankers", "ClassMoments", "ClassHistogram", "TopActivations", "NeuronStats",
    "compute_stats", "ConceptSearch", "Description", "top_contexts", "AnnotationTable", "Explanation",
    "explain_neurons",
]
