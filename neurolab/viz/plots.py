"""Plots of an evaluated ranking (PNG, matplotlib's Agg backend; no display needed).

* :func:`plot_site_distribution`: how many of the top neurons fall in each site (Figure 2 of
  Durrani et al. 2020, "Analyzing individual neurons in pre-trained language models").
* :func:`plot_accuracy_curve`: retrained accuracy on top / random / bottom k against k, with the
  all-neuron accuracy (and, when evaluated, the masked all-neuron probe).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np


__all__ = ["plot_site_distribution", "plot_accuracy_curve", "curve_points"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_site_distribution(counts: Mapping[str, int], path: str | os.PathLike = "sites.png",
                           title: str | None = None) -> Path:
    """Bar plot of ``counts`` (neurons per site, in site order); returns ``path``."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sites = list(counts)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(sites) + 1.5), 3.2), dpi=100)
    try:
        ax.bar(range(len(sites)), [counts[s] for s in sites], color="#4C72B0")
        ax.set_xticks(range(len(sites)))
        ax.set_xticklabels(sites, rotation=45 if len(sites) > 4 else 0, ha="right" if len(sites) > 4 else "center",
                           fontsize=8)
        ax.set_ylabel("neurons")
        ax.set_title(title or f"top neurons per site ({sum(counts.values())})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


_KEY = re.compile(r"^(top|random|bottom|mask)/acc@(.+)$")


def curve_points(metrics: Mapping[str, float], prefix: str = "") -> dict[str, list[tuple[str, float]]]:
    """``{"top": [(label, acc), ...], ...}`` from flat metrics, in the order the sizes appear."""
    out: dict[str, list[tuple[str, float]]] = {}
    for k, v in metrics.items():
        if prefix and not k.startswith(prefix):
            continue
        m = _KEY.match(k[len(prefix):])
        if m and isinstance(v, (int, float)):
            out.setdefault(m.group(1), []).append((m.group(2), float(v)))

    def size_key(label: str):
        return (0, float(label[:-1])) if label.endswith("%") else (1, float(label))

    return {k: sorted(v, key=lambda t: size_key(t[0])) for k, v in out.items()}


def plot_accuracy_curve(metrics: Mapping[str, float], path: str | os.PathLike = "accuracy.png",
                        prefix: str = "", title: str | None = None) -> Path:
    """Accuracy of probes retrained on top / random / bottom k (and masked top k) against k."""
    pts = curve_points(metrics, prefix)
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    try:
        styles = {"top": ("#C44E52", "o-"), "random": ("#8C8C8C", "s--"), "bottom": ("#4C72B0", "v:"),
                  "mask": ("#DD8452", "^-.")}
        labels = []
        for name in ("top", "random", "bottom", "mask"):
            if name not in pts:
                continue
            xs = [lab for lab, _ in pts[name]]
            labels = xs if len(xs) > len(labels) else labels
            color, style = styles[name]
            ys = [a for _, a in pts[name]]
            ax.plot(range(len(xs)), ys, style, color=color, label=name if name != "mask" else "top (masked)")
            std = [metrics.get(f"{prefix}random/acc_std@{lab}") for lab in xs] if name == "random" else None
            if std and all(isinstance(s, (int, float)) for s in std):
                ax.fill_between(range(len(xs)), np.array(ys) - std, np.array(ys) + std, color=color, alpha=0.2)
        full = metrics.get("test/acc")
        if isinstance(full, (int, float)):
            ax.axhline(full, color="black", lw=0.8, label="all neurons")
        majority = metrics.get("majority/acc")
        if isinstance(majority, (int, float)):
            ax.axhline(majority, color="#8C8C8C", lw=0.8, ls=":", label="majority class")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_xlabel("neurons kept")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(title or "retrained on top / random / bottom neurons", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
