"""Differentiable neuron masking: hard-concrete gates under a Lagrangian fidelity constraint.

Every neuron gets a gate ``z`` drawn from a hard-concrete distribution (Louizos, Welling & Kingma
2018): ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, ``z = clamp(s (zeta -
gamma) + gamma, 0, 1)``; ``z`` is exactly 0 or 1 with positive probability and differentiable in
``log_alpha``. The expected number of open gates (the expected L0 norm) is ``sum_j sigmoid(log_alpha_j
- beta log(-gamma / zeta))``. Following De Cao, Schlichtkrull, Aziz & Titov (2020) the gates minimise
the expected L0 subject to a divergence staying within ``eps`` (absolute, in nats), through the
Lagrangian ``L0 + lambda (divergence - eps)``; the multiplier ``lambda = exp(log_lambda) > 0`` rises
while the constraint is violated and falls once it holds (``log_lambda`` moves by at most
``lambda_lr`` per step, in proportion to the violation relative to ``eps``, so it adapts to any scale
within a few hundred steps and carries no momentum that would overshoot). The gates descend the
Lagrangian divided by ``1 + lambda``: the same minimiser, but gradients of a bounded scale, so that a
large multiplier cannot leave Adam's running moments with a scale that freezes the gates after it
falls; ``log_alpha`` is clipped to ``[-log_alpha_clip, log_alpha_clip]`` because saturated gates have
vanishing gradients.

Two modes:

- **probe** (:class:`NeuronMaskMethod`, ``method=neuron_mask``): the gates multiply the (normalised)
  activations before a linear probe trained on all neurons; the divergence is the increase of the
  masked probe's cross-entropy over the unmasked probe's on the same batch. A closed gate replaces a
  neuron by 0, its training mean after z-scoring. With ``adapt_probe`` (default) a copy of the probe
  is fine-tuned along with the gates: a probe frozen with weights spread over all neurons cannot lose
  most of them and stay within eps, while a re-weighted probe on a few % of them can (figures in
  ``tests/benchmarks/BENCHMARKS.md``). With
  :meth:`NeuronMask.set_dev` (the runner passes the dev split) the multiplier follows the divergence
  on held-out rows with the test-time gates: the training loss of a probe fit on all neurons is
  optimistic, and no sparse mask could match it on the training rows.
- **model** (:class:`ModelMask`): gates on hook sites of the live model (through
  :func:`neurolab.models.hooks.intervene`); the divergence is ``KL(p_full || p_masked)`` of the
  model's output distribution (its ``logits``: a language model's next-token distribution or a
  task head's classes), averaged over non-padding tokens.

The result is the set of kept neurons (deterministic gate > 0 at test time; with dev rows, the
sparsest epoch-end state of the constrained phase whose divergence on the whole dev split is within
eps), a ranking, and the sparsity-versus-fidelity path logged during training (``train/l0``,
``train/l0_frac``, ``train/divergence``, ``train/lambda``; ``val/…`` per epoch; :attr:`NeuronMask.path_`).
The ranking is by the probability that a gate is open; but the kept gates mostly sit at the clip, so
with ``target_kept`` the constrained epochs are followed by ``anneal_epochs`` in which the multiplier
tracks a geometrically falling L0 target (from the kept count down to ``target_kept``) instead of the
divergence, and the neurons are ranked by how many annealing steps their gate stayed open: the last
survivors lead, in the order in which they resist the L0 pressure.

Example (probe mode on arrays)::

    >>> import torch
    >>> probe = torch.nn.Linear(200, 2)           # a trained probe, frozen by the mask
    >>> mask = NeuronMask(200, eps=0.05)
    >>> mask.set_probe(probe)                     # doctest: +SKIP
    >>> pl.Trainer(max_epochs=20).fit(mask, loader)  # doctest: +SKIP
    >>> mask.kept()                               # doctest: +SKIP
"""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..data.memory import fits_budget, held_memory
from ..errors import ConfigError
from ..methods.base import Method, RunContext

log = logging.getLogger(__name__)

_LOG_LAMBDA_BOUND = 15.0
# upper log_alpha bound while annealing: about 40% of the draws of a gate there are < 1, so the loss's
# gradient tells the survivors apart (at +6 nearly every draw is clamped at 1, and they would
# all slide down together under the L0 pressure)
_ANNEAL_CLIP = 2.0

__all__ = ["HardConcreteGates", "NeuronMask", "ModelMask", "NeuronMaskMethod", "kl_divergence"]


def _rows(x, sl: slice) -> torch.Tensor:
    """Rows ``sl`` of dev rows held as a tensor or read from the store (a ``StreamedRows`` view)."""
    r = x[sl]
    return r if isinstance(r, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))


class _StreamedData(pl.LightningDataModule):
    """A data module's own streamed loaders at the mask's batch sizes (training shuffled, dev in order)."""

    def __init__(self, dm, batch_size: int, eval_batch_size: int):
        super().__init__()
        self.dm, self.batch_size, self.eval_batch_size = dm, int(batch_size), int(eval_batch_size)

    def train_dataloader(self):
        return self.dm.train_dataloader(batch_size=self.batch_size)

    def val_dataloader(self):
        return self.dm.val_dataloader(batch_size=self.eval_batch_size) if self.eval_batch_size else []


def _evaluate_chunks(mask: "NeuronMask", chunks) -> dict[str, float]:
    """:meth:`NeuronMask.evaluate_probe` over ``(X, y)`` blocks: row-weighted means of every block."""
    tot: dict[str, float] = {}
    n = 0
    for X, y in chunks:
        ev = mask.evaluate_probe(X, y)
        for k, v in ev.items():
            tot[k] = tot.get(k, 0.0) + v * len(y)
        n += len(y)
    return {k: v / max(n, 1) for k, v in tot.items()}


class HardConcreteGates(torch.nn.Module):
    """``n`` hard-concrete gates with parameters ``log_alpha [n]``."""

    def __init__(self, n: int, *, beta: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1,
                 init_open: float = 0.9):
        super().__init__()
        if not (gamma < 0.0 and zeta > 1.0):
            raise ConfigError(f"hard-concrete stretch needs gamma < 0 < 1 < zeta, got gamma={gamma}, zeta={zeta}")
        if not 0.0 < init_open < 1.0 or beta <= 0:
            raise ConfigError(f"init_open must be in (0, 1) and beta > 0, got init_open={init_open}, beta={beta}")
        self.n = int(n)
        self.beta, self.gamma, self.zeta = float(beta), float(gamma), float(zeta)
        self.shift = self.beta * math.log(-self.gamma / self.zeta)
        init = math.log(init_open / (1.0 - init_open)) + self.shift
        self.log_alpha = torch.nn.Parameter(torch.full((self.n,), init))

    def sample(self, batch: int | None = None) -> torch.Tensor:
        """Stochastic gates ``[batch, n]`` (or ``[n]``), differentiable in ``log_alpha``."""
        shape = (self.n,) if batch is None else (int(batch), self.n)
        u = torch.rand(shape, device=self.log_alpha.device).clamp(1e-6, 1.0 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        """Test-time gates ``[n]``: ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``."""
        s = torch.sigmoid(self.log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def p_open(self) -> torch.Tensor:
        """Probability that each gate is non-zero ``[n]``."""
        return torch.sigmoid(self.log_alpha - self.shift)

    def expected_l0(self) -> torch.Tensor:
        return self.p_open().sum()


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``KL(softmax(p) || softmax(q))`` over the leading positions (``mask`` selects them)."""
    lp = F.log_softmax(logits_p.float(), dim=-1)
    lq = F.log_softmax(logits_q.float(), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    if mask is not None:
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp_min(1.0)
    return kl.mean()


class NeuronMask(pl.LightningModule):
    """Hard-concrete gates trained with an expected-L0 penalty under the constraint
    ``divergence <= eps`` (Lagrangian with a learned multiplier).

    Subclasses (or :meth:`set_probe`) define :meth:`divergence`. In probe mode, batches are
    ``(x [B, F], y [B])`` and the divergence is ``CE(probe(x * z), y) - CE(probe(x), y)``.
    """

    def __init__(self, num_gates: int, *, eps: float = 0.05, beta: float = 2.0 / 3.0, gamma: float = -0.1,
                 zeta: float = 1.1, init_open: float = 0.5, lr: float = 0.05, lambda_lr: float = 0.05,
                 lambda_init: float = 100.0, gate_samples: int | None = 32, adapt_probe: bool = True,
                 probe_lr: float = 3e-3, log_alpha_clip: float | None = 6.0,
                 target_kept: float | None = None, anneal_epochs: int = 0):
        super().__init__()
        if eps < 0:
            raise ConfigError(f"probe.module.eps must be >= 0, got {eps}")
        if lr <= 0 or lambda_lr <= 0 or lambda_init <= 0 or probe_lr <= 0:
            raise ConfigError(f"probe.module: lr, lambda_lr, lambda_init and probe_lr must be > 0, got lr={lr}, "
                              f"lambda_lr={lambda_lr}, lambda_init={lambda_init}, probe_lr={probe_lr}")
        if target_kept is not None and not target_kept > 0:
            raise ConfigError(f"probe.module.target_kept must be > 0 (a fraction < 1 or a count) or null, got {target_kept}")
        if int(anneal_epochs) < 0:
            raise ConfigError(f"probe.module.anneal_epochs must be >= 0, got {anneal_epochs}")
        if log_alpha_clip is not None and log_alpha_clip <= 0:
            raise ConfigError(f"probe.module.log_alpha_clip must be > 0 or null, got {log_alpha_clip}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.num_gates = int(num_gates)
        self.eps = float(eps)
        # distinct gate draws per batch (rows share them cyclically); None: one draw per row
        self.gate_samples = None if gate_samples is None else max(1, int(gate_samples))
        self.lr, self.lambda_lr, self.probe_lr = float(lr), float(lambda_lr), float(probe_lr)
        self.adapt_probe = bool(adapt_probe)
        self.log_alpha_clip = None if log_alpha_clip is None else float(log_alpha_clip)
        self.gates = HardConcreteGates(self.num_gates, beta=beta, gamma=gamma, zeta=zeta, init_open=init_open)
        # lambda = exp(log_lambda) > 0, updated by the constraint violation (not by backpropagation)
        self.register_buffer("log_lambda", torch.tensor(math.log(float(lambda_init))))
        self.probe: torch.nn.Module | None = None
        self.adapted: torch.nn.Module | None = None
        self.path_: list[dict[str, float]] = []
        self._epoch: dict[str, list[float]] = {}
        self._dev: tuple[torch.Tensor, torch.Tensor] | None = None
        self._dev_pos = 0
        # annealing to a target sparsity after the constrained epochs (ranking of the last survivors)
        self.target_kept = None if target_kept is None else float(target_kept)
        self.anneal_epochs = int(anneal_epochs) if target_kept is not None else 0
        self.register_buffer("survival", torch.zeros(self.num_gates))  # annealing steps each gate stayed open
        self.anneal_steps_ = 0
        self.anneal_kept_: np.ndarray | None = None
        self._anneal: dict[str, Any] | None = None
        # with dev rows: the sparsest state at an epoch end of the constrained phase that meets the
        # constraint on the whole dev split (the multiplier keeps oscillating around the boundary)
        self._best: dict[str, Any] | None = None

    # -- probe mode --------------------------------------------------------------------------
    def set_probe(self, probe: torch.nn.Module) -> "NeuronMask":
        """Gate the inputs of ``probe`` (``x -> logits``); its parameters are frozen. With
        ``adapt_probe`` a copy of it is trained along with the gates (the masked probe) while ``probe``
        itself stays the unmasked reference of the constraint."""
        probe.eval()
        for p in probe.parameters():
            p.requires_grad_(False)
        # kept outside the module tree so that checkpoints and optimisers see only the gates
        object.__setattr__(self, "probe", probe)
        if self.adapt_probe:
            adapted = copy.deepcopy(probe)
            for p in adapted.parameters():
                p.requires_grad_(True)
            self.adapted = adapted  # a submodule: optimised with the gates, moved and saved with them
        return self

    def set_dev(self, X, y, batch_size: int = 256) -> "NeuronMask":
        """Held-out rows for the constraint (probe mode): the multiplier then follows the divergence of
        the masked probe (test-time gates) on dev batches, cycled, one per training step, instead of
        the training batch's. The training loss of a probe fit on all neurons is optimistic (it
        overfits), so a sparse mask cannot match it on the training rows even where it generalises
        as well; on held-out rows the comparison is fair."""
        # rows in memory, or a view that reads them when sliced (forward.StreamedRows)
        x = X if hasattr(X, "read_examples") or hasattr(X, "dm") else torch.as_tensor(np.asarray(X), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(y)).long()
        self._dev = (x, t) if len(t) else None
        self._dev_base: torch.Tensor | None = None  # the unmasked probe's per-row dev losses, computed once
        self._dev_bs = max(1, int(batch_size))
        self._dev_pos = 0
        return self

    @torch.no_grad()
    def _dev_divergence(self) -> torch.Tensor:
        x, t = self._dev
        n = len(t)
        if self._dev_pos >= n:
            self._dev_pos = 0
        sl = slice(self._dev_pos, min(n, self._dev_pos + self._dev_bs))
        self._dev_pos = sl.stop
        if self.probe is None:  # a subclass with its own divergence
            div, _ = self.divergence((_rows(x, sl).to(self.device), t[sl].to(self.device)), self.gates.deterministic())
            return div
        xs, ts = _rows(x, sl).to(self.device), t[sl].to(self.device)
        masked = F.cross_entropy(self._masked_probe()(xs * self.gates.deterministic()), ts)
        return masked - self._dev_base_losses()[sl].mean()

    @torch.no_grad()
    def _dev_base_losses(self) -> torch.Tensor:
        if self._dev_base is None or self._dev_base.device != self.device:
            x, t = self._dev
            step = int(getattr(x, "chunk_rows", 8192))
            self._dev_base = torch.cat([F.cross_entropy(self._probe()(_rows(x, slice(i, i + step)).to(self.device)),
                                                        t[i:i + step].to(self.device), reduction="none")
                                        for i in range(0, len(t), step)])
        return self._dev_base

    def _probe(self) -> torch.nn.Module:
        if self.probe is None:
            raise RuntimeError("NeuronMask in probe mode needs set_probe(probe) before training")
        if next(iter(self.probe.parameters()), torch.empty(0)).device != self.device:
            self.probe.to(self.device)
        return self.probe

    def _masked_probe(self) -> torch.nn.Module:
        return self.adapted if self.adapted is not None else self._probe()

    def divergence(self, batch, gates: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Divergence of the masked from the unmasked computation on ``batch`` (``gates`` ``[B, n]`` or
        ``[n]``), and extra values to log."""
        x, y = batch[0], batch[1]
        probe = self._probe()
        x = x.float()
        y = y.long()
        with torch.no_grad():
            base = F.cross_entropy(probe(x), y)
        out = self._masked_probe()(x * gates)
        loss = F.cross_entropy(out, y)
        acc = (out.argmax(-1) == y).float().mean()
        return loss - base, {"loss": loss.detach(), "base_loss": base, "acc": acc.detach()}

    def batch_size_of(self, batch) -> int:
        return int(batch[0].shape[0])

    # -- training ----------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = [{"params": list(self.gates.parameters()), "lr": self.lr}]
        if self.adapted is not None:
            groups.append({"params": list(self.adapted.parameters()), "lr": self.probe_lr})
        # beta2 0.99: the Lagrangian moves with lambda, so the second moment should forget within ~100 steps
        return torch.optim.Adam(groups, betas=(0.9, 0.99))

    def _draw(self, b: int) -> torch.Tensor:
        """Gates ``[b, n]``: ``gate_samples`` independent draws repeated over the rows (cheaper than one
        draw per row for wide layers; the gradient estimate stays unbiased)."""
        if self.gate_samples is None or self.gate_samples >= b:
            return self.gates.sample(b)
        z = self.gates.sample(self.gate_samples)
        return z.repeat((b + self.gate_samples - 1) // self.gate_samples, 1)[:b]

    @torch.no_grad()
    def update_multiplier(self, div: torch.Tensor) -> None:
        """Ascent on ``log lambda``: up while ``div > eps``, down otherwise, by at most ``lambda_lr`` per
        step (the violation relative to ``eps``, clipped to [-1, 1]: free of the divergence's scale)."""
        scale = max(self.eps, 1e-3)
        step = torch.clamp((div.detach().float() - self.eps) / scale, -1.0, 1.0) * self.lambda_lr
        self.log_lambda.add_(step).clamp_(-_LOG_LAMBDA_BOUND, _LOG_LAMBDA_BOUND)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        z = self._draw(self.batch_size_of(batch))
        div, extra = self.divergence(batch, z)
        l0 = self.gates.expected_l0()
        l0_frac = l0 / self.num_gates
        lam = self.log_lambda.exp()
        # the Lagrangian L0 + lambda (div - eps) divided by 1 + lambda: the same minimiser, but the
        # gates' gradients stay bounded whatever lambda, so Adam's running moments never hold a
        # lambda-sized scale that would freeze the gates once lambda falls again
        lagr = (self._l0_term(l0) + lam * (div - self.eps)) / (1.0 + lam)
        opt.zero_grad()
        self.manual_backward(lagr)
        opt.step()
        if self.log_alpha_clip is not None:
            with torch.no_grad():  # saturated gates have vanishing gradients and could never close again
                hi = self.log_alpha_clip if self._anneal is None else min(self.log_alpha_clip, _ANNEAL_CLIP)
                self.gates.log_alpha.clamp_(-self.log_alpha_clip, hi)
        dev_div = None if self._dev is None else self._dev_divergence()
        if self._anneal is not None:
            self._anneal_step()
        else:
            self.update_multiplier(div if dev_div is None else dev_div)
        bs = self.batch_size_of(batch)
        vals = {"train/l0": l0.detach(), "train/l0_frac": l0_frac.detach(), "train/divergence": div.detach(),
                "train/lambda": lam.detach()}
        if dev_div is not None:
            vals["train/dev_divergence"] = dev_div
        vals.update({f"train/{k}": v for k, v in extra.items()})
        every = max(1, int(getattr(self.trainer, "log_every_n_steps", 1) or 1)) if self._trainer is not None else 1
        if batch_idx % every == 0:  # Lightning's logging costs about as much as a step of this small model
            self.log_dict(vals, on_step=True, on_epoch=False, batch_size=bs, sync_dist=False)
        for k in ("train/l0", "train/divergence", "train/lambda", "train/dev_divergence"):
            if k in vals:
                self._epoch.setdefault(k, []).append(vals[k])
        return None

    def _l0_term(self, l0: torch.Tensor) -> torch.Tensor:
        """The sparsity term of the Lagrangian (the expected L0; subclasses may rescale it)."""
        return l0

    @property
    def target_count(self) -> int:
        """The number of gates annealing ends at (``target_kept`` as a fraction of the gates if < 1)."""
        t = float(self.target_kept or 0.0)
        return max(1, int(round(t * self.num_gates)) if t < 1.0 else int(round(t)))

    def _anneal_start_epoch(self) -> int | None:
        if not self.anneal_epochs or self.trainer is None or self.trainer.max_epochs is None:
            return None
        return max(0, int(self.trainer.max_epochs) - self.anneal_epochs)

    def on_train_epoch_start(self) -> None:
        start = self._anneal_start_epoch()
        if start is None or self.current_epoch < start:
            return
        if self._anneal is None:
            # the constrained solution, restored when training ends: kept() and evaluate_probe() report it
            snap = self._snapshot()
            members = self.kept_mask().clone()
            self._anneal = {"snapshot": snap, "from": max(float(members.sum()), float(self.target_count)),
                            "start": start, "members": members}
            self.survival.zero_()
            self.anneal_steps_ = 0
        # geometric schedule of the L0 target, reaching target_count after 80% of the annealing epochs
        reach = max(1, math.ceil(0.8 * self.anneal_epochs))
        frac = min(1.0, (self.current_epoch - self._anneal["start"] + 1) / reach)
        a = self._anneal["from"]
        self._anneal["target"] = a * (self.target_count / a) ** frac

    @torch.no_grad()
    def _anneal_step(self) -> None:
        """While annealing the multiplier tracks the L0 target instead of the divergence: it falls while
        more of the gates kept under the constraint are expected open than the target (the L0 term
        takes over and closes the gates the loss needs least) and rises below it. (Counting only those
        gates: the others' small open probabilities would add a floor of about n * p_open(-clip).)"""
        target = float(self._anneal["target"])
        l0 = float(self.gates.p_open()[self._anneal["members"]].sum())
        step = float(np.clip((target - l0) / target, -1.0, 1.0)) * self.lambda_lr
        self.log_lambda.add_(step).clamp_(-_LOG_LAMBDA_BOUND, _LOG_LAMBDA_BOUND)
        self.survival += self.kept_mask().to(self.survival.dtype)
        self.anneal_steps_ += 1

    def _snapshot(self) -> dict[str, Any]:
        return {"log_alpha": self.gates.log_alpha.detach().clone(), "log_lambda": self.log_lambda.clone(),
                "adapted": copy.deepcopy(self.adapted.state_dict()) if self.adapted is not None else None,
                "kept": int(self.kept_mask().sum())}

    @torch.no_grad()
    def _restore(self, snap: dict[str, Any]) -> None:
        self.gates.log_alpha.copy_(snap["log_alpha"])
        self.log_lambda.copy_(snap["log_lambda"])
        if snap["adapted"] is not None:
            self.adapted.load_state_dict(snap["adapted"])

    @torch.no_grad()
    def dev_divergence(self) -> float | None:
        """The masked probe's divergence (test-time gates) on all dev rows given to :meth:`set_dev`."""
        if self._dev is None or self.probe is None:
            return None
        x, t = self._dev
        step = int(getattr(x, "chunk_rows", 8192))
        losses = [F.cross_entropy(self._masked_probe()(_rows(x, slice(i, i + step)).to(self.device) * self.gates.deterministic()),
                                  t[i:i + step].to(self.device), reduction="sum") for i in range(0, len(t), step)]
        return float(torch.stack(losses).sum() / len(t) - self._dev_base_losses().mean())

    def on_train_end(self) -> None:
        if self._anneal is not None:
            self._final_p = self.gates.p_open().detach().clone()
            self.anneal_kept_ = np.flatnonzero(self.kept_mask().cpu().numpy()).astype(np.int64)
        # report the constrained solution: the sparsest epoch-end state within eps on dev, else the
        # state where annealing began
        snap = self._best if self._best is not None else (self._anneal or {}).get("snapshot")
        if snap is not None:
            self._restore(snap)
        self._anneal = None

    def on_train_epoch_end(self) -> None:
        rec = {"epoch": int(self.current_epoch)}
        rec.update({k.split("/", 1)[1]: float(torch.stack(v).float().mean()) for k, v in self._epoch.items() if v})
        rec["kept"] = int(self.kept_mask().sum())
        if self._anneal is not None:
            rec["target"] = float(self._anneal["target"])
        else:
            full = self.dev_divergence()
            if full is not None:
                rec["dev_divergence_all"] = full
                if full <= self.eps and (self._best is None or rec["kept"] <= self._best["kept"]):
                    self._best = self._snapshot()
        self.path_.append(rec)
        self._epoch = {}
        log.debug("neuron mask epoch %d: %s", rec["epoch"], rec)

    def validation_step(self, batch, batch_idx):
        z = self.gates.deterministic()
        div, extra = self.divergence(batch, z)
        bs = self.batch_size_of(batch)
        vals = {"val/divergence": div, "val/kept": float(self.kept_mask().sum())}
        vals.update({f"val/{k}": v for k, v in extra.items()})
        self.log_dict(vals, on_step=False, on_epoch=True, batch_size=bs)

    # -- results -----------------------------------------------------------------------------
    @torch.no_grad()
    def kept_mask(self) -> torch.Tensor:
        return self.gates.deterministic() > 0

    def kept(self) -> np.ndarray:
        """Indices of the kept neurons (test-time gate > 0), best first (by :meth:`scores`)."""
        p = self.scores()
        idx = np.flatnonzero(self.kept_mask().cpu().numpy())
        return idx[np.lexsort((idx, -p[idx]))].astype(np.int64)

    def scores(self) -> np.ndarray:
        """The ranking score ``[n]`` in [0, 1]: the probability that each gate is open; after annealing
        to ``target_kept``, ``(steps the gate stayed open while annealing + its final open
        probability) / (annealing steps + 1)``, so that the last survivors lead, ordered by how long
        they resisted the L0 pressure."""
        p = self.gates.p_open().detach().cpu().double().numpy()
        final = getattr(self, "_final_p", None)
        if final is None or not self.anneal_steps_:
            return p
        surv = self.survival.detach().cpu().double().numpy()
        return (surv + final.cpu().double().numpy()) / (self.anneal_steps_ + 1.0)

    @torch.no_grad()
    def evaluate_probe(self, X, y, gates: torch.Tensor | None = None) -> dict[str, float]:
        """Probe loss / accuracy on arrays with the test-time gates (or given ``gates``) vs unmasked."""
        probe = self._probe()
        x = torch.as_tensor(np.asarray(X), dtype=torch.float32, device=self.device)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.device)
        g = self.gates.deterministic() if gates is None else gates.to(self.device)
        full, masked = probe(x), self._masked_probe()(x * g)
        return {"loss": float(F.cross_entropy(masked, yt)), "base_loss": float(F.cross_entropy(full, yt)),
                "acc": float((masked.argmax(-1) == yt).float().mean()),
                "base_acc": float((full.argmax(-1) == yt).float().mean())}


class ModelMask(NeuronMask):
    """Gates on hook sites of a live (frozen) model; divergence ``KL(p_full || p_masked)`` of its output.

    ``sites`` are site names (``layers.2.mlp``, ``layers.1``, a module path; see
    :func:`neurolab.models.sites.resolve_sites`). Batches are dicts of model inputs (``input_ids``,
    ``attention_mask`` …). Gates are indexed in site order, units within each site.
    """

    def __init__(self, model: torch.nn.Module, sites: Sequence[str] | str, *, logits_fn: Callable | None = None,
                 **kwargs: Any):
        from ..models.sites import resolve_sites

        resolved = resolve_sites(model, sites)
        units = []
        for s in resolved:
            if s.units is None:
                raise ConfigError(f"sites: cannot tell the number of units of {s.name!r}; name a site with a known width")
            units.append(int(s.units))
        super().__init__(int(sum(units)), **kwargs)
        self.site_objs = resolved
        self.site_names = [s.name for s in resolved]
        self.units = units
        self.starts = np.cumsum([0] + units)
        object.__setattr__(self, "model", model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.logits_fn = logits_fn or (lambda out: out.logits if hasattr(out, "logits") else out[0])

    def _model(self):
        m = self.model
        if next(m.parameters()).device != self.device:
            m.to(self.device)
        return m

    def batch_size_of(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    def run_gated(self, batch: Mapping[str, torch.Tensor], gates: torch.Tensor | None) -> torch.Tensor:
        """The model's logits with ``gates`` (``[n]`` or ``[B, n]``) applied at the sites (None: none)."""
        from ..models.hooks import intervene

        model = self._model()
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if gates is None:
            return self.logits_fn(model(**batch))
        fns = {}
        for i, s in enumerate(self.site_objs):
            g = gates[..., int(self.starts[i]):int(self.starts[i + 1])]

            def fn(t, _g=g):
                gg = _g.to(t.dtype)
                if gg.ndim == 2 and t.ndim == 3:
                    gg = gg[:, None, :]
                return t * gg

            fns[s] = fn
        with intervene(model, fns):
            return self.logits_fn(model(**batch))

    def divergence(self, batch, gates):
        with torch.no_grad():
            full = self.run_gated(batch, None)
        masked = self.run_gated(batch, gates)
        am = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if am is not None and full.ndim == 3:
            am = am.to(full.device)
        else:
            am = None
        return kl_divergence(full, masked, am), {}

    @torch.no_grad()
    def output_kl(self, batches, keep: Sequence[int] | np.ndarray) -> float:
        """Mean KL of the output when only the neurons ``keep`` are left open (all other gated units 0)."""
        g = torch.zeros(self.num_gates, device=self.device)
        g[torch.as_tensor(np.asarray(keep, dtype=np.int64), device=self.device)] = 1.0
        vals, ws = [], []
        for b in batches:
            full = self.run_gated(b, None)
            masked = self.run_gated(b, g)
            am = b.get("attention_mask")
            vals.append(float(kl_divergence(full, masked, am.to(full.device) if am is not None else None)))
            ws.append(float(am.sum()) if am is not None else 1.0)
        return float(np.average(vals, weights=ws))

    def names(self, indices: Sequence[int]) -> list[str]:
        out = []
        for ix in indices:
            si = int(np.searchsorted(self.starts, ix, side="right") - 1)
            out.append(f"{self.site_names[si]}:{int(ix - self.starts[si])}")
        return out


# -- runner ----------------------------------------------------------------------------------------
def build_mask(module: Any, num_gates: int) -> NeuronMask:
    """A :class:`NeuronMask` from the method's ``module`` (a factory such as the ``partial`` that
    ``conf/method/neuron_mask.yaml`` builds, or None for the defaults)."""
    if module is None:
        return NeuronMask(num_gates)
    mask = module(num_gates=num_gates) if not isinstance(module, NeuronMask) else module
    if not isinstance(mask, NeuronMask):
        raise ConfigError(f"method.module must build a NeuronMask, got {type(mask).__name__}")
    return mask


#: model mode's settings (``method.live.*``): the split of the live corpus the gates are trained and
#: judged on, its first ``max_sentences`` only, batches (padded tokens, sentences), the scope of a gate
#: (``all`` tokens, or the ``words``' tokens), the memory kept for the unmasked outputs, how often the
#: multiplier measures the kept set's KL (every n steps; 0: it follows the sampled gates'), the gates'
#: initial open probability (instead of ``module.init_open``: gates of the live model start nearly all
#: open, as half-shut residual streams give a KL no gradient step recovers from), and whether a
#: task head for another concept than the ranking's may be used
LIVE_DEFAULTS = MappingProxyType({"split": "dev", "max_sentences": None, "batch_tokens": 2048, "batch_sentences": 16,
                                  "scope": "all", "reference_mb": 256.0, "constraint_every": 0,
                                  "init_open": 0.95, "allow_other_concept": False})


class NeuronMaskMethod(Method):
    """``method=neuron_mask`` (``probe=neuron_mask``), probe mode: train the all-neuron linear probe
    with :func:`~neurolab.probes.training.fit_probe` (``linear``: overrides of the run's ``probe``
    settings for it), then the gates in front of it; rank all neurons by the probability that their
    gate is open (kept neurons first). The probe is the ``predictor_``.

    ``mode=model`` (with ``task=``): gates on the data's sites of the live model instead, under a KL
    constraint on the task head's output (:class:`neurolab.causal.mask.LiveMask`; ``live``: its
    settings, see :data:`LIVE_DEFAULTS`); no predictor. Metrics ``mask/kept``, ``mask/kept_share``,
    ``mask/kl`` (nats, test-time gates over the whole split), ``mask/eps``, ``mask/constraint_met``,
    ``mask/acc`` / ``mask/base_acc`` (the head's accuracy masked / unmasked), ``mask/anneal_kept``,
    ``time/mask_fit_s``, ``time/mask_epoch_s``; the path goes to ``mask_path.json`` / ``mask_path.png``.

    Metrics: the probe's own (``val/acc``, ``test/acc`` …), ``mask/kept``, ``mask/l0_frac``,
    ``mask/anneal_kept`` (gates open when annealing ended), ``val/mask_divergence``, ``val/mask_acc``,
    ``test/mask_acc``, ``time/mask_fit_s`` (constrained and annealing epochs).
    """

    name = "neuron_mask"

    def __init__(self, module: Any = None, mode: str = "probe", constraint_on_dev: bool = True, max_epochs: int = 30,
                 batch_size: int = 256, linear: Mapping[str, Any] = MappingProxyType({}),
                 live: Mapping[str, Any] = LIVE_DEFAULTS):
        self.module = module
        self.mode = mode
        self.constraint_on_dev = constraint_on_dev
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.linear = linear
        self.live = live

    def fit(self, data, context: RunContext | None = None) -> "NeuronMaskMethod":
        from ..data.batches import TensorDataModule
        from .training import default_probe_config, fit_probe, linear_probe_cfg, quiet_lightning, trainer_from_cfg

        context = RunContext.ensure(context)
        dm = data
        if str(self.mode) == "model":
            return self._fit_model(data, context)
        if str(self.mode) != "probe":
            raise ConfigError(f"method.mode={self.mode!r}: expected probe (gates before a linear probe on the store's "
                              "rows) or model (gates on the live model's sites, with task=)")
        if dm.task != "classification":
            raise ConfigError("method=neuron_mask needs a classification concept (the concept is a regression task)")
        cfg = context.cfg if context.cfg is not None else default_probe_config(context.run_dir)
        lcfg = linear_probe_cfg(cfg, self.linear)
        probe, metrics = fit_probe(dm, lcfg, logger=context.logger)
        F_ = int(dm.num_features)
        mask = build_mask(self.module, F_)
        mask.set_probe(probe)
        seed = int(cfg.get("seed") or 0)
        bs = int(self.batch_size)
        pl.seed_everything(seed, workers=True, verbose=False)
        n_rows = len(dm.row_ids("train")) + len(dm.row_ids("val"))
        streamed = not fits_budget(n_rows * F_ * 4, getattr(dm, "memory_budget_mb", None))
        if not streamed:
            Xtr, ytr = dm.arrays("train")
            val = dm.arrays("val")
            t = lambda a: (torch.from_numpy(np.ascontiguousarray(a[0], dtype=np.float32)),
                           torch.from_numpy(np.ascontiguousarray(a[1]).astype(np.int64)))
            has_val = len(val[1]) > 0
            if has_val and bool(self.constraint_on_dev):
                mask.set_dev(val[0], val[1], batch_size=bs)
            data_ = TensorDataModule(t((Xtr, ytr)), t(val) if has_val else None, bs, 8192, seed)
            held_memory("neuron mask", n_rows * F_ * 4, f"{n_rows} training + dev rows, float32")
        else:
            # the data module's own loaders: batches streamed from the store, dev rows read as needed
            from .forward import StreamedRows

            yv = dm.targets("val")
            has_val = len(yv) > 0
            if has_val and bool(self.constraint_on_dev):
                mask.set_dev(StreamedRows(dm, "val", None, dm.chunk_rows), yv, batch_size=bs)
            data_ = _StreamedData(dm, bs, dm.chunk_rows if has_val else 0)
            held_memory("neuron mask", 0, f"streams {n_rows} training + dev rows from the store "
                        f"(memory budget {getattr(dm, 'memory_budget_mb', 0):g} MB)")
        t0 = time.perf_counter()
        with quiet_lightning():
            # max_epochs under the constraint, then anneal_epochs towards target_kept (the ranking's order)
            epochs = int(self.max_epochs) + mask.anneal_epochs
            trainer = trainer_from_cfg(cfg, logger=context.logger, max_epochs=epochs,
                                       limit_val_batches=None if has_val else 0, num_sanity_val_steps=0,
                                       enable_progress_bar=False, callbacks=[])
            trainer.fit(mask, datamodule=data_)
        fit_s = time.perf_counter() - t0
        mask.to("cpu")
        probe.to("cpu")
        scores = mask.scores()
        kept = mask.kept()
        columns = np.asarray(dm.columns, dtype=np.int64)
        order_local = np.lexsort((np.arange(F_), -scores))
        kept_set = set(kept.tolist())
        order_local = np.concatenate([kept, [i for i in order_local if i not in kept_set]]).astype(np.int64)
        ranking = self.ranking_from_order(columns[order_local], scores[order_local], dm, context,
                                          extra={"kept": int(len(kept)), "eps": mask.eps, "path": mask.path_})
        metrics = dict(metrics)
        metrics.update({"mask/kept": int(len(kept)), "mask/l0_frac": float(mask.gates.p_open().detach().mean()),
                        "time/mask_fit_s": round(fit_s, 3)})
        if mask.anneal_kept_ is not None:
            metrics["mask/anneal_kept"] = int(len(mask.anneal_kept_))
        for split in ("val", "test"):
            if streamed:
                ev = _evaluate_chunks(mask, dm.iter_chunks(split)) if len(dm.row_ids(split)) else None
            else:
                X, y = dm.arrays(split)
                ev = mask.evaluate_probe(X, y) if len(y) else None
            if ev is not None:
                metrics[f"{split}/mask_acc"] = ev["acc"]
                metrics[f"{split}/mask_divergence"] = ev["loss"] - ev["base_loss"]
        context.tracker.log_table("neuron_mask/path", ["epoch", "l0", "divergence", "lambda", "kept"],
                                  [[r.get("epoch"), r.get("l0"), r.get("divergence"), r.get("lambda"), r.get("kept")]
                                   for r in mask.path_])
        log.info("neuron mask: kept %d of %d neurons (eps %.3g) in %.1f s", len(kept), F_, mask.eps, fit_s)
        self.ranking_, self.metrics_, self.predictor_, self.mask_ = ranking, metrics, probe, mask
        return self

    # -- model mode ----------------------------------------------------------------------------
    def _live_options(self) -> dict[str, Any]:
        opts = dict(LIVE_DEFAULTS)
        given = dict(self.live or {})
        unknown = sorted(set(given) - set(opts))
        if unknown:
            raise ConfigError(f"method.live: unknown keys {unknown} (known: {', '.join(opts)})")
        opts.update(given)
        return opts

    def _fit_model(self, data, context: RunContext) -> "NeuronMaskMethod":
        from ..causal.mask import LiveMask
        from .training import default_probe_config, quiet_lightning, trainer_from_cfg

        if context.live is None:
            raise ConfigError("method=neuron_mask method.mode=model masks the live model: set task= (tagger, lm or "
                              "classifier)")
        opts = self._live_options()
        live = context.live()
        concept = str(getattr(data, "concept_name", "") or "")
        head_for = str(getattr(live.head, "trained_for", "") or live.concept_name or "")
        if (live.head.kind != "lm" and concept and head_for and head_for != concept.split("=", 1)[0]
                and not bool(opts["allow_other_concept"])):
            raise ConfigError(f"the task head {live.head.kind} predicts concept {head_for!r}, the ranking is for "
                              f"{concept!r}: a mask of that head ranks the neurons of {head_for!r} (train the head for "
                              f"the run's concept, or set method.live.allow_other_concept=true)")
        sites = list(data.sites)
        nps = {s: int(data.neurons_per_site[s]) for s in sites}
        cols = np.asarray(data.columns, dtype=np.int64)
        proto = build_mask(self.module, len(cols))
        hp = {k: v for k, v in dict(proto.hparams).items() if k not in ("num_gates", "adapt_probe", "probe_lr")}
        if opts["init_open"] is not None:
            hp["init_open"] = float(opts["init_open"])
        mask = LiveMask(live, sites, nps, cols, split=str(opts["split"]), max_sentences=opts["max_sentences"],
                        batch_tokens=int(opts["batch_tokens"]), batch_sentences=int(opts["batch_sentences"]),
                        scope=str(opts["scope"]), reference_mb=float(opts["reference_mb"]),
                        constraint_every=int(opts["constraint_every"]), **hp)
        cfg = context.cfg if context.cfg is not None else default_probe_config(context.run_dir)
        seed = int(cfg.get("seed") or 0)
        pl.seed_everything(seed, workers=True, verbose=False)
        t0 = time.perf_counter()
        with quiet_lightning():
            epochs = int(self.max_epochs) + mask.anneal_epochs
            trainer = trainer_from_cfg(cfg, logger=context.logger, max_epochs=epochs, limit_val_batches=0,
                                       num_sanity_val_steps=0, enable_progress_bar=False, callbacks=[])
            trainer.fit(mask, train_dataloaders=mask.loader(seed))
        fit_s = time.perf_counter() - t0
        mask.to("cpu")
        F_ = len(cols)
        scores = mask.scores()
        kept = mask.kept()
        order_local = np.lexsort((np.arange(F_), -scores))
        kept_set = set(kept.tolist())
        order_local = np.concatenate([kept, [i for i in order_local if i not in kept_set]]).astype(np.int64)
        fin = dict(mask.final_)
        extra = {"mode": "model", "kept": int(len(kept)), "eps": mask.eps, "kl": fin.get("kl"), "task": live.head.kind,
                 "split": mask.split, "constraint_met": bool(mask.constraint_met_), "path": mask.path_}
        ranking = self.ranking_from_order(cols[order_local], scores[order_local], data, context, extra=extra)
        metrics: dict[str, float] = {
            "mask/kept": int(len(kept)), "mask/kept_share": float(len(kept)) / max(1, F_), "mask/kl": float(fin["kl"]),
            "mask/eps": float(mask.eps), "mask/constraint_met": int(bool(mask.constraint_met_)),
            "mask/examples": int(fin.get("n", 0)), "mask/l0_frac": float(mask.gates.p_open().detach().mean()),
            "mask/epochs": len(mask.path_), "time/mask_fit_s": round(fit_s, 3),
            "time/mask_epoch_s": round(float(np.median(mask.epoch_s_)), 3) if mask.epoch_s_ else 0.0}
        if mask.chosen_epoch_ is not None:
            metrics["mask/chosen_epoch"] = int(mask.chosen_epoch_)
        for k in ("acc", "base_acc"):
            if k in fin:
                metrics[f"mask/{k}"] = float(fin[k])
        if mask.anneal_kept_ is not None:
            metrics["mask/anneal_kept"] = int(len(mask.anneal_kept_))
        metrics.update({k: v for k, v in live.head.metrics.items() if isinstance(v, (int, float))})
        context.tracker.log_table("neuron_mask/path", ["epoch", "phase", "kept", "kept_share", "kl", "lambda"],
                                  [[r.get("epoch"), r.get("phase"), r.get("kept"), r.get("kept_share"), r.get("kl"),
                                    r.get("lambda")] for r in mask.path_])
        log.info("neuron mask (live, task=%s, split %s): kept %d of %d neurons (%.2f%%), KL %.4g nats (eps %.3g)%s "
                 "in %.1f s", live.head.kind, mask.split, len(kept), F_, 100.0 * len(kept) / max(1, F_), fin["kl"],
                 mask.eps, "" if mask.constraint_met_ else " -- constraint NOT met, closest state", fit_s)
        self.ranking_, self.metrics_, self.predictor_, self.mask_ = ranking, metrics, None, mask
        return self

    def write(self, run_dir, stem: str = "") -> list[Path]:
        """Model mode: the sparsity / fidelity path, ``mask_path.json`` and ``mask_path.png``."""
        mask = getattr(self, "mask_", None)
        if str(self.mode) != "model" or mask is None:
            return []
        import json

        from ..causal.mask import plot_mask_path

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        j = run_dir / f"{stem}mask_path.json"
        j.write_text(json.dumps({"eps": mask.eps, "chosen_epoch": mask.chosen_epoch_,
                                 "constraint_met": bool(mask.constraint_met_), "path": mask.path_}, indent=1) + "\n",
                     encoding="utf-8")
        png = plot_mask_path(mask.path_, mask.eps, run_dir / f"{stem}mask_path.png", mask.chosen_epoch_)
        return [j, png]
