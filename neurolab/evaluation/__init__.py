"""Evaluation of neuron rankings: retrain on top/random/bottom k, masking, selectivity against a
control task, the minimal neuron set, neurons per site, and the choice of λ on dev.

    >>> from neurolab.evaluation import evaluate_ranking       # doctest: +SKIP
    >>> metrics = evaluate_ranking(ranking, dm, cfg)           # doctest: +SKIP
"""
from .lambda_search import choose_lambda, select_lambda, with_lambda
from .masking import masked_accuracies, masked_accuracy, probe_weights
from .suite import EVAL_DEFAULTS, Size, evaluate_ranking, minimal_neuron_set, remember_probe, sizes_from_config

__all__ = [
    "evaluate_ranking", "remember_probe", "minimal_neuron_set", "sizes_from_config", "Size", "EVAL_DEFAULTS",
    "choose_lambda", "select_lambda", "with_lambda", "masked_accuracies", "masked_accuracy", "probe_weights",
]
