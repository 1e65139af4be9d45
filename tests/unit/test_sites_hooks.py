"""Hook-site names, presets, ranges, errors; capture and intervene on the live model."""
from __future__ import annotations

import pytest
import torch

from neurolab.errors import ConfigError
from neurolab.models.hooks import ablate, capture, clamp, gate, intervene, steer
from neurolab.models.sites import resolve_sites
from tests.helpers.extraction import tiny_model


@pytest.fixture(scope="module")
def models():
    return {k: tiny_model(k)[0] for k in ("bert", "gpt2", "t5")}


def names(model, spec):
    return [s.name for s in resolve_sites(model, spec)]


def test_presets_and_ranges(models):
    bert, gpt2, t5 = models["bert"], models["gpt2"], models["t5"]
    assert names(bert, "all_layers") == ["embeddings", "layers.0", "layers.1"]
    assert names(gpt2, "mlp") == ["layers.0.mlp", "layers.1.mlp"]
    assert names(bert, "attn") == ["layers.0.attn", "layers.1.attn"]
    assert names(bert, "layers.0-1.mlp") == ["layers.0.mlp", "layers.1.mlp"]
    assert names(bert, ["layers.1", "embeddings", "layers.1"]) == ["layers.1", "embeddings"]
    assert names(bert, "all") == ["embeddings", "layers.0.attn", "layers.0.mlp", "layers.0",
                                  "layers.1.attn", "layers.1.mlp", "layers.1"]
    assert names(t5, "all_layers") == ["encoder.embeddings", "encoder.layers.0", "encoder.layers.1",
                                       "decoder.embeddings", "decoder.layers.0", "decoder.layers.1", "decoder.layers.2"]
    assert names(t5, "decoder.mlp") == ["decoder.layers.0.mlp", "decoder.layers.1.mlp", "decoder.layers.2.mlp"]
    assert names(t5, "encoder.layers.0-1") == ["encoder.layers.0", "encoder.layers.1"]
    s = resolve_sites(bert, ["encoder.layer.0.intermediate.dense"])[0]
    assert (s.kind, s.module) == ("output", "encoder.layer.0.intermediate.dense")
    units = {s.name: s.units for s in resolve_sites(gpt2, "all")}
    assert units["layers.0.mlp"] == 4 * 32 and units["layers.0.attn"] == 32 and units["layers.0"] == 32


@pytest.mark.parametrize("bad", ["layers.7", "layers.0-9", "layers.0.ffn", "nonsense"])
def test_unknown_site_lists_valid_names(models, bad):
    with pytest.raises(ConfigError) as e:
        resolve_sites(models["bert"], bad)
    msg = str(e.value)
    assert "unknown site" in msg and "layers.1.mlp" in msg and "all_layers" in msg


def test_encoder_decoder_needs_prefix(models):
    with pytest.raises(ConfigError, match="encoder.layers.0 or decoder.layers.0"):
        resolve_sites(models["t5"], "layers.0")


def _inputs(kind):
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (2, 6))
    kw = {"input_ids": ids}
    if kind == "t5":
        kw["decoder_input_ids"] = ids
    return kw


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_capture_matches_hidden_states_and_hand_hooks(models, kind):
    model = models[kind]
    pre = "encoder." if kind == "t5" else ""
    act = {"bert": "encoder.layer.1.intermediate.intermediate_act_fn", "gpt2": "h.1.mlp.act",
           "t5": "encoder.block.1.layer.1.DenseReluDense.act"}[kind]
    got = {}
    h = model.get_submodule(act).register_forward_hook(lambda m, a, o: got.__setitem__("act", o.clone()))
    try:
        with torch.no_grad(), capture(model, [f"{pre}embeddings", f"{pre}layers.0", f"{pre}layers.1.mlp"]) as cap:
            out = model(**_inputs(kind), output_hidden_states=True)
    finally:
        h.remove()
    hs = out.encoder_hidden_states if kind == "t5" else out.hidden_states
    torch.testing.assert_close(cap[f"{pre}embeddings"], hs[0])
    torch.testing.assert_close(cap[f"{pre}layers.0"], hs[1])
    torch.testing.assert_close(cap[f"{pre}layers.1.mlp"], got["act"])


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5"])
def test_intervene_ablate_clamp_steer_gate(models, kind):
    model = models[kind]
    pre = "encoder." if kind == "t5" else ""
    site = f"{pre}layers.0.mlp"
    with torch.no_grad():
        base = model(**_inputs(kind)).last_hidden_state
        with intervene(model, {site: ablate([1, 3])}), capture(model, [site]) as cap:
            out = model(**_inputs(kind)).last_hidden_state
        assert torch.all(cap[site][..., [1, 3]] == 0)
        assert not torch.allclose(out, base)
        with intervene(model, {site: clamp([2], 5.0)}), capture(model, [site]) as cap:
            model(**_inputs(kind))
        assert torch.all(cap[site][..., 2] == 5.0)
        with capture(model, [f"{pre}layers.0"]) as c0:
            model(**_inputs(kind))
        d = torch.ones(32)
        with intervene(model, {f"{pre}layers.0": steer(d, alpha=2.0)}), capture(model, [f"{pre}layers.0"]) as c1:
            model(**_inputs(kind))
        torch.testing.assert_close(c1[f"{pre}layers.0"], c0[f"{pre}layers.0"] + 2.0)
        with intervene(model, {site: gate(torch.zeros(1), units=[0])}), capture(model, [site]) as cap:
            model(**_inputs(kind))
        assert torch.all(cap[site][..., 0] == 0)
    # hooks are gone after the with-block
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs(kind)).last_hidden_state, base)
