"""The live model's two costly operations against plain passes of the same model over the same words,
side by side in one run; prints ONE JSON object.

    python tests/benchmarks/bench_causal.py [--conllu EWT-test.conllu] [--max-sentences 300] [--reps 3]
                                            [--ranking ranking.json] [--no-uncached] [--device cpu]

* **ablation curve**: top / random (3 seeds) / bottom k at 1%, 5% and 10% of the ranking's neurons
  (15 sets) plus the unablated pass, in :meth:`LiveModel.run` (batches outer, each batch's prefix
  cached), against 16 plain forward passes (``model(input_ids, attention_mask)``, no hook, no grad)
  over the same batches. Rankings: ``all_layers`` (``--ranking``, else a seeded random ranking of the
  7 hidden sites: embeddings, layers.0-5) and ``upper_layers`` (a seeded random ranking of layers.3-5);
  ``all_layers`` is also run with the cache off (``cache=False``) to show what the cache saves.
  ``rerun_fraction``: the mean share of the blocks each set runs again.
* **first-order ranking**: gradient x (0 - activation) for every unit of the 7 hidden sites (2,688)
  and the 6 MLP sites (9,216) from one forward and one backward pass per batch, against one forward
  and one backward pass of the same head's loss with one gradient leaf (at ``embeddings``).

The task head is a tagger on layers.5 with seeded random weights (timing does not depend on its
training); MiniLM (the packaged all-MiniLM-L6-v2); the first ``--max-sentences`` sentences of EWT test.
Ratios are medians of per-round ratios; the order of the timed runs rotates from round to round.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DEFAULT_CONLLU = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-test.conllu"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conllu", default=str(DEFAULT_CONLLU))
    ap.add_argument("--max-sentences", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3, help="rounds (the order of the runs rotates between rounds)")
    ap.add_argument("--ranking", default=None, help="a ranking.json over the 7 hidden sites (default: random)")
    ap.add_argument("--no-uncached", action="store_true", help="skip the cache=False run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from neurolab.causal import LiveModel, TaggerHead, make_set
    from neurolab.causal.ablation import ORDERINGS, _columns
    from neurolab.causal.interventions import neurons_of_columns
    from neurolab.corpus import read_conllu
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.evaluation.base import sizes_from_config
    from neurolab.models.loading import load_model, packaged_minilm
    from neurolab.ranking import NeuronRanking

    corpus = read_conllu(args.conllu)
    classes = sorted({u for s in corpus.sentences for u in s.annotations["upos"] if u not in (None, "_")})
    rng = np.random.default_rng(0)
    head = TaggerHead(site="layers.5").set_weights(rng.normal(size=(len(classes), 384)), np.zeros(len(classes)), classes)
    model, tok = load_model({"name_or_path": str(packaged_minilm())})
    live = LiveModel.from_corpus(model, tok, head, corpus, {"test": np.arange(len(corpus))},
                                 ColumnConcept("upos", value="NOUN"), batch_tokens=args.batch_tokens, device=args.device)
    ms = args.max_sentences
    batches = live.batches("test", ms)
    live.examples("test", ms)
    words = int(sum(len(b.rows) for b in batches))
    tokens = int(sum(int(b.attention_mask.sum()) for b in batches))
    dev = live.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    hidden = ["embeddings"] + [f"layers.{i}" for i in range(6)]
    nps = {s: 384 for s in hidden}
    if args.ranking:
        r_all = NeuronRanking.from_json(args.ranking)
    else:
        r_all = NeuronRanking.from_scores(np.random.default_rng(1).random(2688), sites=hidden, neurons_per_site=nps,
                                          concept="upos=NOUN", method="random")
    upper = [f"layers.{i}" for i in (3, 4, 5)]
    r_up = NeuronRanking.from_scores(np.random.default_rng(2).random(3 * 384), sites=upper,
                                     neurons_per_site={s: 384 for s in upper}, concept="upos=NOUN", method="random")

    def curve_sets(r):
        sizes = sizes_from_config({"percentages": [1, 5, 10]}, r.total)
        sets = []
        for s in sizes:
            for o in ORDERINGS:
                for seed in ([0, 1, 2] if o == "random" else [0]):
                    cols = _columns(r, o, s.k, seed)
                    sets.append(make_set("zero", neurons_of_columns(cols, r.sites, r.neurons_per_site)))
        return sets

    sets_all, sets_up = curve_sets(r_all), curve_sets(r_up)
    n_blocks = len(live._blocks)

    def rerun_fraction(sets):
        return float(np.mean([(n_blocks - min(live.site_start(i.site) for i in S.items)) / n_blocks for S in sets]))

    def plain_passes(n):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                for b in batches:
                    model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev))
        sync()
        return time.perf_counter() - t

    def ours(sets, cache=True):
        sync()
        t = time.perf_counter()
        live.run(sets, "test", max_sentences=ms, cache=cache)
        sync()
        return time.perf_counter() - t

    mlp = [f"layers.{i}.mlp" for i in range(6)]
    fo_sites = {s: ("set", np.zeros(384)) for s in hidden}
    fo_sites.update({s: ("set", np.zeros(1536)) for s in mlp})

    def first_order():
        sync()
        t = time.perf_counter()
        live.first_order(fo_sites, split="test", objective="loss", max_sentences=ms)
        sync()
        return time.perf_counter() - t

    def forward_backward():
        sync()
        t = time.perf_counter()
        for b in batches:
            leaf = {}

            def add(x):
                leaf["d"] = torch.zeros_like(x, requires_grad=True)
                return x + leaf["d"]

            h, _ = live.forward(b, {"embeddings": add}, grad=True)
            h.loss.sum().backward()
        sync()
        return time.perf_counter() - t

    plain_passes(1)  # warm-up
    curve_jobs = [("plain_16_s", lambda: plain_passes(len(sets_all) + 1)), ("all_layers_s", lambda: ours(sets_all)),
                  ("upper_layers_s", lambda: ours(sets_up))]
    if not args.no_uncached:
        curve_jobs.append(("all_layers_uncached_s", lambda: ours(sets_all, cache=False)))
    grad_jobs = [("forward_backward_s", forward_backward), ("first_order_s", first_order)]
    reps = []
    for r in range(args.reps):  # the order rotates from round to round (the machine's load drifts)
        rep = {}
        for name, job in curve_jobs[r % len(curve_jobs):] + curve_jobs[:r % len(curve_jobs)]:
            rep[name] = job()
        for name, job in (grad_jobs if r % 2 == 0 else grad_jobs[::-1]):
            rep[name] = job()
        reps.append(rep)
    med = {k: float(np.median([r[k] for r in reps])) for k in reps[0]}
    ratio = lambda k, ref: float(np.median([r[k] / r[ref] for r in reps]))  # median of the per-round ratios
    out = {
        "data": {"corpus": Path(args.conllu).name, "sentences": len(live.sentences("test", ms)), "words": words,
                 "tokens": tokens, "batches": len(batches), "device": str(dev), "threads": torch.get_num_threads(),
                 "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "rounds": args.reps},
        "curve": {
            "sets": len(sets_all), "passes": len(sets_all) + 1, "plain_s": med["plain_16_s"],
            "all_layers": {"s": med["all_layers_s"], "ratio": ratio("all_layers_s", "plain_16_s"),
                           "rerun_fraction": rerun_fraction(sets_all), "ranking": r_all.method},
            "upper_layers": {"s": med["upper_layers_s"], "ratio": ratio("upper_layers_s", "plain_16_s"),
                             "rerun_fraction": rerun_fraction(sets_up)},
        },
        "first_order": {"neurons": 2688 + 9216, "sites": len(fo_sites), "s": med["first_order_s"],
                        "forward_backward_s": med["forward_backward_s"],
                        "ratio": ratio("first_order_s", "forward_backward_s")},
        "reps": reps,
    }
    if not args.no_uncached:
        out["curve"]["all_layers_uncached"] = {"s": med["all_layers_uncached_s"],
                                               "ratio": ratio("all_layers_uncached_s", "plain_16_s")}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
