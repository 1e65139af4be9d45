"""Model-independent hook-site names.

=====================  ===============================================================================
``embeddings``         input of the first block (== ``hidden_states[0]`` of transformers)
``layers.{i}``         output of block ``i`` (== ``hidden_states[i+1]``; for models with a final norm
                       such as GPT-2 and T5, transformers applies that norm to its last hidden state,
                       and so does extraction; hooks on the live block see the value before it)
``layers.{i}.mlp``     feed-forward neurons after the activation function: the input of the FFN's down
                       projection (BERT/RoBERTa ``output.dense``, GPT-2 ``mlp.c_proj``, T5 ``DenseReluDense.wo``)
``layers.{i}.attn``    attention output before its projection (input of the attention output projection;
                       heads are column ranges)
any module path        that module's output (e.g. ``encoder.layer.3.intermediate.dense``)
=====================  ===============================================================================

Encoder-decoders (T5) prefix the names with ``encoder.`` or ``decoder.`` (``encoder.layers.0``,
``decoder.layers.1.mlp``, ``encoder.embeddings``). The decoder reads the same token ids as the encoder
(``decoder_input_ids = input_ids``), so decoder rows align with the same words.

Specs (the ``sites`` config key): a preset (``all_layers`` = embeddings + every ``layers.{i}``;
``layers``; ``embeddings``; ``mlp``; ``attn``; ``all``), a range (``layers.0-3``, ``layers.2-4.mlp``,
``decoder.layers.0-1``), a site name, a module path, or a list of these.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..errors import ConfigError

PRESETS = ("all_layers", "layers", "embeddings", "mlp", "attn", "all")
STACKS = ("encoder", "decoder")

MLP_DOWN = ("output.dense", "mlp.c_proj", "mlp.down_proj", "mlp.fc2", "fc2", "ffn.lin2", "mlp.dense_4h_to_h",
            "feed_forward.w2", "mlp.fc_out", "mlp.w2")
ATTN_OUT = ("attention.output.dense", "attn.c_proj", "self_attn.o_proj", "self_attn.out_proj", "attention.out_lin",
            "attn.attention.out_proj", "attention.dense", "attn.out_proj", "self_attention.dense", "attn.o_proj")
_RANGE = re.compile(r"^(?:(encoder|decoder)\.)?layers\.(\d+)-(\d+)(?:\.(mlp|attn))?$")


@dataclass(frozen=True)
class Site:
    """One hook site. ``kind``: ``hidden`` (a ``hidden_states`` entry), ``input`` (input of
    ``module``), ``output`` (output of ``module``). ``stack``: None, ``encoder`` or ``decoder``."""

    name: str
    kind: str
    stack: str | None
    index: int | None  # hidden_states index (kind hidden); block index otherwise (or None)
    module: str  # module path: for hidden sites the block whose input (index 0) / output it is
    units: int | None


def _modules(model) -> dict[str, torch.nn.Module]:
    return dict(model.named_modules())


def _num_layers(config, stack: str | None) -> int | None:
    if stack == "decoder":
        for k in ("num_decoder_layers", "decoder_layers"):
            v = getattr(config, k, None)
            if isinstance(v, int):
                return v
    if stack == "encoder":
        for k in ("encoder_layers",):
            v = getattr(config, k, None)
            if isinstance(v, int):
                return v
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            return v
    return None


def find_blocks(model, stack: str | None = None) -> tuple[str, torch.nn.ModuleList]:
    """The module path and ModuleList of the transformer blocks (of ``stack`` for encoder-decoders)."""
    prefix = f"{stack}." if stack else ""
    n = _num_layers(model.config, stack)
    cands = []
    for path, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) and path.startswith(prefix):
            if stack is None and any(path.startswith(s + ".") for s in STACKS) and _is_enc_dec(model):
                continue
            cands.append((len(m) != n, path.count("."), path, m))
    if not cands:
        raise ConfigError(f"cannot find the transformer blocks of {type(model).__name__}; name sites by module path")
    cands.sort(key=lambda c: (c[0], c[1], c[2]))
    return cands[0][2], cands[0][3]


def _is_enc_dec(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _in_units(m: torch.nn.Module) -> int | None:
    if isinstance(m, torch.nn.Linear):
        return m.in_features
    w = getattr(m, "weight", None)
    if getattr(m, "nf", None) is not None and w is not None:  # transformers Conv1D: weight [in, out]
        return int(w.shape[0])
    return None


def _find_child(block: torch.nn.Module, names: Iterable[str]) -> str | None:
    mods = dict(block.named_modules())
    for n in names:
        if n in mods:
            return n
    return None


def _t5_like(block: torch.nn.Module, which: str) -> str | None:
    layers = getattr(block, "layer", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) >= 2:
        mods = dict(block.named_modules())
        if which == "mlp":
            for n in (f"layer.{len(layers) - 1}.DenseReluDense.wo", f"layer.{len(layers) - 1}.mlp.wo"):
                if n in mods:
                    return n
        else:
            if "layer.0.SelfAttention.o" in mods:
                return "layer.0.SelfAttention.o"
    return None


def site_table(model) -> dict[str, Site]:
    """Every named site of ``model`` (``embeddings``, ``layers.{i}``, ``.mlp``, ``.attn``), in model order."""
    cached = getattr(model, "_neurolab_sites", None)
    if cached is not None:
        return cached
    hidden = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0) or 0) or None
    out: dict[str, Site] = {}
    stacks = STACKS if _is_enc_dec(model) else (None,)
    for stack in stacks:
        pre = f"{stack}." if stack else ""
        bpath, blocks = find_blocks(model, stack)
        out[f"{pre}embeddings"] = Site(f"{pre}embeddings", "hidden", stack, 0, f"{bpath}.0", hidden)
        for i, block in enumerate(blocks):
            out[f"{pre}layers.{i}"] = Site(f"{pre}layers.{i}", "hidden", stack, i + 1, f"{bpath}.{i}", hidden)
        for i, block in enumerate(blocks):
            for which, names in (("attn", ATTN_OUT), ("mlp", MLP_DOWN)):
                rel = _t5_like(block, which) or _find_child(block, names)
                if rel is None:
                    continue
                mod = dict(block.named_modules())[rel]
                out[f"{pre}layers.{i}.{which}"] = Site(
                    f"{pre}layers.{i}.{which}", "input", stack, i, f"{bpath}.{i}.{rel}", _in_units(mod)
                )
    try:
        model._neurolab_sites = out
    except Exception:  # pragma: no cover
        pass
    return out


def _order(table: dict[str, Site], names: list[str]) -> list[str]:
    return [n for n in names if n in table]


def _preset(table: dict[str, Site], preset: str, stack: str | None) -> list[str]:
    names = [n for n, s in table.items() if stack is None or s.stack == stack]
    emb = [n for n in names if n.endswith("embeddings")]
    lay = [n for n in names if re.fullmatch(r"(?:\w+\.)?layers\.\d+", n)]
    mlp = [n for n in names if n.endswith(".mlp")]
    attn = [n for n in names if n.endswith(".attn")]
    if preset == "all_layers":
        by_stack = []
        for st in dict.fromkeys(table[n].stack for n in names):
            by_stack += [n for n in emb + lay if table[n].stack == st]
        return by_stack
    if preset == "layers":
        return lay
    if preset == "embeddings":
        return emb
    if preset == "mlp":
        return mlp
    if preset == "attn":
        return attn
    if preset == "all":
        out = []  # per stack: embeddings, then per block: layers.i.attn, layers.i.mlp, layers.i
        for st in dict.fromkeys(table[n].stack for n in names):
            out += [n for n in emb if table[n].stack == st]
            for n in lay:
                if table[n].stack != st:
                    continue
                out += [x for x in (n + ".attn", n + ".mlp") if x in table] + [n]
        return out
    raise AssertionError(preset)


def site_items(spec: Any) -> list[str]:
    """The items of a ``sites`` spec: a string (comma-separated names allowed), a list (nested lists and
    OmegaConf lists too) or None (no items). The one grammar of ``sites=``: each item is a preset
    (:data:`PRESETS`, optionally ``encoder.``/``decoder.``-prefixed), a range (:func:`parse_range`) or
    a name; :func:`resolve_sites` resolves items against a model, :func:`neurolab.data.select_sites`
    against a store's sites."""
    if spec is None:
        return []
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")] if "," in spec and not spec.startswith("[") else [spec.strip()]
        return [p for p in parts if p]
    from omegaconf import OmegaConf

    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, (list, tuple)):
        out = []
        for s in spec:
            out += site_items(s)
        return out
    raise ConfigError(f"sites={spec!r}: expected a preset name, a site name, a range or a list of these")


def parse_range(item: str) -> tuple[str | None, int, int, str | None] | None:
    """``(stack, first, last, "mlp" | "attn" | None)`` of a range item such as ``layers.0-3``,
    ``layers.2-4.mlp`` or ``decoder.layers.0-1``; None when ``item`` is not a range."""
    m = _RANGE.match(item)
    if not m:
        return None
    st, a, b, which = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if b < a:
        raise ConfigError(f"sites: range {item!r} is empty (start {a} > end {b})")
    return st, a, b, which


def range_names(stack: str | None, a: int, b: int, which: str | None) -> list[str]:
    return [(f"{stack}." if stack else "") + f"layers.{i}" + (f".{which}" if which else "") for i in range(a, b + 1)]


def resolve_sites(model, spec: Any) -> list[Site]:
    """Expand ``spec`` (preset / range / name / module path / list) into a list of :class:`Site`."""
    table = site_table(model)
    modules = None
    names: list[str] = []
    raw: dict[str, Site] = {}
    enc_dec = _is_enc_dec(model)
    for item in site_items(spec) or ["all_layers"]:
        stack, rest = None, item
        for st in STACKS:
            if enc_dec and item.startswith(st + "."):
                stack, rest = st, item[len(st) + 1 :]
        if rest in PRESETS:
            names += _preset(table, rest, stack)
            continue
        rng = parse_range(item)
        if rng is not None:
            st, a, b, which = rng
            for s in (list(STACKS) if enc_dec and st is None else [st]):
                for n in range_names(s, a, b, which):
                    if n not in table:
                        raise ConfigError(_unknown(n, table, f" (from the range {item!r})"))
                    names.append(n)
            continue
        if item in table:
            names.append(item)
            continue
        if enc_dec and (f"encoder.{item}" in table):
            raise ConfigError(
                f"sites: {item!r} is ambiguous in the encoder-decoder {type(model).__name__}; "
                f"use encoder.{item} or decoder.{item}"
            )
        if modules is None:
            modules = _modules(model)
        if item in modules and item:
            raw[item] = Site(item, "output", None, None, item, None)
            names.append(item)
            continue
        raise ConfigError(_unknown(item, table))
    seen: dict[str, None] = dict.fromkeys(names)
    return [table[n] if n in table else raw[n] for n in seen]


def _unknown(item: str, table: dict[str, Site], extra: str = "") -> str:
    names = list(table)
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    return (
        f"sites: unknown site {item!r}{extra}. Valid: presets {', '.join(PRESETS)}; ranges like layers.0-3 or "
        f"layers.0-3.mlp; sites {shown}; or a module path of the model (see model.named_modules())"
    )
