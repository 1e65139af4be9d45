"""Steering the live model toward a class (control of the model's behaviour, survey §6.1).

Given neurons in rank order and a target class of the task head, :func:`steering_curve` forces the
top ``k`` neurons to their median on the target class's training words (``on_p50``), or translates
them by ``alpha * (mu_target - mu_source)`` (``translate``; the class means of the concept, source:
one class or every other training word), at the tokens of the chosen words, and compares with ``k``
random neurons of the same sites:

* ``steer/flip@k``: among the steered words the head did not already assign to the target, the share
  it assigns to the target once steered (``steer/random_flip@k`` for random neurons, mean over seeds);
* ``steer/dp@k``: the mean change of p(target) on the steered words;
* ``steer/damage@k``: the accuracy lost on the evaluated words that were *not* steered (the effect
  spilling over through attention); ``steer/acc_steered@k`` the accuracy on the steered words.

A target that is a class of the concept but not of the head (IDANI: a domain, with a UPOS tagger)
gets the accuracies only.

For ``translate``, the same metrics for each ``alpha`` of ``alphas`` carry ``/alpha=<a>``.
:func:`generate_side_by_side` writes a decoder LM's seeded continuations with and without the
intervention. The domain-adaptation use (IDANI, Antverg et al. 2022) is the same machinery with the
domains as the concept's classes (``conf/experiment/idani.yaml``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .interventions import Intervention, InterventionSet, NeuronStats, make_set
from .live import LiveModel

log = logging.getLogger(__name__)

__all__ = ["steering_curve", "generate_side_by_side", "plot_steering", "parse_neurons", "STEER_KINDS"]

STEER_KINDS = ("on_p50", "translate")


def parse_neurons(spec: Sequence[str] | str) -> list[tuple[str, int]]:
    """``["layers.3:117", "layers.5.mlp:2"]`` (or one comma-separated string) -> ``(site, unit)`` pairs."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    out = []
    for it in items:
        if not it:
            continue
        site, sep, unit = it.rpartition(":")
        if not sep or not site or not unit.isdigit():
            raise ConfigError(f"neurons: {it!r} is not a neuron name like layers.3:117 (site:unit)")
        out.append((site, int(unit)))
    if not out:
        raise ConfigError("neurons: no neuron given")
    if len(set(out)) != len(out):
        raise ConfigError("neurons: a neuron is listed twice")
    return out


def _random_neurons(k: int, sites: Sequence[str], nps: Mapping[str, int], seed: int) -> list[tuple[str, int]]:
    total = int(sum(int(nps[s]) for s in sites))
    cols = np.sort(np.random.default_rng(seed).choice(total, size=k, replace=False))
    starts = np.cumsum([0] + [int(nps[s]) for s in sites])
    si = np.searchsorted(starts, cols, side="right") - 1
    return [(sites[int(a)], int(c - starts[a])) for a, c in zip(si, cols)]


def steering_curve(live: LiveModel, neurons: Sequence[tuple[str, int]], stats: NeuronStats, *, target: str,
                   sizes: Sequence[int], kind: str = "on_p50", alpha: float = 1.0, alphas: Sequence[float] = (),
                   source: str | None = None, tokens: str = "non_target", share: float = 1.0,
                   seeds: Sequence[int] = (0, 1, 2), split: str = "test", max_sentences: int | None = None,
                   random_sites: Sequence[str] | None = None, random_nps: Mapping[str, int] | None = None,
                   progress: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``steer/...`` metrics (see the module docstring) and the curve as rows
    ``{"k", "alpha", "ordering", "flip", "dp", "damage"}``."""
    if kind not in STEER_KINDS:
        raise ConfigError(f"intervention={kind!r}: expected one of {', '.join(STEER_KINDS)}")
    stats.class_index(target)  # a class of the concept (ConfigError naming its classes otherwise)
    head_target = str(target) in live.head.classes  # else (IDANI: a domain) only accuracies are reported
    tcode = live.head.class_index(target) if head_target else None
    neurons = list(neurons)
    sizes = [int(k) for k in sizes]
    for k in sizes:
        if k < 1 or k > len(neurons):
            raise ConfigError(f"k={k} exceeds the {len(neurons)} neurons given (ranking or neuron list)")
    sites = list(random_sites or dict.fromkeys(s for s, _ in neurons))
    nps = dict(random_nps or {s: int(live.site(s).units) for s in sites})
    alist = [float(alpha)] + [float(a) for a in alphas if float(a) != float(alpha)] if kind == "translate" else [None]
    drawn = {(k, int(sd)): _random_neurons(k, sites, nps, int(sd)) for k in sizes for sd in seeds}
    if kind == "on_p50":  # every median from one pass over the target's training rows
        every = list(dict.fromkeys(neurons[:max(sizes)] + [n for v in drawn.values() for n in v]))
        stats.class_median(target, stats.positions(every))
    sets, keys = [], []
    for k in sizes:
        for a in alist:
            kw = dict(target=target, source=source, scope=tokens, share=share, seed=int(seeds[0]) if len(seeds) else 0)
            if a is not None:
                kw["alpha"] = a
            sets.append(make_set(kind, neurons[:k], stats, name=f"top@{k}", **kw))
            keys.append(("top", k, a, 0))
            for sd in seeds:
                sets.append(make_set(kind, drawn[(k, int(sd))], stats, name=f"random@{k}#{sd}", **kw))
                keys.append(("random", k, a, int(sd)))
    res = live.run(sets, split, max_sentences=max_sentences, target=target if head_target else None, progress=progress)
    ex = res.examples
    rows = live.row_mask(tokens, share=share, seed=int(seeds[0]) if len(seeds) else 0, target=target, split=split,
                         max_sentences=max_sentences)
    if rows is None:
        inside = np.ones(len(ex.ids), bool)
    elif live.head.level == "sentence":
        inside = np.array([rows[live.corpus.rows_of([int(s)])].any() for s in ex.ids], dtype=bool)
    else:
        inside = rows[ex.ids]
    base_pred = res.base.pred
    flippable = inside & (base_pred != tcode) if head_target else np.zeros(len(inside), bool)
    outside = ~inside
    mean_of = lambda a, m: float(a[m].mean()) if m.any() else float("nan")
    out: dict[str, float] = {"steer/n_steered": int(inside.sum()), "steer/n_other": int(outside.sum()),
                             "steer/base_acc_steered": mean_of(res.base.correct, inside),
                             "task/acc": res.accuracy(None), "task/loss": res.loss(None)}
    if head_target:
        out["steer/n_flippable"] = int(flippable.sum())
        out["steer/base_target_share"] = mean_of(base_pred == tcode, inside)
    curve = []
    for k in sizes:
        for a in alist:
            for ordering in ("top", "random"):
                idx = [j for j, key in enumerate(keys) if key[0] == ordering and key[1] == k and key[2] == a]
                vals: dict[str, list[float]] = {"flip": [], "dp": [], "damage": [], "acc_steered": []}
                for j in idx:
                    acc = res.sets[j]
                    if head_target:
                        vals["flip"].append(mean_of(acc.pred == tcode, flippable))
                        vals["dp"].append(float(np.nanmean(acc.p_target[inside] - res.base.p_target[inside]))
                                          if inside.any() else float("nan"))
                    vals["damage"].append(mean_of(res.base.correct, outside) - mean_of(acc.correct, outside))
                    vals["acc_steered"].append(mean_of(acc.correct, inside))
                suffix = "" if a is None or a == alist[0] else f"/alpha={a:g}"
                pre = "steer/" if ordering == "top" else "steer/random_"
                for name, v in vals.items():
                    if v:
                        out[f"{pre}{name}@{k}{suffix}"] = float(np.mean(v))
                if ordering == "random" and len(vals["flip"]) > 1:
                    out[f"steer/random_flip_std@{k}{suffix}"] = float(np.std(vals["flip"], ddof=1))
                curve.append({"k": k, "alpha": a, "ordering": ordering,
                              **{name: (float(np.mean(v)) if v else None) for name, v in vals.items()}})
    return out, curve


def plot_steering(curve: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Flip share against k (top vs random neurons), one line per alpha."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    try:
        alphas = list(dict.fromkeys(r["alpha"] for r in curve))
        what = "flip" if any(r.get("flip") is not None for r in curve) else "acc_steered"
        for i, a in enumerate(alphas):
            for ordering, style, color in (("top", "o-", "#C44E52"), ("random", "s--", "#8C8C8C")):
                pts = [(r["k"], r[what]) for r in curve if r["alpha"] == a and r["ordering"] == ordering]
                if not pts:
                    continue
                lab = ordering + ("" if a is None else f" (alpha {a:g})")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, alpha=1.0 - 0.6 * i / max(len(alphas), 1),
                        label=lab)
        ax.set_xscale("log")
        ax.set_xlabel("neurons steered (k)")
        ax.set_ylabel("share turned to the target" if what == "flip" else "accuracy on the steered words")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        ax.set_title(title or "steering in the live model", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path


def _all_positions_fns(S: InterventionSet) -> dict[str, Any]:
    """Hook functions applying ``S`` at every position (for generation, where inputs grow)."""
    def make(item: Intervention):
        if item.op == "resample":
            raise ConfigError("generation with a resample intervention is not supported")

        def fn(t: torch.Tensor) -> torch.Tensor:
            idx = torch.as_tensor(item.units, device=t.device)
            v = torch.as_tensor(item.values, device=t.device, dtype=t.dtype)
            cur = t.index_select(-1, idx)
            new = cur + v if item.op == "add" else v.expand_as(cur)
            return t.index_copy(t.dim() - 1, idx, new)

        return fn

    return {item.site: make(item) for item in S.items}


def generate_side_by_side(live: LiveModel, S: InterventionSet, prompts: Sequence[str], *, max_new_tokens: int = 20,
                          seed: int = 0, top_k: int = 50) -> list[dict[str, str]]:
    """Seeded sampled continuations of each prompt without and with ``S`` (at every position) for a
    decoder LM: ``[{"prompt", "plain", "steered"}]``."""
    from ..models.hooks import intervene

    head = live.head
    if getattr(head, "lm", None) != "causal":
        raise ConfigError("side-by-side generation needs a decoder language model (task=lm on a decoder)")
    model, tok = live.model, live.tokenizer
    fns = {live.site(k): v for k, v in _all_positions_fns(S).items()}
    out = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for p in prompts:
        enc = tok(p, return_tensors="pt").to(live.device)
        texts = []
        for steered in (False, True):
            torch.manual_seed(int(seed))
            kw = dict(max_new_tokens=int(max_new_tokens), do_sample=True, top_k=int(top_k), pad_token_id=pad)
            with torch.no_grad():
                if steered:
                    with intervene(model, fns):
                        ids = model.generate(**enc, **kw)
                else:
                    ids = model.generate(**enc, **kw)
            texts.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        out.append({"prompt": p, "plain": texts[0], "steered": texts[1]})
    return out


def write_generations(rows: Sequence[Mapping[str, str]], run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    j = run_dir / "generations.json"
    with open(j, "w", encoding="utf-8") as f:
        json.dump(list(rows), f, indent=1, ensure_ascii=False)
    md = run_dir / "generations.md"
    lines = ["| prompt | without the intervention | with the intervention |", "|---|---|---|"]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines += [f"| {esc(r['prompt'])} | {esc(r['plain'])} | {esc(r['steered'])} |" for r in rows]
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [j, md]
