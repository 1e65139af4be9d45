"""PNG figures of the corpus-based methods (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..ranking import NeuronRanking

__all__ = ["plot_scores", "plot_activation_histogram"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_scores(ranking: NeuronRanking, path: str | os.PathLike = "scores.png", *, top: int | None = None) -> Path:
    """Score against rank (best first), one colour per site; returns ``path``."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    neurons = ranking.neurons[:top] if top else ranking.neurons
    fig, ax = plt.subplots(figsize=(6.0, 3.2), dpi=100)
    try:
        sites = list(ranking.sites)
        cmap = plt.get_cmap("viridis", max(len(sites), 2))
        for si, s in enumerate(sites):
            ranks = [r for r, n in enumerate(neurons) if n.site == s]
            ax.scatter(ranks, [neurons[r].score for r in ranks], s=4, color=cmap(si), label=s)
        ax.set_xlabel("rank")
        ax.set_ylabel(f"{ranking.method} score")
        ax.set_title(f"{ranking.concept} / {ranking.method}", fontsize=9)
        if 1 < len(sites) <= 12:
            ax.legend(fontsize=6, markerscale=3, loc="upper right")
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def plot_activation_histogram(values: np.ndarray, path: str | os.PathLike, *, threshold: float | None = None,
                              title: str = "") -> Path:
    """Histogram of one neuron's activations (with its IoU threshold as a line)."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.0, 2.8), dpi=100)
    try:
        ax.hist(np.asarray(values, dtype=np.float64), bins=60, color="#4C72B0")
        if threshold is not None:
            ax.axvline(threshold, color="#d62728", lw=1)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
