"""The live model of a run, from its composed config: ``build_live(cfg)`` / ``live_factory(cfg)``.

What it reads: ``cfg.task`` (the head, ``_target_``), ``cfg.model`` (loaded with the head's
transformers head, if any), ``cfg.corpus`` (the sentences and their split), ``cfg.concept`` (the
labels; a ``value`` names the concept's words), ``cfg.store`` (the store: the tagger's training rows,
the aggregation and windowing of its rows, and the model it was extracted with, checked against the
live model), ``cfg.data`` / ``cfg.sites`` for the head's training data, ``cfg.seed``, and the run
directory (``paths.output_dir``), where a newly trained head is saved as ``task/<kind>.safetensors``.

    >>> from neurolab.methods.base import RunContext                     # doctest: +SKIP
    >>> context = RunContext(cfg=cfg, live=live_factory(cfg))            # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, NeurolabError
from .heads import ClassifierHead, LMHead, default_head_site
from .live import LiveModel, base_concept

log = logging.getLogger(__name__)

__all__ = ["build_live", "live_factory", "open_run_store"]


def open_run_store(cfg):
    """The store at ``cfg.store.dir`` when one is there, else None."""
    from ..store import ActivationStore

    sdir = cfg.get("store", {}).get("dir") if cfg.get("store") is not None else None
    if sdir and (Path(str(sdir)) / "manifest.json").exists():
        return ActivationStore.open(sdir)
    return None


def _model_config(mcfg):
    from transformers import AutoConfig

    from ..models.loading import resolve_name_or_path

    name = mcfg.get("name_or_path") if mcfg is not None else None
    if not name:
        raise ConfigError("model.name_or_path is not set (a hub id or a local folder)")
    kw: dict[str, Any] = {"trust_remote_code": bool(mcfg.get("trust_remote_code") or False)}
    if mcfg.get("revision"):
        kw["revision"] = str(mcfg.get("revision"))
    try:
        return AutoConfig.from_pretrained(resolve_name_or_path(str(name)), **kw)
    except Exception as e:
        raise ConfigError(f"model.name_or_path={name!r}: cannot load a model config ({type(e).__name__})") from None


def build_live(cfg, *, store=None, corpus=None, splits=None, concept=None, model=None, tokenizer=None) -> LiveModel:
    """The run's :class:`LiveModel` (see the module docstring); the keyword arguments replace what
    would be read or loaded from ``cfg``."""
    from hydra.utils import instantiate

    from ..config import output_dir
    from ..corpus import load_corpus
    from ..models.loading import load_model

    tcfg = cfg.get("task")
    if tcfg is None or not hasattr(tcfg, "get") or not tcfg.get("_target_"):
        raise ConfigError("the live model needs a task head: task=tagger (a head trained on the store), "
                          "task=lm (the model's own LM head) or task=classifier")
    head = instantiate(tcfg)
    if concept is None and cfg.get("concept") is not None:
        concept = instantiate(cfg.concept)
    if corpus is None:
        corpus, splits = load_corpus(cfg.corpus)
    if store is None:
        store = open_run_store(cfg)
    run_dir = output_dir(cfg)
    seed = int(cfg.get("seed") or 0)
    if model is None:
        mconf = _model_config(cfg.get("model"))
        if isinstance(head, LMHead):
            head.resolve(mconf)
        if isinstance(head, ClassifierHead) and head.use_own(mconf):
            head.model_head = "sequence_classification"
        model, tokenizer = load_model(cfg.model, head=head.model_head)
    if isinstance(head, ClassifierHead) and head.model_head == "sequence_classification":
        head.set_own(model)
    trained_here = False
    head_concept = getattr(head, "concept", None)
    if head_concept is not None and not hasattr(head_concept, "labels"):
        head_concept = instantiate(head_concept)
    if hasattr(head, "fitted") and not head.fitted:
        if head.path:
            head.load(head.path)
        else:
            if store is None:
                raise ConfigError(f"task={head.kind} trains a head on the store's rows: give store.dir=<a store> "
                                  "(or task.path=<a saved head>)")
            head.site = head.site or default_head_site(list(store.sites))
            if head.site not in list(store.sites):
                raise ConfigError(f"task.site={head.site!r} is not a site of the store {store.path} "
                                  f"(sites {list(store.sites)})")
            from ..data import build_datamodule

            dm = build_datamodule(cfg, store=store, sites=[head.site],
                                  concept=head_concept if head_concept is not None else base_concept(concept))
            dm.setup()
            log.info("training the %s head on %s (%d training rows of %s)", head.kind, head.site,
                     len(dm.row_ids("train")), store.path)
            head.fit(dm, cfg=cfg, run_dir=run_dir, seed=seed)
            trained_here = True
    meta = getattr(store, "meta", None) or {}
    ext = cfg.get("extract") or {}
    mcfg = cfg.get("model") or {}
    labels_concept = concept
    if isinstance(head, LMHead) and concept is not None:
        try:
            base_concept(concept).labels(corpus)
        except NeurolabError as e:
            log.warning("task=lm: the concept's labels are not available (%s); the concept's words are unknown", e)
            labels_concept = None
    live = LiveModel.from_corpus(
        model, tokenizer, head, corpus, splits, labels_concept, head_concept=head_concept,
        aggregation=str(meta.get("aggregation") or ext.get("aggregation") or "mean"),
        max_length=meta.get("max_length") or mcfg.get("max_length"),
        stride=meta.get("stride") or ext.get("stride"),
        batch_tokens=head.batch_tokens, max_batch_sentences=head.max_batch_sentences, device=head.device,
        seed=seed, model_cfg=mcfg)
    if store is not None:
        live.check_store(store)
    if trained_here and getattr(head, "save_head", False):
        path = head.save(Path(run_dir) / "task" / f"{head.kind}.safetensors")
        log.info("task head saved to %s (reuse it with task.path=%s)", path, path)
    return live


def live_factory(cfg, **kw) -> Callable[[], LiveModel]:
    """A callable building the live model on first call and returning the same one afterwards
    (what ``RunContext(live=...)`` takes)."""
    box: dict[str, LiveModel] = {}

    def live() -> LiveModel:
        if "live" not in box:
            box["live"] = build_live(cfg, **kw)
        return box["live"]

    return live
