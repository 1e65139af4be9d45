"""Differentiable masking of the live model (De Cao, Schlichtkrull, Aziz & Titov 2020):
``method=neuron_mask method.mode=model task=...``.

Hard-concrete gates (:class:`~neurolab.probes.mask.HardConcreteGates`) multiply the chosen units of
the chosen sites of the frozen live model. They minimise the expected number of open gates (expected
L0) under the constraint that the task head's output distribution stays close to the unmasked
model's: ``KL(p_full || p_masked) <= eps`` (nats, the mean over the head's scored examples: words for
``task=tagger``, sentences for ``task=classifier``, scored tokens for ``task=lm``), through the
Lagrangian of :class:`~neurolab.probes.mask.NeuronMask` (same multiplier rule, clipping, annealing).
Training runs on the rows of one split of the live corpus (``dev`` by default), in batches of
sentences: memory and time are bounded by a batch (the unmasked output of every batch is kept, a
``[scored examples, classes]`` array, unless it is over ``reference_mb``). Each training step draws
one gate vector per input window (sentence), applied at every token of it (specials included, the
``all`` scope of the interventions; ``scope=words``: the words' tokens only): as in the interventions,
a gate on a word-level neuron closes every subword token of the word.

The gates descend the Lagrangian of the sampled gates' KL. By default (``constraint_every=0``) the
multiplier follows that KL too (De Cao et al.'s constraint on the expected divergence): while many gates
are undecided it stays above a small ``eps`` and the multiplier grows, so gates close gradually, one
epoch after another, and the sparsity / fidelity path has many points. ``constraint_every=n``: the
multiplier follows the KL of the kept set (test-time gate > 0 open, every other gated neuron shut) on
the step's batch, measured every ``n`` steps; that KL is 0 until gates start to cross, so the
multiplier falls and, on MiniLM, thousands of gates crossed between two epoch ends (a collapse the
epoch-end states cannot catch).

A shut gate leaves 0 in its unit (``baseline=zero``) or the unit's mean over the store's training rows
(``baseline=mean``; De Cao et al. learn the baseline vector). Under DDP (``trainer=ddp``) each rank runs
its share of the sentences of every batch and the steps equal one process's (:meth:`LiveMask.setup`).

After each epoch the kept neurons (test-time gate > 0) are run open, all other gated neurons closed,
over the whole split: the sparsity / fidelity path (kept share against KL, per epoch) is logged,
written to ``mask_path.json`` and drawn as ``mask_path.png``. The state reported is the sparsest epoch-end state of the constrained epochs whose
KL is within ``eps``; if none is, a warning says so and the closest one (least KL) is reported, with
``mask/constraint_met = 0``. Annealing starts with the multiplier at most ``lambda_init`` (the
constrained phase may leave it at its bound). Neurons are ranked as in probe mode: kept neurons first, ordered (as all
others) by how many steps of the annealing towards ``target_kept`` their gate stayed open.

Example::

    >>> mask = LiveMask(live, ["layers.1"], {"layers.1": 32}, np.arange(32), eps=0.05)   # doctest: +SKIP
    >>> pl.Trainer(max_epochs=10).fit(mask, mask.loader(seed=0))                        # doctest: +SKIP
    >>> mask.kept(), mask.path_[-1]["kl"]                                                # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..probes.mask import NeuronMask
from .interventions import InterventionError

log = logging.getLogger(__name__)

__all__ = ["LiveMask", "plot_mask_path", "MASK_SCOPES"]

MASK_SCOPES = ("all", "words")
MASK_BASELINES = ("zero", "mean")


def _first(x):
    return x[0]


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


class LiveMask(NeuronMask):
    """Gates on ``columns`` (indices into the concatenation of ``sites``, ``nps`` units each) of the live
    model ``live``; see the module docstring. Other keyword arguments are :class:`NeuronMask`'s."""

    def __init__(self, live, sites: Sequence[str], nps: Mapping[str, int], columns: Sequence[int] | np.ndarray, *,
                 split: str = "dev", max_sentences: int | None = None, batch_tokens: int = 2048,
                 batch_sentences: int = 16, scope: str = "all", reference_mb: float = 256.0,
                 constraint_every: int = 0, baseline: str = "zero", means: Sequence[float] | np.ndarray | None = None,
                 **kw: Any):
        kw["adapt_probe"] = False
        cols = np.asarray(columns, dtype=np.int64).reshape(-1)
        super().__init__(len(cols), **kw)
        if scope not in MASK_SCOPES:
            raise ConfigError(f"method.live.scope={scope!r}: expected one of {', '.join(MASK_SCOPES)}")
        if baseline not in MASK_BASELINES:
            raise ConfigError(f"method.live.baseline={baseline!r}: expected one of {', '.join(MASK_BASELINES)}")
        if baseline == "mean":
            if means is None or len(np.asarray(means).reshape(-1)) != len(cols):
                raise ConfigError("method.live.baseline=mean needs one mean per gated neuron (the training rows' means)")
        self.baseline = baseline
        sites = list(sites)
        live.check_sites(sites, dict(nps))
        object.__setattr__(self, "live", live)  # outside the module tree: checkpoints hold the gates only
        self.site_names = sites
        starts = np.cumsum([0] + [int(nps[s]) for s in sites])
        if len(cols) and (cols.min() < 0 or cols.max() >= starts[-1]):
            raise ConfigError(f"columns out of range for sites {sites} ({int(starts[-1])} units)")
        self.columns = cols
        # per site: (site, its width, local units gated, positions of their gates)
        self._groups = []
        mu = None if baseline == "zero" else np.asarray(means, dtype=np.float32).reshape(-1)
        for i, s in enumerate(sites):
            sel = np.flatnonzero((cols >= starts[i]) & (cols < starts[i + 1]))
            if len(sel):
                base = None
                if mu is not None:  # the value a shut gate leaves: the unit's mean (0 where ungated)
                    base = torch.zeros(int(nps[s]))
                    base[torch.as_tensor(cols[sel] - starts[i])] = torch.from_numpy(mu[sel])
                self._groups.append((s, int(nps[s]), torch.as_tensor(cols[sel] - starts[i]), torch.as_tensor(sel), base))
        self.split, self.max_sentences, self.scope = split, max_sentences, scope
        sent = live.sentences(split, max_sentences)
        if not len(sent):
            raise ConfigError(f"method.live.split={split!r}: no sentence of the live corpus in that split")
        self.batches_ = [b.to(live.device) for b in live.corpus.batches(
            sent, batch_tokens=int(batch_tokens), max_batch_sentences=int(batch_sentences))]
        self._rows = live.row_mask("words") if scope == "words" else None
        self.start_ = min(live.site_start(g[0]) for g in self._groups) if self._groups else 0
        self._ref: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._prefix: dict[int, list] = {}  # per batch: the outputs of the blocks below the first gated site
        self._eval_cache: tuple[bytes, dict] | None = None  # the last evaluation's gates and result
        self._ref_bytes = 0.0
        self.reference_mb = float(reference_mb)
        self._closest: dict[str, Any] | None = None
        self.constraint_met_: bool | None = None
        self.final_: dict[str, float] = {}
        self.epoch_s_: list[float] = []  # training steps of each epoch (seconds)
        self.eval_s_: list[float] = []  # the epoch-end evaluation over the whole split
        # the multiplier follows the KL of the kept set (test-time gates > 0 open, the others shut) on
        # the step's batch, measured every `constraint_every` steps (0: the KL of the sampled gates)
        self.constraint_every = max(0, int(constraint_every))
        self._dev = "kept" if self.constraint_every else None
        self._cur: int | None = None
        self.world_, self.rank_, self._shares = 1, 0, None  # DDP: see setup()
        self._generator: torch.Generator | None = None
        self.examples_seen_ = 0  # examples this process ran through training steps
        self._steps = 0
        self._last_kept_kl: torch.Tensor | None = None

    # -- data ------------------------------------------------------------------------------------
    def loader(self, seed: int = 0, shuffle: bool = True):
        """A DataLoader of batch indices (shuffled with ``seed``), the same on every rank: under DDP each
        rank runs its share of the sentences of every batch (:meth:`setup`), so the trainer must not shard
        the indices (``use_distributed_sampler=False``). ``seed`` also seeds the gates' noise."""
        self.seed_ = int(seed)
        g = torch.Generator().manual_seed(int(seed))
        return torch.utils.data.DataLoader(_Indices(len(self.batches_)), batch_size=1, shuffle=shuffle, generator=g,
                                           collate_fn=_first)

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _allsum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the ranks (no gradient); ``x`` itself in one process."""
        if self.world_ > 1:
            x = x.detach().clone()
            torch.distributed.all_reduce(x)
        return x

    def setup(self, stage: str | None = None) -> None:
        """Under DDP (``world`` processes): rank ``r`` takes sentences ``r, r + world, ...`` of every batch
        (their windows collated as a batch of their own), so that a step of ``world`` processes sees the
        batch of one process: the gates of a window are drawn for the whole batch on every rank (the same
        noise), the KL is summed over the ranks' examples and divided by their total, and DDP averages the
        gradients of ``world * (the rank's KL sum) / (the total)``: the 1-process step, up to float
        summation order. The epoch-end evaluation is sharded the same way."""
        self._shard(*self._world())

    def _shard(self, world: int, rank: int) -> None:
        self.world_, self.rank_ = int(world), int(rank)
        self._ref.clear()
        self._ref_bytes = 0.0
        if self.world_ == 1:
            self._shares = None
            return
        shares = []
        for lb in self.batches_:
            pos = np.arange(self.rank_, len(lb.sentences), self.world_)
            if not len(pos):
                shares.append((None, None))
                continue
            sub = self.live.corpus._collate(lb.index, np.asarray(lb.sentences)[pos]).to(self.live.device)
            win = np.flatnonzero(np.isin(lb.window_sentence.cpu().numpy(), pos))
            shares.append((sub, torch.as_tensor(win, dtype=torch.long)))
        self._shares = shares

    def _local(self, i: int):
        """This rank's part of batch ``i`` and the positions of its windows in the batch (None: all of it)."""
        if self._shares is None:
            return self.batches_[i], None
        return self._shares[i]

    def on_train_start(self) -> None:
        # the gates' noise: its own generator, seeded alike on every rank and in one process
        dev = self.gates.log_alpha.device
        self._generator = torch.Generator(device=dev).manual_seed(int(getattr(self, "seed_", 0)))

    def _batch(self, batch):
        i = int(batch) if not torch.is_tensor(batch) else int(batch.reshape(-1)[0])
        return i, self.batches_[i]

    def batch_size_of(self, batch) -> int:
        """Windows of the whole batch (over all ranks): one gate draw each."""
        return int(self._batch(batch)[1].input_ids.shape[0])

    # -- forward passes ----------------------------------------------------------------------------
    def _fns(self, lb, gates: torch.Tensor, fired: list[int]):
        """Hook functions multiplying the gated units by ``gates`` (``[n]`` or ``[B, n]``)."""
        tok = None if self._rows is None else self.live.token_mask(lb, self._rows)
        fns = {}
        for s, width, units, pos, base in self._groups:
            def fn(t, _w=width, _u=units, _p=pos, _s=s, _b=base):
                fired[0] += 1
                g = gates.index_select(-1, _p.to(gates.device)).to(device=t.device, dtype=t.dtype)
                full = t.new_ones(g.shape[:-1] + (_w,)).index_copy(-1, _u.to(t.device), g)
                if full.ndim == 2:
                    if t.ndim != 3 or full.shape[0] != t.shape[0]:
                        raise InterventionError(f"mask at {_s}: activation of shape {tuple(t.shape)} does not match "
                                                f"the batch's {full.shape[0]} inputs")
                    full = full[:, None, :]
                out = t * full
                if _b is not None:
                    out = out + (1.0 - full) * _b.to(device=t.device, dtype=t.dtype)
                if tok is not None:
                    out = torch.where(tok.to(t.device).unsqueeze(-1), out, t)
                return out

            fns[s] = fn
        return fns

    def _reference(self, i: int, lb) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """The unmasked head's log-probabilities of batch ``i`` (kept while under ``reference_mb``), its
        correctness, and whether the batch's prefix cache was just recorded."""
        if i in self._ref:
            lp, corr = self._ref[i]
            return lp, corr, False
        h = self.live.record_prefix(lb)
        if h.logits is None:
            raise ConfigError(f"the task head {self.live.head.kind} gives no output distribution to compare")
        lp = F.log_softmax(h.logits[0].float(), dim=-1).detach()
        corr = h.correct[0].detach() if h.correct is not None else None
        size = lp.numel() * 4 / 2 ** 20
        if self._ref_bytes + size <= self.reference_mb:
            self._ref[i] = (lp, corr)
            self._ref_bytes += size
            if self.start_ > 0:  # the blocks below the first gated site never change: keep their outputs too
                state, nb = self.live.prefix_state(self.start_)
                if self._ref_bytes + nb / 2 ** 20 <= self.reference_mb:
                    self._prefix[i] = state
                    self._ref_bytes += nb / 2 ** 20
        return lp, corr, True

    def _start(self, i: int, fresh: bool) -> int:
        """Where the masked pass of batch ``i`` starts: above the blocks whose outputs are recorded for it
        (just now, or kept from an earlier pass), else at the first block."""
        if fresh:
            return self.start_
        state = self._prefix.get(i)
        if state is None:
            return 0
        self.live.use_prefix(state)
        return self.start_

    def _masked(self, lb, gates, *, grad: bool, start: int):
        fired = [0]
        h, _ = self.live.forward(lb, self._fns(lb, gates, fired), grad=grad, start=start)
        if fired[0] < len(self._groups):
            raise InterventionError(f"the mask's hooks at {[g[0] for g in self._groups]} did not all fire: the forward "
                                    f"pass of the task head {self.live.head.kind} does not reach them")
        return h

    @staticmethod
    def _kl(lp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-example ``KL(p || q)`` from the reference log-probabilities and the masked logits."""
        lq = F.log_softmax(logits.float(), dim=-1)
        return (lp.exp() * (lp - lq)).sum(-1)

    def _local_kl(self, i: int, gates: torch.Tensor, *, grad: bool) -> tuple[torch.Tensor, int]:
        """Sum of the per-example KL over this rank's part of batch ``i`` and its number of examples."""
        lb, win = self._local(i)
        if lb is None:  # more ranks than sentences in this batch
            return self.gates.log_alpha.sum() * 0.0, 0
        if win is not None and gates.ndim == 2:
            gates = gates.index_select(0, win.to(gates.device))
        lp, _, fresh = self._reference(i, lb)
        h = self._masked(lb, gates, grad=grad, start=self._start(i, fresh))
        kl = self._kl(lp, h.logits[0])
        return kl.sum(), int(kl.numel())

    def _global_mean(self, local_sum: torch.Tensor, n: int) -> torch.Tensor:
        """``world * local_sum / (examples over all ranks)``: its mean over the ranks is the batch's mean KL."""
        total = float(self._allsum(torch.tensor(float(n), dtype=torch.float64)))
        return local_sum * (self.world_ / max(total, 1.0))

    def divergence(self, batch, gates):
        i, _ = self._batch(batch)
        self._cur = i
        s, n = self._local_kl(i, gates, grad=True)
        self.examples_seen_ += n
        return self._global_mean(s, n).to(self.device), {}

    @torch.no_grad()
    def _dev_divergence(self) -> torch.Tensor:
        """The kept set's KL on the step's batch (after the step), every ``constraint_every`` steps."""
        self._steps += 1
        if self._last_kept_kl is None or (self._steps - 1) % self.constraint_every == 0:
            s, n = self._local_kl(self._cur, self.kept_mask().to(self.gates.log_alpha.dtype), grad=False)
            self._last_kept_kl = self._global_mean(s, n).to(self.device)
        return self._last_kept_kl

    def update_multiplier(self, div: torch.Tensor) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            div = div.detach().clone()
            torch.distributed.all_reduce(div)
            div /= torch.distributed.get_world_size()
        super().update_multiplier(div)

    @torch.no_grad()
    def evaluate(self, gates: torch.Tensor | None = None) -> dict[str, float]:
        """KL and the head's accuracy over the whole split with the kept neurons open and the others
        closed (test-time gate > 0 -> 1, else 0: the state the ranking's kept set claims), or with
        ``gates``: ``kl``, ``acc`` (masked), ``base_acc`` (unmasked), ``n`` examples."""
        g = (self.kept_mask().to(self.gates.log_alpha.dtype) if gates is None else gates).detach()
        key = g.cpu().numpy().tobytes()
        if self._eval_cache is not None and self._eval_cache[0] == key:
            return dict(self._eval_cache[1])  # the same gates as the last evaluation (e.g. an unchanged kept set)
        acc = torch.zeros(4, dtype=torch.float64)  # KL sum, examples, correct masked / unmasked
        for i in range(len(self.batches_)):
            lb, _ = self._local(i)
            if lb is None:
                continue
            lp, corr, fresh = self._reference(i, lb)
            h = self._masked(lb, g, grad=False, start=self._start(i, fresh))
            kl = self._kl(lp, h.logits[0])
            acc[0] += float(kl.double().sum())
            acc[1] += int(kl.numel())
            if corr is not None and h.correct is not None and self.live.head.kind != "lm":
                acc[2] += float(h.correct[0].double().sum())
                acc[3] += float(corr.double().sum())
        kl_sum, n, c, c0 = self._allsum(acc).tolist()
        n = int(round(n))
        out = {"kl": kl_sum / max(n, 1), "n": n}
        if self.live.head.kind != "lm" and n:
            out["acc"], out["base_acc"] = c / n, c0 / n
        self._eval_cache = (key, dict(out))
        return out

    def dev_divergence(self) -> float | None:
        self._eval = self.evaluate()
        return self._eval["kl"]

    # -- epochs ---------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        import time

        self._t0 = time.perf_counter()
        starting = self._anneal is None
        super().on_train_epoch_start()
        if starting and self._anneal is not None:
            # the constrained phase may leave the multiplier at its bound (the KL above eps): annealing would
            # spend most of its steps bringing it down before the L0 target could act
            with torch.no_grad():
                self.log_lambda.clamp_(max=math.log(float(self.hparams["lambda_init"])))

    def on_train_epoch_end(self) -> None:
        import time

        t1 = time.perf_counter()
        self.epoch_s_.append(t1 - self._t0)
        annealing = self._anneal is not None
        before = self._best
        super().on_train_epoch_end()  # the constrained epochs evaluate the gates (dev_divergence)
        rec = self.path_[-1]
        if annealing:
            self._eval = self.evaluate()
        self.eval_s_.append(time.perf_counter() - t1)
        rec["kl"] = self._eval["kl"]
        rec.pop("dev_divergence_all", None)
        if "acc" in self._eval:
            rec["acc"] = self._eval["acc"]
        rec["kept_share"] = rec["kept"] / max(1, self.num_gates)
        rec["phase"] = "anneal" if annealing else "constrained"
        self.log_dict({"val/kl": float(rec["kl"]), "val/kept_share": float(rec["kept_share"])}, on_epoch=True,
                      on_step=False, batch_size=1)
        if not annealing:
            key = (rec["kl"], rec["kept"])
            if self._closest is None or key < self._closest["key"]:
                self._closest = {"key": key, "snap": self._snapshot(), "epoch": rec["epoch"]}
            if self._best is not before:  # a new sparsest state within eps
                self._best["epoch"] = rec["epoch"]
        log.info("neuron mask (live) epoch %d: kept %d of %d (%.2f%%), KL %.4g nats (eps %.3g), lambda %.3g%s",
                 rec["epoch"], rec["kept"], self.num_gates, 100 * rec["kept_share"], rec["kl"], self.eps,
                 rec.get("lambda", float("nan")), " (annealing)" if annealing else "")

    def on_train_end(self) -> None:
        self.constraint_met_ = self._best is not None
        self.chosen_epoch_ = (self._best or {}).get("epoch")
        if self._best is None and self._closest is not None:
            c = self._closest
            log.warning("neuron mask: the constraint KL <= %.3g nats was not met at any epoch end; reporting the "
                        "closest state (epoch %d: KL %.4g nats, %d of %d gates open). More epochs, a larger eps or "
                        "a higher lambda_init may meet it", self.eps, c["epoch"], c["key"][0], c["key"][1],
                        self.num_gates)
            self._best = c["snap"]
            self.chosen_epoch_ = c["epoch"]
        super().on_train_end()
        self.final_ = self.evaluate()


def plot_mask_path(path_: Sequence[Mapping[str, Any]], eps: float, out: str | Path, chosen_epoch: int | None = None,
                   title: str | None = None) -> Path:
    """Kept share against KL per epoch (constrained epochs, then annealing), with ``eps`` and the state reported."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    try:
        ep = np.array([r["epoch"] for r in path_])
        kl = np.array([r.get("kl", np.nan) for r in path_], dtype=float)
        ks = np.array([r.get("kept_share", np.nan) for r in path_], dtype=float)
        ann = np.array([r.get("phase") == "anneal" for r in path_])
        ax = axes[0]
        for sel, lab, col in ((~ann, "constrained", "#4C72B0"), (ann, "annealing", "#C44E52")):
            if sel.any():
                ax.plot(100 * ks[sel], kl[sel], "o-", color=col, label=lab, ms=4)
        if chosen_epoch is not None and chosen_epoch in ep:
            j = int(np.flatnonzero(ep == chosen_epoch)[0])
            ax.plot([100 * ks[j]], [kl[j]], "*", color="black", ms=12, label=f"reported (epoch {chosen_epoch})")
        ax.axhline(eps, color="gray", ls="--", lw=0.8, label=f"eps = {eps:g}")
        ax.set_xlabel("gates open (% of the gated neurons)")
        ax.set_ylabel("KL(full || masked), nats")
        ax.set_yscale("symlog", linthresh=max(eps / 10, 1e-4))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax2 = axes[1]
        ax2.plot(ep, 100 * ks, "o-", color="#55A868", ms=3, label="open %")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("gates open (%)")
        ax3 = ax2.twinx()
        ax3.plot(ep, kl, "s--", color="#8172B2", ms=3, label="KL")
        ax3.axhline(eps, color="gray", ls="--", lw=0.8)
        ax3.set_ylabel("KL (nats)")
        ax3.set_yscale("symlog", linthresh=max(eps / 10, 1e-4))
        ax3.set_ylim(bottom=0)
        fig.suptitle(title or "differentiable mask of the live model: sparsity / fidelity path", fontsize=9)
        fig.tight_layout()
        fig.savefig(out, metadata={"Software": None})
    finally:
        plt.close(fig)
    return out

