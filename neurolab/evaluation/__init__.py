"""Evaluation of neuron rankings: the :class:`Evaluator` contract and the evaluators
(``conf/evaluation/<name>.yaml``): retraining on top / random / bottom k (:class:`Retrain`),
masking the all-neuron probe (:class:`Mask`), selectivity against a control task (:class:`Control`),
the minimal neuron set (:class:`Minimal`) and neurons per site (:class:`Sites`).

    >>> from neurolab.evaluation import evaluate_ranking       # doctest: +SKIP
    >>> metrics = evaluate_ranking(ranking, dm, cfg)           # doctest: +SKIP
"""
from .base import EvalContext, Evaluator, ProbeJob, Size, sizes_from_config
from .control import Control
from .masking import Mask, masked_accuracies, masked_accuracy, probe_weights
from .minimal import Minimal, minimal_neuron_set
from .retrain import Retrain
from .retraining import Retrainer
from .runner import (Evaluation, build_evaluators, check_evaluation, evaluate_ranking, evaluation_settings,
                     run_evaluation)
from .sites import Sites

__all__ = [
    "Evaluator", "EvalContext", "ProbeJob", "Size", "sizes_from_config", "Retrainer", "evaluate_ranking",
    "run_evaluation", "build_evaluators", "check_evaluation", "evaluation_settings", "Evaluation", "Retrain", "Mask", "Control",
    "Minimal", "Sites", "minimal_neuron_set", "masked_accuracies", "masked_accuracy", "probe_weights",
]
