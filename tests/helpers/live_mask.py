"""The planted tagger of the model-mode mask tests: a tiny random BERT whose tagger head reads only units
3, 11 and 20 of layers.1 (class c's logit is 2 z of unit PLANTED[c], z-scored), with the store-like data
(rows of layers.0 and layers.1) the method ranks."""
from __future__ import annotations

import numpy as np

from tests.helpers.causal import TAGS, random_labels, sentences, tiny_lm

PLANTED = [3, 11, 20]  # unit PLANTED[c] of layers.1 drives class c
SITES = ["layers.0", "layers.1"]
NPS = {"layers.0": 32, "layers.1": 32}


def planted_live_mask_data(repeat: int = 4):
    """(live model, ArrayData of both sites' rows of the train split); dev sentences are the second half."""
    from neurolab.causal import LiveModel, TaggerHead

    from neurolab.data import ArrayData

    model, tok = tiny_lm("bert", head=False)
    words = sentences(repeat)
    n = len(words)
    splits = {"train": np.arange(0, n // 2), "dev": np.arange(n // 2, n)}
    dummy = TaggerHead(site="layers.1").set_weights(np.zeros((3, 32)), np.zeros(3), TAGS)
    probe = LiveModel(model, tok, dummy, words=words, labels=random_labels(words), splits=splits, batch_tokens=256)
    _, a = probe.activations(["layers.1"], "train")
    mu, sd = a["layers.1"].mean(0), a["layers.1"].std(0)
    W = np.zeros((3, 32))
    for c, u in enumerate(PLANTED):
        W[c, u] = 2.0
    head = TaggerHead(site="layers.1").set_weights(W, np.zeros(3), TAGS, mean=mu, std=sd)
    live = LiveModel(model, tok, head, words=words, labels=random_labels(words), splits=splits, concept_name="tags",
                     concept_values={"A"}, batch_tokens=256)
    rows, acts = live.activations(SITES, "train")
    X = np.concatenate([acts[s] for s in SITES], axis=1)
    y = np.array([TAGS.index(live.labels[r]) for r in rows])
    data = ArrayData({"train": (X, y), "val": (X[:10], y[:10]), "test": (X[:10], y[:10])}, class_names=TAGS,
                     sites=SITES, neurons_per_site=NPS, concept="tags=A")
    return live, data
