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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..errors import ConfigError

log = logging.getLogger(__name__)

_LOG_LAMBDA_BOUND = 15.0
# upper log_alpha bound while annealing: about 40% of the draws of a gate there are < 1, so the loss's
# gradient tells the survivors apart (at +6 nearly every draw is clamped at 1, and they would
# all slide down together under the L0 pressure)
_ANNEAL_CLIP = 2.0

__all__ = ["HardConcreteGates", "NeuronMask", "ModelMask", "kl_divergence"]


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

    def sample(self, batch: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stochastic gates ``[batch, n]`` (or ``[n]``), differentiable in ``log_alpha`` (uniform noise
        from ``generator``, or the global one)."""
        shape = (self.n,) if batch is None else (int(batch), self.n)
        u = torch.rand(shape, device=self.log_alpha.device, generator=generator).clamp(1e-6, 1.0 - 1e-6)
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
        g = getattr(self, "_generator", None)
        if self.gate_samples is None or self.gate_samples >= b:
            return self.gates.sample(b, generator=g)
        z = self.gates.sample(self.gate_samples, generator=g)
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
