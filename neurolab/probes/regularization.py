"""Weight penalties of linear probes (none / L1 / L2 / elastic net).

``penalty(W) = lambda_l1 * sum |W| + lambda_l2 * R2(W)`` with ``R2(W) = sum W**2`` (squared Frobenius
norm, the default) or ``R2(W) = sqrt(sum W**2)`` (``l2_squared=False``: the older toolkit's
non-squared norm, so its lambda values carry over). Only weights are penalised, never biases.
The penalty is added once per optimisation step to the *mean* loss of the batch, as in the older
toolkit (Dalvi et al. 2019).

Example::

    >>> import torch
    >>> reg = Regularization(lambda_l1=0.5, lambda_l2=0.25, l2_squared=True)
    >>> float(reg(torch.tensor([[1.0, -2.0]])))
    2.75
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import ConfigError

__all__ = ["Regularization", "NAMES"]

NAMES = ("none", "l1", "l2", "elasticnet")


@dataclass(frozen=True)
class Regularization:
    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    l2_squared: bool = True
    name: str = "custom"

    def __post_init__(self):
        for key in ("lambda_l1", "lambda_l2"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or v < 0 or v != v:
                raise ConfigError(f"regularization.{key} must be a number >= 0, got {v!r}")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> "Regularization":
        """From ``cfg.regularization`` (``name``, ``lambda_l1``, ``lambda_l2``, ``l2_squared``)."""
        if cfg is None:
            return cls(name="none")
        get = cfg.get
        name = str(get("name", "custom"))
        l1 = float(get("lambda_l1", 0.0) or 0.0)
        l2 = float(get("lambda_l2", 0.0) or 0.0)
        if name == "none" and (l1 or l2):
            raise ConfigError(f"regularization=none but lambda_l1={l1}, lambda_l2={l2}; use regularization=elasticnet")
        if name == "l1" and l2:
            raise ConfigError(f"regularization=l1 but lambda_l2={l2}; use regularization=elasticnet")
        if name == "l2" and l1:
            raise ConfigError(f"regularization=l2 but lambda_l1={l1}; use regularization=elasticnet")
        return cls(lambda_l1=l1, lambda_l2=l2, l2_squared=bool(get("l2_squared", True)), name=name)

    @property
    def active(self) -> bool:
        return bool(self.lambda_l1 or self.lambda_l2)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """The penalty of one weight matrix (any shape) as a 0-d tensor."""
        out = weight.new_zeros(())
        if self.lambda_l1:
            out = out + self.lambda_l1 * weight.abs().sum()
        if self.lambda_l2:
            sq = weight.pow(2).sum()
            out = out + self.lambda_l2 * (sq if self.l2_squared else _safe_sqrt(sq))
        return out


def batched_penalty(weight: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
    """Per-probe penalties of a stacked weight tensor ``[K, ...]`` → ``[K]``.

    ``l1``, ``l2`` are ``[K]`` lambdas, ``squared`` a ``[K]`` bool tensor (squared or plain Frobenius).
    """
    dims = tuple(range(1, weight.ndim))
    a = weight.abs().sum(dim=dims)
    sq = weight.pow(2).sum(dim=dims)
    # sqrt(0) has an infinite derivative: guard it (the penalty's subgradient at 0 is 0)
    root = _safe_sqrt(sq)
    r2 = torch.where(squared, sq, root)
    return l1 * a + l2 * r2


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (sub)gradient at 0 instead of NaN (a zero-initialised probe starts there)."""
    pos = sq > 0
    return torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))) * pos
