"""The neuron-ranking benchmark: planted neurons with known answers, scoring, cross-method comparison.

* :mod:`.planted` — stores in which chosen columns are synthetic neurons with a known relation to a
  planted concept (focused, group, group_xor, redundant, polysemous, distractors), gold sets as JSON.
* :mod:`.scoring` — precision / recall at k, average precision, the rank of each planted neuron.
* :mod:`.runner` — every registered method (``conf/method/*.yaml``) through the method contract on
  every planted case.
* :mod:`.compare` — agreement between methods on real data (pairwise overlap, neuron vote), the
  evaluation matrix (each ranking under each evaluation probe), per-site accuracy-against-k curves,
  one HTML report.
* :mod:`.report` — the planted benchmark's leaderboard and plots.

``neurolab benchmark`` (:mod:`neurolab.tasks.benchmark`) runs it all from the command line.
"""
from .compare import (DEFAULT_KS, PROBES, ConceptComparison, GaussianClassifier, LogisticProbe, RandomForestProbe,
                      agreement, average_overlap, borda, compare_concept, evaluation_matrix, neuron_vote,
                      pairwise_overlap, site_curves, write_compare_report)
from .planted import (PLANTED_TYPES, PlantedCase, PlantedSuite, PlantParams, Source, build_suite, plant_signals,
                      source_from_store, synthetic_source)
from .report import leaderboard, plot_by_effect, write_leaderboard
from .runner import PlantedRun, method_nodes, registered_methods, run_planted
from .scoring import average_precision, precision_at_k, ranks_of, recall_at_k, score_order, score_ranking, summarize

__all__ = [
    "PLANTED_TYPES", "PlantParams", "Source", "PlantedCase", "PlantedSuite", "synthetic_source", "source_from_store",
    "build_suite", "plant_signals", "average_precision", "precision_at_k", "recall_at_k", "ranks_of", "score_order",
    "score_ranking", "summarize", "registered_methods", "method_nodes", "run_planted", "PlantedRun", "leaderboard",
    "plot_by_effect", "write_leaderboard", "DEFAULT_KS", "PROBES", "LogisticProbe", "GaussianClassifier",
    "RandomForestProbe", "pairwise_overlap", "average_overlap", "borda", "neuron_vote", "agreement",
    "evaluation_matrix", "site_curves", "ConceptComparison", "compare_concept", "write_compare_report",
]
