"""Heatmaps of site x site similarity (PNG, matplotlib's Agg backend)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["plot_site_heatmaps"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_site_heatmaps(matrices: Mapping[str, np.ndarray], sites_a: Sequence[str], sites_b: Sequence[str],
                       path: str | os.PathLike, *, label_a: str = "", label_b: str = "", title: str = "") -> Path:
    """One panel per measure (``{name: [len(sites_a), len(sites_b)]}``), values on a 0..1 scale."""
    plt = _plt()
    names = list(matrices)
    k = len(names)
    w = max(3.2, 0.45 * len(sites_b) + 2.0)
    h = max(3.0, 0.4 * len(sites_a) + 1.6)
    fig, axes = plt.subplots(1, k, figsize=(w * k, h), squeeze=False)
    annotate = len(sites_a) * len(sites_b) <= 200
    for ax, name in zip(axes[0], names):
        m = np.asarray(matrices[name], dtype=float)
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_title(name.upper() if len(name) <= 5 else name, fontsize=10)
        ax.set_xticks(range(len(sites_b)))
        ax.set_xticklabels(sites_b, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(sites_a)))
        ax.set_yticklabels(sites_a, fontsize=7)
        if label_b:
            ax.set_xlabel(label_b, fontsize=8)
        if label_a:
            ax.set_ylabel(label_a, fontsize=8)
        if annotate:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    if np.isfinite(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if m[i, j] < 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
