"""Compositional explanations (Mu & Andreas 2020): the logical formula over concept atoms whose
mask best matches (IoU) where a neuron fires.

Atoms are annotation values (``upos=NOUN``, ``deprel=nsubj`` …); formulas combine them with
``AND``, ``OR`` and ``AND NOT`` up to ``max_length`` atoms. Search is a beam search: the
``beam_size`` best formulas of length ``l`` are extended by every atom and operator to length
``l + 1``; the best formula seen is kept. Masks are bit-packed, so one step for one neuron costs
``3 × atoms × beam × rows / 8`` bytes of popcounts. Memory: ``(atoms + neurons) × rows / 8`` bytes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .annotations import AnnotationTable
from ..data.source import ChunkSource

log = logging.getLogger(__name__)

__all__ = ["Explanation", "explain_neurons", "best_formula", "iou_bits"]


@dataclass
class Explanation:
    neuron: int
    name: str
    formula: str
    iou: float
    length: int
    threshold: float
    active: int

    def to_dict(self) -> dict:
        return {"neuron": int(self.neuron), "name": self.name, "formula": self.formula, "iou": float(self.iou),
                "length": int(self.length), "threshold": float(self.threshold), "active": int(self.active)}


def _popcount(a: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a).sum(axis=-1, dtype=np.int64)


def iou_bits(neuron: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU of a packed neuron mask ``[n/8]`` with packed masks ``[A, n/8]``."""
    inter = _popcount(masks & neuron)
    union = _popcount(masks | neuron)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def best_formula(neuron: np.ndarray, atoms: np.ndarray, names: Sequence[str], *, max_length: int = 3,
                 beam_size: int = 5) -> tuple[str, float, int]:
    """Beam search for the formula (packed masks) of highest IoU with ``neuron``; ``(formula, iou, length)``."""
    if len(atoms) == 0:
        return "", 0.0, 0
    scores = iou_bits(neuron, atoms)
    order = np.argsort(-scores, kind="stable")[:beam_size]
    beam = [(names[i], atoms[i], float(scores[i]), 1) for i in order]
    best = beam[0]
    for length in range(2, int(max_length) + 1):
        cands: list[tuple[float, str, np.ndarray]] = []
        seen: set[str] = {b[0] for b in beam}
        for text, mask, _, _ in beam:
            for op, combined in (("AND", atoms & mask), ("OR", atoms | mask), ("AND NOT", mask & ~atoms)):
                s = iou_bits(neuron, combined)
                for i in np.argsort(-s, kind="stable")[:beam_size]:
                    f = f"({text} {op} {names[i]})"
                    if f not in seen:
                        seen.add(f)
                        cands.append((float(s[i]), f, combined[i]))
        if not cands:
            break
        cands.sort(key=lambda t: -t[0])
        beam = [(f, m, s, length) for s, f, m in cands[:beam_size]]
        if beam[0][2] > best[2] + 1e-12:
            best = beam[0]
    return best[0], best[2], best[3]


def explain_neurons(source: ChunkSource, atoms: AnnotationTable, neurons: np.ndarray, thresholds: np.ndarray, *,
                    names: Sequence[str] | None = None, max_length: int = 3, beam_size: int = 5,
                    min_count: int = 1) -> list[Explanation]:
    """Best formula for each of ``neurons`` (columns of ``source``) active where ``x >= thresholds``.

    One pass over ``source`` collects the selected neurons' masks (only the labelled rows, as in
    the IoU ranking); atoms come from ``atoms`` at the same store rows.
    """
    neurons = np.asarray(neurons, dtype=np.int64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    masks, rows_seen = [], []
    for rows, X, y in source:
        keep = np.asarray(y) >= 0
        masks.append(X[keep][:, neurons].astype(np.float64) >= thresholds[None, :])
        rows_seen.append(np.asarray(rows)[keep])
    if not masks:
        return []
    m = np.concatenate(masks, 0)  # [n, N]
    rows = np.concatenate(rows_seen)
    atom_names, atom_masks = atoms.atoms(rows, min_count=min_count)
    packed_atoms = np.packbits(atom_masks, axis=1)
    out = []
    for j, f in enumerate(neurons):
        nm = np.packbits(m[:, j])
        formula, iou, length = best_formula(nm, packed_atoms, atom_names, max_length=max_length, beam_size=beam_size)
        out.append(Explanation(int(f), names[j] if names is not None else str(int(f)), formula, iou, length,
                               float(thresholds[j]), int(m[:, j].sum())))
    return out
