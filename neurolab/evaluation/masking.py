"""Evaluating a trained linear probe with all but some columns masked (no retraining).

The DataModule normalises features (z-score by default), so zeroing a normalised column replaces
that neuron by its training mean: masking here is *mean ablation* of the other neurons in the
probe's input space.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .base import EvalContext, Evaluator, ProbeJob

__all__ = ["probe_weights", "masked_accuracy", "masked_accuracies", "Mask"]


def probe_weights(module) -> tuple[np.ndarray, np.ndarray]:
    """``(W [C, F], b [C])`` of a linear probe (LightningModule, ``nn.Linear`` or anything with
    ``weight``/``bias`` on itself or on a ``linear`` child). Binary/regression probes have C = 1."""
    for obj in (module, getattr(module, "linear", None), getattr(module, "layer", None)):
        if obj is None:
            continue
        w = getattr(obj, "weight", None)
        if w is not None and hasattr(w, "detach"):
            b = getattr(obj, "bias", None)
            w = w.detach().cpu().double().numpy()
            w = w.reshape(-1, w.shape[-1])
            bb = np.zeros(w.shape[0]) if b is None else b.detach().cpu().double().numpy().reshape(-1)
            return w, bb
    if hasattr(module, "weights"):  # a plain method returning arrays
        w, b = module.weights() if callable(module.weights) else module.weights
        return np.asarray(w, np.float64), np.asarray(b, np.float64)
    raise TypeError(f"cannot find the linear weights of {type(module).__name__}")


def _predict(w: np.ndarray, b: np.ndarray, x: np.ndarray, task: str) -> np.ndarray:
    z = x.astype(np.float64, copy=False) @ w.T + b
    if task == "regression":
        return z[:, 0]
    if z.shape[1] == 1:  # binary logistic: one logit
        return (z[:, 0] > 0).astype(np.int64)
    return np.argmax(z, axis=1)


def masked_accuracies(
    w: np.ndarray,
    b: np.ndarray,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    keep: Sequence[Sequence[int]],
    task: str = "classification",
) -> list[float]:
    """Accuracy (R² is not defined here: regression gives negative MSE) of the probe ``(w, b)``
    when only the columns of each ``keep[i]`` are kept (the others set to 0), over ``chunks`` of
    ``(X, y)``. One pass over the data for all the masks."""
    w = np.asarray(w, np.float64)
    b = np.asarray(b, np.float64)
    masked = []
    for cols in keep:
        m = np.zeros_like(w)
        cols = np.asarray(cols, dtype=np.int64)
        m[:, cols] = w[:, cols]
        masked.append(m)
    correct = np.zeros(len(keep))
    sq = np.zeros(len(keep))
    n = 0
    for x, y in chunks:
        y = np.asarray(y)
        for i, m in enumerate(masked):
            pred = _predict(m, b, x, task)
            if task == "regression":
                sq[i] += float(np.sum((pred - y.astype(np.float64)) ** 2))
            else:
                correct[i] += int(np.sum(pred == y))
        n += len(y)
    if n == 0:
        return [float("nan")] * len(keep)
    if task == "regression":
        return [float(-s / n) for s in sq]
    return [float(c / n) for c in correct]


def masked_accuracy(w, b, x: np.ndarray, y: np.ndarray, keep: Sequence[int], task: str = "classification") -> float:
    """Accuracy of the probe ``(w, b)`` on ``(x, y)`` keeping only the columns ``keep``."""
    return masked_accuracies(w, b, [(x, y)], [keep], task)[0]


class Mask(Evaluator):
    """``evaluation=mask``: the all-neuron probe (the method's ``predictor_``, else one retrained on
    all neurons) with every column but the ranking's top k zeroed, no retraining. Metrics:
    ``mask/acc@1%`` ... (classification concepts)."""

    name = "mask"

    def jobs(self, ranking, data, context: EvalContext) -> list[ProbeJob]:
        if context.predictor is None and context.metric == "acc":
            return [ProbeJob("all", None, kind="all")]
        return []

    def evaluate(self, ranking, data, context: EvalContext) -> dict[str, float]:
        if context.metric != "acc" or not context.sizes:
            return {}
        probe = context.predictor if context.predictor is not None else context.probes.predictor(
            ProbeJob("all", None, kind="all"))
        w, b = probe_weights(probe)
        accs = masked_accuracies(w, b, context.probes.chunks(), [ranking.top(s.k) for s in context.sizes],
                                 "classification")
        return {f"{context.prefix}mask/acc@{s.label}": a for s, a in zip(context.sizes, accs)}
