"""Corpus generation on MiniLM against known optima: for length 1 an exhaustive pass over the
vocabulary gives each neuron's true optimum; for length 3 the best corpus 3-gram of EWT dev (scored
in isolation the same way) is the bar. Neurons: seeded draws from layers.0-2 (block outputs and
feed-forward neurons) whose optimum is clearly positive. Slow; the figures are printed (``-s``)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from neurolab.models.loading import load_model

    return load_model({"name_or_path": str(minilm_dir)})


def _neurons(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sites = ["layers.0", "layers.0.mlp", "layers.1", "layers.1.mlp", "layers.2", "layers.2.mlp"]
    out = []
    for _ in range(n):
        s = sites[int(rng.integers(len(sites)))]
        out.append((s, int(rng.integers(1536 if s.endswith("mlp") else 384))))
    return out


def test_length_one_reaches_the_exhaustive_optimum(minilm, one_thread):
    from neurolab.causal.generation import exhaustive_best, generate_inputs

    model, tok = minilm
    cand = _neurons(16)
    best = exhaustive_best(model, tok, cand)
    chosen = [(n, b[0]) for n, b in zip(cand, best) if b[0].activation > 0.5][:10]
    assert len(chosen) == 10
    gen = generate_inputs(model, tok, [n for n, _ in chosen], length=1, seed=0)  # the defaults: 300 steps, 8 restarts
    ratios = [g[0].activation / b.activation for g, (_, b) in zip(gen, chosen)]
    for (n, b), g, r in zip(chosen, gen, ratios):
        print(f"{n[0]}:{n[1]}  optimum {b.text!r} {b.activation:.3f}  generated {g[0].text!r} {g[0].activation:.3f}"
              f"  ratio {r:.3f}")
    hits = sum(r >= 0.95 for r in ratios)
    print(f"reached 95% of the optimum: {hits} of {len(ratios)}; median ratio {np.median(ratios):.3f}")
    assert all(r <= 1 + 1e-6 for r in ratios)  # nothing beats the exhaustive optimum
    assert hits >= 8 and np.median(ratios) >= 0.95


def test_length_three_against_the_best_corpus_trigram(minilm, ewt_dev, one_thread):
    from neurolab.causal.generation import best_ngrams, generate_inputs
    from neurolab.corpus import read_conllu

    model, tok = minilm
    sents = [s.words for s in read_conllu(ewt_dev).sentences[:400]]
    neurons = _neurons(5, seed=1)
    gen = generate_inputs(model, tok, neurons, length=3, steps=60, restarts=8, lr=0.3, seed=0, eval_every=3)
    wins = 0
    for n, g in zip(neurons, gen):
        (c,) = best_ngrams(model, tok, n, sents, 3)
        wins += g[0].activation >= c.activation
        print(f"{n[0]}:{n[1]}  corpus {c.text!r} {c.activation:.3f}  generated {g[0].text!r} {g[0].activation:.3f}")
    print(f"generated >= best corpus 3-gram: {wins} of {len(neurons)}")
    assert wins >= 3
