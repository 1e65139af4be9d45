"""The planted tagger of the model-mode mask tests: a tiny random BERT whose tagger head reads only units
3, 11 and 20 of layers.1 (class c's logit is 2 z of unit PLANTED[c], z-scored), with the store-like data
(rows of layers.0 and layers.1) the method ranks."""
from __future__ import annotations

from tests.helpers.causal import planted_tagger, site_rows

PLANTED = [3, 11, 20]  # unit PLANTED[c] of layers.1 drives class c
SITES = ["layers.0", "layers.1"]
NPS = {"layers.0": 32, "layers.1": 32}


def planted_live_mask_data(repeat: int = 4):
    """(live model, ArrayData of both sites' rows of the train split); dev sentences are the second half."""
    from neurolab.causal import LiveModel

    model, tok, head, words, labels, splits = planted_tagger(repeat, PLANTED, double=False, off=0.0, own_labels=False,
                                                             held_out="dev", batch_tokens=256)
    live = LiveModel(model, tok, head, words=words, labels=labels, splits=splits, concept_name="tags",
                     concept_values={"A"}, batch_tokens=256)
    return live, site_rows(live, SITES, NPS)
