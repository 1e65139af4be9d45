"""Causal analysis in the live model: task heads, interventions, ablation, steering.

* :mod:`.live`: :class:`LiveModel` (the model behind a store, run on the corpus with hooks at the
  store's site names, a cached prefix per batch), :func:`build_live` / :func:`live_factory` from a
  composed config;
* :mod:`.heads`: what the live model predicts (``task=tagger|lm|classifier``);
* :mod:`.interventions`: zero / mean / resample / value / translate / on_p50 at any scope;
* :mod:`.ablation`: ablation curves of a ranking and ``method=ablation`` (exact and first-order);
* :mod:`.steering`: forcing neurons toward a class (``neurolab intervene``).
"""
from .heads import ClassifierHead, LMHead, TaggerHead, TaskHead, load_head
from .interventions import (KINDS, SCOPES, Intervention, InterventionError, InterventionSet, NeuronStats, make_set,
                            neurons_of_columns)
from .live import HeadOut, LiveModel, RunResult, base_concept, concept_values_of
from .words import LiveBatch, LiveCorpus

__all__ = ["LiveModel", "LiveCorpus", "LiveBatch", "RunResult", "HeadOut", "TaskHead", "TaggerHead", "LMHead",
           "ClassifierHead", "load_head", "Intervention", "InterventionSet", "InterventionError", "NeuronStats",
           "make_set", "neurons_of_columns", "KINDS", "SCOPES", "base_concept", "concept_values_of"]
