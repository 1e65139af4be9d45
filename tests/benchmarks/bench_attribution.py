"""Integrated gradients (``method=attribution``) against plain forward + backward passes of the same
model over the same words, side by side in one run; prints ONE JSON object.

    python tests/benchmarks/bench_attribution.py [--conllu EWT-test.conllu] [--words 1000] [--steps 20]
                                                 [--sites layers.2.mlp embeddings] [--reps 2] [--device cpu]

* **attribution**: :func:`neurolab.causal.attribution.integrated_gradients` at ``--steps`` left-Riemann
  points for every word of the first sentences of EWT test holding ``--words`` words (positions =
  target: each word's own path), one site at a time, ``--sentences-per-pass`` sentences per pass
  (``copy_fill``: the share of (example, step) copies that explain a word; the rest is idle);
* **naive**: the same, one word per pass (its steps as one batch), no prefix cache: the loop a
  per-example library runs (``naive_per_word_ms``, over ``--naive-words`` words);
* **plain**: ``--steps`` forward + backward passes of the same batches (the whole model, no cache),
  the gradient of the summed gold-class probability of every word with respect to the same site.

**generation**: one input of 5 tokens for ``--generate-neuron`` (``--generate-steps`` steps, 8 restarts).

The first counts ``steps`` passes per *word* (each word's baseline differs), the second ``steps``
passes per *batch of sentences* (every word at once, which integrated gradients cannot do: that
would attribute the sum of all the words' predictions, not each word's). ``ratio`` = attribution
time / plain time; ``per_word_ms`` the attribution time per word. The task head is a tagger on
layers.5 with seeded random weights (timing does not depend on its training), MiniLM (the packaged
all-MiniLM-L6-v2). Ratios are medians over rounds; the order of the timed runs alternates.
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
    ap.add_argument("--words", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sites", nargs="+", default=["layers.2.mlp", "embeddings"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--chunk-tokens", type=int, default=4096)
    ap.add_argument("--sentences-per-pass", type=int, default=1)
    ap.add_argument("--naive-words", type=int, default=100,
                    help="also time one word at a time (no cache, one pass per word holding its steps, as a "
                         "per-example loop would) over the first sentences holding this many words (0: skip)")
    ap.add_argument("--generate-steps", type=int, default=300,
                    help="also time one generated input (length 5, 8 restarts) for --generate-neuron (0: skip)")
    ap.add_argument("--generate-neuron", default="layers.2.mlp:978",
                    help="the neuron of the generation timing")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from neurolab.causal import LiveModel, TaggerHead
    from neurolab.causal.attribution import integrated_gradients
    from neurolab.corpus import read_conllu
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.models.loading import load_model, packaged_minilm

    corpus = read_conllu(args.conllu)
    lengths = np.cumsum([len(s) for s in corpus.sentences])
    n_sent = int(np.searchsorted(lengths, args.words) + 1)
    classes = sorted({u for s in corpus.sentences for u in s.annotations["upos"] if u not in (None, "_")})
    rng = np.random.default_rng(0)
    head = TaggerHead(site="layers.5").set_weights(rng.normal(size=(len(classes), 384)) * 0.05,
                                                   np.zeros(len(classes)), classes)
    model, tok = load_model({"name_or_path": str(packaged_minilm())})
    live = LiveModel.from_corpus(model, tok, head, corpus, {"test": np.arange(len(corpus))},
                                 ColumnConcept("upos"), batch_tokens=args.batch_tokens, device=args.device)
    batches = live.batches("test", n_sent)
    ex = live.examples("test", n_sent)
    dev = live.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def plain(site: str) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            for b in batches:
                leaf = {}

                def fn(t):
                    d = torch.zeros_like(t, requires_grad=True)
                    leaf["d"] = d
                    return t + d

                h, _ = live.forward(b, {site: fn}, grad=True)
                torch.autograd.grad(h.prob[0].sum(), [leaf["d"]])
        sync()
        return time.perf_counter() - t0

    def attribution(site: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        res = integrated_gradients(live, [site], split="test", max_sentences=n_sent, steps=args.steps,
                                   chunk_tokens=args.chunk_tokens, sentences_per_pass=args.sentences_per_pass)
        sync()
        return time.perf_counter() - t0, res.completeness_error()

    def naive(site: str) -> tuple[float, int]:
        n_s = int(np.searchsorted(lengths, args.naive_words) + 1)
        one = LiveModel.from_corpus(model, tok, head, corpus, {"test": np.arange(len(corpus))}, ColumnConcept("upos"),
                                    batch_tokens=args.batch_tokens, max_batch_sentences=1, device=args.device)
        n = len(one.examples("test", n_s).ids)
        t0 = time.perf_counter()
        integrated_gradients(one, [site], split="test", max_sentences=n_s, steps=args.steps, chunk_tokens=1 << 30,
                             max_copies=args.steps, cache=False)
        sync()
        return time.perf_counter() - t0, n

    waste = []
    for b in live.corpus.batches(live.sentences("test", n_sent), batch_tokens=args.batch_tokens,
                                 max_batch_sentences=args.sentences_per_pass):
        sent = live.corpus.row_sentence[b.rows]
        counts = np.bincount(np.searchsorted(b.sentences, sent), minlength=len(b.sentences))
        waste.append((counts.max() * len(counts), counts.sum()))
    out: dict = {"model": "all-MiniLM-L6-v2", "device": str(dev), "threads": torch.get_num_threads(),
                 "sentences": n_sent, "words": int(len(ex.ids)),
                 "tokens": int(sum(int(b.attention_mask.sum()) for b in batches)), "steps": args.steps,
                 "chunk_tokens": args.chunk_tokens, "sentences_per_pass": args.sentences_per_pass,
                 "batches": len(batches),
                 "words_per_sentence": round(len(ex.ids) / n_sent, 2),
                 "copy_fill": round(sum(w for _, w in waste) / max(1, sum(c for c, _ in waste)), 3), "sites": {}}
    for site in args.sites:
        ta, tp, errs = [], [], []
        for r in range(args.reps):
            if r % 2 == 0:
                t, e = attribution(site)
                ta.append(t)
                errs.append(e)
                tp.append(plain(site))
            else:
                tp.append(plain(site))
                t, e = attribution(site)
                ta.append(t)
                errs.append(e)
        ratios = [a / p for a, p in zip(ta, tp)]
        out["sites"][site] = {"attribution_s": round(float(np.median(ta)), 3), "plain_s": round(float(np.median(tp)), 3),
                              "ratio": round(float(np.median(ratios)), 2),
                              "per_word_ms": round(1000 * float(np.median(ta)) / len(ex.ids), 2),
                              "completeness_error": round(float(errs[0]), 5)}
        if args.naive_words:
            tn, nn = naive(site)
            out["sites"][site]["naive_per_word_ms"] = round(1000 * tn / nn, 2)
            out["sites"][site]["naive_words"] = nn
    if args.generate_steps:
        from neurolab.causal.generation import generate_inputs, parse_neuron

        neuron = parse_neuron(args.generate_neuron)
        t0 = time.perf_counter()
        (gen,) = generate_inputs(model, tok, [neuron], length=5, steps=args.generate_steps, restarts=8)
        sync()
        out["generation"] = {"neuron": args.generate_neuron, "length": 5, "steps": args.generate_steps, "restarts": 8,
                             "seconds": round(time.perf_counter() - t0, 2), "best": gen[0].text,
                             "activation": round(gen[0].activation, 4)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
