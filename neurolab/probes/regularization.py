"""Weight penalties of linear probes (none / L1 / L2 / elastic net).

``penalty(W) = lambda_l1 * sum |W| + lambda_l2 * R2(W)`` with ``R2(W) = sum W**2`` (squared Frobenius
norm, the default) or ``R2(W) = sqrt(sum W**2)`` (``l2_squared=False``: the older toolkit's
non-squared norm, so its lambda values carry over). Only weights are penalised, never biases.
The penalty is added once per optimisation step to the *mean* loss of the batch, as in the older
toolkit (Dalvi et al. 2019).

``l1_mode`` says how the L1 term is optimised:

* ``subgradient`` (default; the older toolkit's): ``lambda_l1 * sum |W|`` is part of the loss and its
  subgradient ``lambda_l1 * sign(W)`` enters the optimiser. With Adam this makes weights small but
  (almost) never exactly 0.
* ``proximal``: the loss carries only the L2 term; after every optimiser step the weights are
  soft-thresholded, ``W <- sign(W) * max(|W| - t, 0)``, the proximal operator of ``t * |W|``
  (ISTA / proximal gradient). ``t = lr * lambda_l1`` for plain gradient steps; for Adam-type
  optimisers ``t = lr * lambda_l1 / (sqrt(v_hat) + eps)`` per weight, the proximal step in the metric
  Adam preconditions with (its per-weight step size). This minimises the same elastic-net objective
  but gives truly sparse solutions: uninformative neurons get weight exactly 0.

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

__all__ = ["Regularization", "NAMES", "L1_MODES", "soft_threshold_", "proximal_l1_"]

NAMES = ("none", "l1", "l2", "elasticnet")
L1_MODES = ("subgradient", "proximal")


@dataclass(frozen=True)
class Regularization:
    lambda_l1: float = 0.0
    lambda_l2: float = 0.0
    l2_squared: bool = True
    name: str = "custom"
    l1_mode: str = "subgradient"

    def __post_init__(self):
        if self.l1_mode not in L1_MODES:
            raise ConfigError(f"regularization.l1_mode must be one of {L1_MODES}, got {self.l1_mode!r}")
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
        return cls(lambda_l1=l1, lambda_l2=l2, l2_squared=bool(get("l2_squared", True)), name=name,
                   l1_mode=str(get("l1_mode", "subgradient") or "subgradient"))

    @property
    def active(self) -> bool:
        return bool(self.lambda_l1 or self.lambda_l2)

    @property
    def proximal(self) -> bool:
        """True when the L1 term is applied by soft-thresholding after each step (not in the loss)."""
        return self.l1_mode == "proximal" and bool(self.lambda_l1)

    def penalty(self, weight: torch.Tensor) -> torch.Tensor:
        """The full penalty (L1 + L2) of one weight matrix, whatever ``l1_mode`` (the objective)."""
        return self._penalty(weight, with_l1=True)

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        """The penalty term of the training objective (without L1 when ``l1_mode=proximal``), 0-d, with
        a graph. ``LinearProbe`` adds its gradient with :meth:`add_grad_` and its value with :meth:`value`
        (for closure-reading optimisers) rather than putting it in the loss's graph."""
        return self._penalty(weight, with_l1=not self.proximal)

    @property
    def in_loss(self) -> bool:
        """True when the training loss carries a term (:meth:`__call__` is not identically 0)."""
        return bool(self.lambda_l2) or (bool(self.lambda_l1) and not self.proximal)

    @torch.no_grad()
    def value(self, weight: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__`'s value without a graph, 0-d."""
        return self(weight)

    @torch.no_grad()
    def add_grad_(self, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``grad += d __call__(weight) / d weight``, elementwise: ``lambda_l1 * sign(W)`` (subgradient
        L1; 0 at 0) plus ``2 * lambda_l2 * W`` (squared L2) or ``lambda_l2 * W / ||W||`` (plain norm; 0 at
        W = 0), the gradient autograd gives for :meth:`__call__`. Returns ``grad``.

        Training adds the penalty's gradient this way, once per optimiser step after the data loss's
        backward, instead of through the loss's graph: about ten small operations and their backward
        nodes fewer per step."""
        if self.lambda_l1 and not self.proximal:
            grad.add_(torch.sign(weight), alpha=self.lambda_l1)
        if self.lambda_l2:
            if self.l2_squared:
                grad.add_(weight, alpha=2.0 * self.lambda_l2)
            else:  # a finite coefficient times W: exactly 0 at W = 0
                norm = torch.linalg.vector_norm(weight, 2).clamp_min_(torch.finfo(weight.dtype).tiny)
                grad.addcmul_(weight, torch.div(self.lambda_l2, norm))
        return grad

    def _penalty(self, weight: torch.Tensor, with_l1: bool) -> torch.Tensor:
        out = weight.new_zeros(())
        if self.lambda_l1 and with_l1:
            out = out + self.lambda_l1 * weight.abs().sum()
        if self.lambda_l2:
            sq = weight.pow(2).sum()
            out = out + self.lambda_l2 * (sq if self.l2_squared else _safe_sqrt(sq))
        return out


@torch.no_grad()
def soft_threshold_(weight: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """In place: ``weight <- sign(weight) * max(|weight| - threshold, 0)`` (``threshold`` a scalar or
    a tensor broadcastable to ``weight``); returns ``weight``."""
    shrunk = (weight.abs() - threshold).clamp_min_(0)
    weight.copy_(torch.sign(weight) * shrunk)
    return weight


@torch.no_grad()
def proximal_l1_(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer, lambda_l1: float) -> torch.Tensor:
    """The proximal L1 step after ``optimizer.step()``: soft-threshold ``weight`` by its step size times
    ``lambda_l1`` (``lr`` for plain gradient optimisers; ``lr / (sqrt(v_hat) + eps)`` per weight for
    Adam / AdamW, whose state holds ``exp_avg_sq`` and ``step``)."""
    group = next((g for g in optimizer.param_groups if any(p is weight for p in g["params"])), None)
    if group is None:
        raise ValueError("the weight is not optimised by this optimizer")
    lr = float(group["lr"])
    state = optimizer.state.get(weight, {})
    if "exp_avg_sq" in state and "step" in state:
        beta2 = float(group["betas"][1])
        step = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1.0 - beta2 ** step)
        t = (lr * lambda_l1) / (v_hat.sqrt() + float(group.get("eps", 1e-8)))
    else:
        t = lr * lambda_l1
    return soft_threshold_(weight, t)


def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (sub)gradient at 0 instead of NaN (a zero-initialised probe starts there)."""
    pos = sq > 0
    return torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))) * pos
