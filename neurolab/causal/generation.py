"""Corpus generation (Poerner et al. 2018): the inputs a neuron wants, found by optimising the input.

For a sequence of ``length`` tokens, trainable logits ``[length, vocab]`` are relaxed by
Gumbel-softmax with a temperature annealed from ``tau_start`` to ``tau_end`` (geometric schedule);
the soft one-hot vectors weight the model's input embedding matrix and go into the model (between
the tokenizer's special tokens, as extraction feeds words) through ``inputs_embeds``; the logits
follow the neuron's activation at ``position`` (the last generated token by default, or ``mean`` over
them) upwards, by Adam as the original or (the default) by a natural-gradient step with a
straight-through hard sample (see :func:`generate_inputs`). Several seeded restarts (and several
neurons) share every forward pass, which runs only the blocks up to the neuron's site. The hard
(argmax) sequence of every restart and its best one-token neighbours are scored with real token ids
along the way (every ``eval_every`` steps and at the end) and the best distinct ones are kept and
decoded. Special tokens are never generated;
``exclude_subwords`` also excludes subword continuation pieces (``##x`` of WordPiece, pieces
without a leading space marker of byte-level BPE and SentencePiece).

:func:`exhaustive_best` scores every allowed token as a length-1 input (the true optimum for length 1)
and :func:`best_ngrams` the distinct token n-grams of a corpus, in isolation, through the same path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..models.hooks import intervene
from ..models.sites import resolve_sites, site_table

log = logging.getLogger(__name__)

__all__ = ["Generated", "NeuronInput", "generate_inputs", "exhaustive_best", "best_ngrams", "parse_neuron",
           "check_neurons", "allowed_tokens"]


class _Stop(Exception):
    """Ends a forward pass once every neuron has been read."""


@dataclass
class Generated:
    """An input for a neuron: its token ids, decoded text and the neuron's activation on it."""

    tokens: list[int]
    text: str
    activation: float
    restart: int = -1

    def to_dict(self) -> dict:
        return {"text": self.text, "activation": float(self.activation), "tokens": [int(t) for t in self.tokens]}


class NeuronInput:
    """Runs token sequences (ids or soft embeddings) between the model's special tokens and reads
    neurons ``[(site, unit)]`` at a position of the sequence."""

    def __init__(self, model, tokenizer, neurons: Sequence[tuple[str, int]], *, position: Any = "last"):
        from ..extraction.alignment import special_tokens

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.neurons = [(str(s), int(u)) for s, u in neurons]
        check_neurons(model, self.neurons)
        self.sites = resolve_sites(model, sorted({s for s, _ in self.neurons}))
        pre, suf = special_tokens(tokenizer)
        self.prefix, self.suffix = list(pre), list(suf)
        self.position = position
        self.enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self.emb = model.get_input_embeddings()
        self.device = next(model.parameters()).device
        from ..models.loading import model_max_length

        self.max_length = int(model_max_length(model, tokenizer, None))

    def check_length(self, length: int) -> None:
        if isinstance(length, bool) or int(length) < 1:
            raise ConfigError(f"length={length!r}: expected at least 1 token")
        limit = self.max_length - len(self.prefix) - len(self.suffix)
        if int(length) > limit:
            raise ConfigError(f"length={length} exceeds the model's limit: at most {limit} tokens between its "
                              f"{len(self.prefix) + len(self.suffix)} special tokens ({self.max_length} in all)")

    def _read(self, acts: dict[str, torch.Tensor], length: int, which: torch.Tensor | None) -> torch.Tensor:
        """``[N]``: for input copy i, neuron ``which[i]`` at the position (``which`` None: ``[N, neurons]``)."""
        out = []
        p0 = len(self.prefix)
        for i, (s, u) in enumerate(self.neurons):
            t = acts[s]  # [N, T, H]
            if self.position == "last":
                v = t[:, p0 + length - 1, u]
            elif self.position == "mean":
                v = t[:, p0:p0 + length, u].mean(1)
            else:
                k = int(self.position)
                if not -length <= k < length:
                    raise ConfigError(f"position={k} is outside the {length} generated tokens")
                v = t[:, p0 + (k % length), u]
            out.append(v)
        stacked = torch.stack(out, 1)  # [N, neurons]
        if which is None:
            return stacked
        return stacked.gather(1, which.view(-1, 1)).squeeze(1)

    def _run(self, embeds: torch.Tensor, length: int, which: torch.Tensor, grad: bool) -> torch.Tensor:
        N = embeds.shape[0]
        ids_pre = torch.tensor(self.prefix, device=self.device, dtype=torch.long)
        ids_suf = torch.tensor(self.suffix, device=self.device, dtype=torch.long)
        parts = []
        if len(ids_pre):
            parts.append(self.emb(ids_pre).unsqueeze(0).expand(N, -1, -1).to(embeds.dtype))
        parts.append(embeds)
        if len(ids_suf):
            parts.append(self.emb(ids_suf).unsqueeze(0).expand(N, -1, -1).to(embeds.dtype))
        x = torch.cat(parts, 1)
        kw: dict[str, Any] = {"inputs_embeds": x, "attention_mask": torch.ones(x.shape[:2], device=self.device,
                                                                                dtype=torch.long)}
        if self.enc_dec:
            kw["decoder_inputs_embeds"] = x
        if getattr(self.model.config, "use_cache", None) is not None:
            kw["use_cache"] = False
        acts: dict[str, torch.Tensor] = {}

        def rec(t, _n):
            acts[_n] = t
            if len(acts) == len(self.sites):
                raise _Stop  # every neuron read: the blocks above are not needed
            return t

        with (torch.enable_grad() if grad else torch.inference_mode()), \
                intervene(self.model, {s: partial(rec, _n=s.name) for s in self.sites}):
            try:
                self.model(**kw)
            except _Stop:
                pass
        return self._read(acts, length, which)

    def score_ids(self, ids: torch.Tensor, which: torch.Tensor | int | None = 0, batch: int = 1024) -> torch.Tensor:
        """Activations of hard token sequences ``ids [N, length]`` (``which``: the neuron index, one or
        one per row; None: every neuron, ``[N, neurons]``)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        N, L = ids.shape
        if which is None:
            which_t = None
        elif not torch.is_tensor(which) or which.dim() == 0:
            which_t = torch.as_tensor(which, device=self.device, dtype=torch.long).expand(N)
        else:
            which_t = which.to(self.device)
        out = []
        for a in range(0, N, batch):
            w = None if which_t is None else which_t[a:a + batch]
            out.append(self._run(self.emb(ids[a:a + batch]), L, w, grad=False))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)


def allowed_tokens(tokenizer, vocab_size: int, *, exclude_subwords: bool = False) -> np.ndarray:
    """Bool ``[vocab_size]``: tokens a generated input may use (no special tokens, no unused or
    added pieces; optionally no subword continuations)."""
    ok = np.ones(int(vocab_size), bool)
    special = set(int(i) for i in (tokenizer.all_special_ids or []))
    for i in special:
        if 0 <= i < vocab_size:
            ok[i] = False
    inv = {i: t for t, i in tokenizer.get_vocab().items()}
    pieces = list(inv.values())
    if any(t.startswith("##") for t in pieces):
        starts_word = lambda t: not t.startswith("##")  # WordPiece
    elif any(t.startswith("\u0120") for t in pieces):
        starts_word = lambda t: t.startswith("\u0120")  # byte-level BPE (GPT-2): a leading space marker
    elif any(t.startswith("\u2581") for t in pieces):
        starts_word = lambda t: t.startswith("\u2581")  # SentencePiece
    else:
        starts_word = lambda t: True
    for i in range(int(vocab_size)):
        t = inv.get(i)
        if t is None:
            ok[i] = False
        elif (t.startswith("[") and t.endswith("]") and len(t) > 2) or (t.startswith("<") and t.endswith(">") and len(t) > 2):
            ok[i] = False  # [unused12], <extra_id_3> ...
        elif exclude_subwords and not starts_word(t):
            ok[i] = False
    if not ok.any():
        raise ConfigError("no token of the vocabulary may be generated (all are special or excluded)")
    return ok


def check_neurons(model, neurons: Sequence[tuple[str, int]], *, model_name: str | None = None) -> None:
    """One clear error for a neuron ``(site, unit)`` the model lacks: a site it does not have (its
    sites listed) or a unit out of the site's range."""
    table = site_table(model)
    for s, u in neurons:
        if s not in table:
            raise ConfigError(f"neuron {s}:{u}: {s!r} is not a site of model {model_name or type(model).__name__} "
                              f"(its sites: {', '.join(table)})")
        n = table[s].units
        if n is not None and not 0 <= int(u) < int(n):
            raise ConfigError(f"neuron {s}:{u}: unit {u} is out of range for site {s} ({n} units)")


def parse_neuron(name: str) -> tuple[str, int]:
    """``"layers.3.mlp:117"`` -> ``("layers.3.mlp", 117)``."""
    s = str(name)
    if ":" not in s:
        raise ConfigError(f"neuron={name!r}: expected SITE:UNIT, e.g. layers.3.mlp:117")
    site, unit = s.rsplit(":", 1)
    try:
        return site, int(unit)
    except ValueError:
        raise ConfigError(f"neuron={name!r}: the unit after ':' must be an integer") from None


def generate_inputs(model, tokenizer, neurons: Sequence[tuple[str, int]] | tuple[str, int], *, length: int = 5,
                    steps: int = 300, restarts: int = 8, lr: float = 0.06, tau_start: float = 2.0,
                    tau_end: float = 0.1, position: Any = "last", exclude_subwords: bool = False, seed: int = 0,
                    eval_every: int = 15, keep: int = 5, init_scale: float = 1.0, warm_start: int = 1024,
                    warm_peak: float = 8.0, straight_through: bool = True, optimizer: str = "natural",
                    candidates: int = 32) -> list[list[Generated]]:
    """Per neuron, the ``keep`` best distinct generated inputs (highest activation first), see the
    module docstring. All neurons x restarts are optimised together in one batch; the forward pass
    runs only the blocks up to the neuron's site.

    ``lr`` x ``steps`` is how far the logits move in all (in standard deviations of the token gains):
    keep it moderate (the defaults' product; measured settings in ``tests/benchmarks/BENCHMARKS.md``):
    much more freezes the restarts on their first good tokens before the temperature has fallen.

    ``warm_start``: score that many seeded random hard sequences first and start restart ``r`` of a
    neuron from its ``r``-th best (its logits raised by ``warm_peak`` at those tokens; the random
    sequences count among the candidates kept), so that
    restarts begin where the neuron is active rather than in a flat region (e.g. the negative side
    of a GELU, whose gradient ascent drifts towards 0); 0: random starts only.
    ``straight_through``: the forward pass gets the hard (one-hot) Gumbel sample and the gradient
    flows through the soft one (the relaxed mixture of embeddings otherwise; mixtures of 30k
    embeddings are far from any real token, which the final argmax must be). The hard sample of
    every step is a real token sequence, so its activation (read in that forward pass) is a
    candidate too.
    ``optimizer``: ``natural`` (each step adds ``lr`` x the standardised first-order gain of every
    token, ``E @ d act / d input``, to its logits: the natural-gradient step of the softmax, which
    does not shrink with the token's current probability; the hard sample is drawn from
    ``softmax(logits / tau)``, so the annealed temperature turns exploration into exploitation) or
    ``adam`` (Adam on the logits through the Gumbel-softmax ``softmax((logits + g) / tau)``, as the
    original; its per-coordinate scaling raises every token with a positive gain alike).
    ``candidates``: at every evaluation (each ``eval_every`` steps and at the end), besides the argmax
    sequence of each restart, about ``candidates - 1`` sequences that replace one of its tokens by one
    of the next most likely tokens at that position (``ceil((candidates - 1) / length)`` per
    position) are scored with real token ids
    (the one-token neighbours the relaxed distribution favours; the first-order gain that ranks them
    is only an estimate); a restart whose best neighbour beats its argmax moves there (its logits
    at that token are raised to the position's maximum plus ``warm_peak``). 1: the argmax only."""
    if isinstance(neurons, tuple) and len(neurons) == 2 and isinstance(neurons[0], str):
        neurons = [neurons]
    if int(steps) < 1:
        raise ConfigError(f"steps={steps!r}: expected at least 1")
    if int(restarts) < 1:
        raise ConfigError(f"restarts={restarts!r}: expected at least 1")
    if optimizer not in ("natural", "adam"):
        raise ConfigError(f"optimizer={optimizer!r}: expected natural or adam")
    runner = NeuronInput(model, tokenizer, neurons, position=position)
    runner.check_length(length)
    L = int(length)
    E = runner.emb.weight.detach()
    dev = E.device
    V = E.shape[0]
    # the optimisation runs over the allowed tokens only (no mask over the vocabulary needed)
    pool = torch.from_numpy(np.flatnonzero(allowed_tokens(tokenizer, V, exclude_subwords=exclude_subwords))).to(dev)
    Ea = E[pool]  # [Va, H]
    Va = Ea.shape[0]
    nN, R = len(runner.neurons), int(restarts)
    N = nN * R
    which = torch.arange(nN, device=dev).repeat_interleave(R)  # [nN * R]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    logits = (torch.randn((N, L, Va), generator=gen) * float(init_scale)).to(dev, E.dtype)
    best: list[dict[tuple, tuple[float, int]]] = [{} for _ in range(nN)]
    posL = torch.arange(L, device=dev)

    def record(ids: torch.Tensor, vals, row_of: list[int] | None = None) -> None:
        ids_l = ids.tolist()
        vals_l = vals.tolist()
        for i, (key, v) in enumerate(zip(ids_l, vals_l)):
            j = i if row_of is None else row_of[i]
            n, r = divmod(j, R)
            key = tuple(key)
            if key not in best[n] or v > best[n][key][0]:
                best[n][key] = (float(v), r)

    if int(warm_start) > 0:
        cand = torch.randint(Va, (int(warm_start), L), generator=gen).to(dev)  # positions in the pool
        vals_all = runner.score_ids(pool[cand], None)  # [warm_start, neurons]
        for n in range(nN):
            top = torch.argsort(vals_all[:, n], descending=True)[:R]
            for r, c in enumerate(top.tolist()):
                logits[n * R + r, posL, cand[c]] += float(warm_peak)
                best[n][tuple(pool[cand[c]].tolist())] = (float(vals_all[c, n]), r)
    opt = None
    if optimizer == "adam":
        logits.requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=float(lr))
    # alternatives per position: ``candidates`` neighbours per restart in all, spread over the positions
    k = 1 + min(Va - 1, -(-max(0, int(candidates) - 1) // L)) if int(candidates) > 1 else 1

    def evaluate_hard() -> None:
        with torch.inference_mode():
            lg = logits.detach()
            cur = lg.argmax(-1)  # [N, L] positions in the pool
            seqs = [cur]
            if k > 1:
                alt = lg.topk(k, dim=-1).indices[..., 1:]  # [N, L, k-1] the next most likely tokens
                nb = cur.view(N, 1, 1, L).repeat(1, L, k - 1, 1)  # [N, L(pos swapped), k-1, L]
                nb[:, posL, :, posL] = alt.permute(1, 0, 2)  # nb[:, l, :, l] = alt[:, l, :]
                seqs.append(nb.view(N, L * (k - 1), L))
            allseq = torch.cat([cur.unsqueeze(1)] + ([seqs[1]] if k > 1 else []), 1)  # [N, C, L]
            C = allseq.shape[1]
            ids = pool[allseq.reshape(N * C, L)]
            # sequences scored before (for the same neuron) are not run again
            keys = [tuple(x) for x in ids.tolist()]
            known = [best[j // (R * C)].get(key) for j, key in enumerate(keys)]
            new = [j for j, kn in enumerate(known) if kn is None]
            vals = torch.tensor([float("nan") if kn is None else kn[0] for kn in known], dtype=torch.float64)
            if new:
                sel = torch.tensor(new, dtype=torch.long)
                vals[sel] = runner.score_ids(ids[sel.to(dev)], which.repeat_interleave(C)[sel.to(dev)]).double().cpu()
            vals = vals.view(N, C)
        if new:
            record(ids[sel.to(dev)], vals.view(-1)[sel], [j // C for j in new])
        if k > 1:
            b = vals.argmax(1)  # [N]
            move = (vals[torch.arange(N), b] > vals[:, 0]).nonzero().flatten()
            if len(move):
                with torch.no_grad():
                    move = move.to(dev)
                    target = allseq[move, b.to(dev)[move]]  # [m, L]
                    lg = logits.data
                    top = lg[move].amax(-1)  # [m, L]
                    lg[move.view(-1, 1), posL.view(1, -1), target] = top + float(warm_peak)

    if opt is None:
        # the standard deviation over the vocabulary of a token gain g . e_v is sqrt(g' Cov(E) g): the
        # standardised step is one product (the mean shift is the same for every token of a position
        # and changes neither the softmax nor the argmax)
        EaT = Ea.T.contiguous()
        cov = torch.cov(Ea.T.double()).to(E.dtype)  # [H, H]
    for t in range(int(steps)):
        frac = t / max(1, int(steps) - 1)
        tau = float(tau_start) * (float(tau_end) / float(tau_start)) ** frac
        u = torch.rand((N, L, Va), generator=gen).to(dev, E.dtype)
        if opt is not None:
            g = u.clamp_(1e-10, 1 - 1e-10).log_().neg_().log_().neg_()  # Gumbel(0, 1)
            y = torch.softmax((logits + g) / tau, dim=-1)  # [N, L, Va]
            if straight_through:  # the model sees the hard sample; the gradient flows through the soft one
                hard = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)
                y = hard - y.detach() + y
            act = runner._run(y @ Ea, L, which, grad=True)
            opt.zero_grad(set_to_none=True)
            (-act.sum()).backward()
            opt.step()
            if straight_through:
                record(pool[hard.argmax(-1)], act.detach().double().cpu())
        else:
            with torch.no_grad():
                # -log(-log u) is Gumbel(0, 1); u = 0 gives -inf, a token that is never drawn
                nlg = u.log_().neg_().log_()  # = -g
                if straight_through:  # a sample of softmax(logits / tau): the real tokens go in
                    hard = torch.add(logits, nlg, alpha=-float(tau)).argmax(-1)  # argmax(logits + tau g)
                    x = Ea[hard]
                else:
                    x = torch.softmax((logits - nlg) / tau, dim=-1) @ Ea
            x.requires_grad_(True)
            act = runner._run(x, L, which, grad=True)
            (gx,) = torch.autograd.grad(act.sum(), [x])  # [N, L, H]
            with torch.no_grad():
                g2 = gx.reshape(N * L, -1)
                sd = ((g2 @ cov) * g2).sum(-1).clamp_min(0).sqrt_().clamp_min_(1e-12)
                # logits += lr * (first-order gain of every token at every position) / its sd
                logits.view(N * L, Va).addmm_(g2 * (float(lr) / sd).unsqueeze(1), EaT)
            if straight_through:
                record(pool[hard], act.detach().double().cpu())
        if eval_every and (t + 1) % int(eval_every) == 0:
            evaluate_hard()
    evaluate_hard()
    out = []
    for n in range(nN):
        items = sorted(best[n].items(), key=lambda kv: -kv[1][0])[: int(keep)]
        out.append([Generated(list(k_), tokenizer.decode(list(k_)), v, r) for k_, (v, r) in items])
    return out


def exhaustive_best(model, tokenizer, neurons: Sequence[tuple[str, int]] | tuple[str, int], *,
                    exclude_subwords: bool = False, position: Any = "last", batch: int = 2048,
                    top: int = 1) -> list[list[Generated]] | list[Generated]:
    """Every allowed token as a length-1 input: the ``top`` best (the true optimum for length 1), per
    neuron when given a list of neurons (one pass over the vocabulary for all of them)."""
    single = isinstance(neurons, tuple) and len(neurons) == 2 and isinstance(neurons[0], str)
    runner = NeuronInput(model, tokenizer, [neurons] if single else list(neurons), position=position)
    V = runner.emb.weight.shape[0]
    ok = np.flatnonzero(allowed_tokens(tokenizer, V, exclude_subwords=exclude_subwords))
    ids = torch.from_numpy(ok).view(-1, 1)
    vals = runner.score_ids(ids, None, batch=batch).double().cpu().numpy()  # [tokens, neurons]
    out = []
    for n in range(vals.shape[1]):
        order = np.argsort(-vals[:, n], kind="stable")[: int(top)]
        out.append([Generated([int(ok[i])], tokenizer.decode([int(ok[i])]), float(vals[i, n])) for i in order])
    return out[0] if single else out


def best_ngrams(model, tokenizer, neuron: tuple[str, int], sentences: Sequence[Sequence[str]], length: int, *,
                position: Any = "last", max_ngrams: int = 20000, batch: int = 1024, top: int = 1,
                exclude_subwords: bool = False) -> list[Generated]:
    """The distinct token n-grams of ``length`` tokens in the corpus ``sentences`` (words, tokenised as
    extraction tokenises them; the first ``max_ngrams`` in corpus order), each scored in isolation as
    a generated input would be: the ``top`` best."""
    from ..extraction.alignment import tokenize_words

    runner = NeuronInput(model, tokenizer, [neuron], position=position)
    runner.check_length(length)
    V = runner.emb.weight.shape[0]
    ok = allowed_tokens(tokenizer, V, exclude_subwords=exclude_subwords)
    seen: dict[tuple, None] = {}
    for tok in tokenize_words(tokenizer, [list(s) for s in sentences]):
        ids = [int(i) for i in tok.ids]
        for a in range(0, len(ids) - int(length) + 1):
            g = tuple(ids[a:a + int(length)])
            if all(0 <= i < V and ok[i] for i in g):
                seen.setdefault(g, None)
            if len(seen) >= max_ngrams:
                break
        if len(seen) >= max_ngrams:
            break
    if not seen:
        return []
    grams = list(seen)
    vals = runner.score_ids(torch.tensor(grams), 0, batch=batch).double().cpu().numpy()
    order = np.argsort(-vals, kind="stable")[: int(top)]
    return [Generated(list(grams[i]), tokenizer.decode(list(grams[i])), float(vals[i])) for i in order]
