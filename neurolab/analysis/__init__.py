"""How knowledge is organised: statistics between neurons, groups of neurons, models compared.

* :mod:`.correlation` — :class:`CrossMoments` (streaming float64 moments, DDP-summed) and the
  correlation, linear CKA, CCA, SVCCA and PWCCA computed from them;
* :mod:`.clusters` — correlation clustering and redundancy (Dalvi et al. 2020);
* :mod:`.select` — neuron selection for feature-based transfer (layer selection, clustering, probe);
* :mod:`.multimodel` — MaxCorr, MinCorr, LinReg (Bau et al. 2019) and site x site similarity;
* :mod:`.nmf` — NMF factors of sentences' activations with an HTML view (Ecco-style);
* :mod:`.latent` — latent concepts (Dalvi et al. 2022): Ward clustering and label alignment;
* :mod:`.analyses` — the analyses of ``neurolab analyze`` (:class:`Analysis` contract, :mod:`.base`);
* :mod:`.methods` — the per-neuron rankings as methods (``method=maxcorr|mincorr|linreg|representatives``).
"""
from .analyses import (ClusterAnalysis, LatentAnalysis, NMFAnalysis, RedundancyAnalysis, SelectionAnalysis,
                       SimilarityAnalysis)
from .base import Analysis, resolve_sites, store_label
from .clusters import ClusterResult, cluster_correlations, cluster_labels, redundancy_report, representatives, site_cka
from .correlation import (CrossMoments, Group, Moments, cca, check_same_rows, correlation_from_cov, linear_cka, pwcca,
                          stream_moments, svcca)
from .latent import align_clusters, latent_clusters, weighted_ward
from .methods import ClusterRepresentatives, LinReg, MaxCorr, MinCorr
from .multimodel import linreg_scores, maxcorr_scores, mincorr_scores, site_similarity
from .nmf import NMFResult, factorize
from .select import SelectionResult, select_neurons

__all__ = [
    "Analysis", "ClusterAnalysis", "RedundancyAnalysis", "SelectionAnalysis", "SimilarityAnalysis", "NMFAnalysis",
    "LatentAnalysis", "CrossMoments", "Moments", "Group", "stream_moments", "check_same_rows", "correlation_from_cov",
    "linear_cka", "cca", "svcca", "pwcca", "cluster_labels", "cluster_correlations", "representatives",
    "redundancy_report", "site_cka", "ClusterResult", "select_neurons", "SelectionResult", "maxcorr_scores",
    "mincorr_scores", "linreg_scores", "site_similarity", "MaxCorr", "MinCorr", "LinReg", "ClusterRepresentatives",
    "factorize", "NMFResult", "latent_clusters", "align_clusters", "weighted_ward", "resolve_sites", "store_label",
]
