"""Settings checked before a verb does any work: one error naming each bad key, its value and what
is allowed.

:func:`validate` knows the keys each verb reads (:data:`RULES`, by verb) without importing the task
modules, so the command line refuses a bad value in a fraction of a second, before a model is
loaded, a store read or a probe trained. It also reports values a verb needs that were left unset
(``???`` in a config, e.g. ``concept.pattern`` of ``concept=regex``).

    >>> from neurolab.config import compose
    >>> validate(compose("probe", ["evaluation.percentages=[150]"]), "probe")  # doctest: +SKIP
    ConfigError: evaluation.percentages=[150]: 150 is not a percentage in (0, 100] ...

Checks that need the data (a site name, a label, a corpus file) stay with the code that reads them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from ..errors import ConfigError
from ..store.format import DTYPE_ALIASES
from ..store.integrity import NONFINITE_MODES, VERIFY_MODES

__all__ = ["validate", "RULES", "Rule", "VERB_GROUPS"]

EXTRACT = frozenset({"extract"})
READS_STORE = frozenset({"probe", "rank", "evaluate", "run", "analyze", "intervene", "explain"})
ALL = EXTRACT | READS_STORE
TRAINS = frozenset({"probe", "rank", "evaluate", "run"})
SPLITS = ("train", "dev", "test")
#: config groups whose unset (``???``) values a verb needs
VERB_GROUPS = {
    "extract": ("model", "corpus", "store", "extract", "trainer", "sites", "seed"),
    "probe": ("model", "corpus", "store", "extract", "concept", "data", "method", "probe", "regularization",
              "evaluation", "trainer", "sites", "seed"),
    "rank": ("model", "corpus", "store", "extract", "concept", "data", "method", "probe", "regularization",
             "evaluation", "trainer", "sites", "seed"),
    "evaluate": ("model", "corpus", "store", "extract", "concept", "data", "probe", "regularization", "evaluation",
                 "trainer", "sites", "seed", "ranking"),
    "run": ("model", "corpus", "store", "extract", "concept", "data", "method", "probe", "regularization",
            "evaluation", "trainer", "sites", "seed", "run"),
    "analyze": ("model", "corpus", "store", "extract", "concept", "data", "analysis", "probe", "regularization",
                "trainer", "sites", "seed"),
    "benchmark": ("model", "corpus", "store", "extract", "data", "probe", "regularization", "trainer", "seed",
                  "benchmark"),
    "intervene": ("model", "corpus", "store", "extract", "concept", "data", "probe", "regularization", "trainer",
                  "sites", "seed", "task", "ranking", "intervention"),
    "explain": ("model", "corpus", "store", "extract", "seed", "neuron"),
}


# -- value checks: each returns None when fine, else what is wrong ----------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(lo: int, what: str = "") -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if _is_int(v) and v >= lo else f"expected an integer ≥ {lo}{what}"
    return check


def _number_at_least(lo: float, what: str = "") -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo
        return None if ok else f"expected a number ≥ {lo:g}{what}"
    return check


def _one_of(options: Sequence[Any], norm: Callable[[Any], Any] = lambda v: v) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        try:
            ok = norm(v) in options
        except Exception:
            ok = False
        return None if ok else f"expected one of {', '.join('null' if o is None else str(o) for o in options)}"
    return check


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def wrapped(v: Any) -> str | None:
        if v is None:
            return None
        msg = check(v)
        return None if msg is None else f"{msg}, or null"
    return wrapped


def _seed(v: Any) -> str | None:
    return None if v is None or _is_int(v) else "expected an integer (the random seed)"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "expected true or false"


def _list(v: Any) -> list | None:
    if isinstance(v, (ListConfig, list, tuple)):
        return list(v)
    return None


def _percentages(v: Any) -> str | None:
    items = _list(v)
    if items is None:
        return "expected a list of percentages in (0, 100], e.g. [1, 5, 10]"
    for p in items:
        s = str(p).strip()
        try:
            x = float(s[:-1]) if s.endswith("%") else float(s)
        except ValueError:
            return f"{s!r} is not a number; expected percentages in (0, 100], e.g. [1, 5, 10]"
        if isinstance(p, bool) or not (0 < x <= 100):
            return f"{s} is not a percentage in (0, 100]"
    return None


def _counts(v: Any) -> str | None:
    items = _list(v)
    if items is None or not all(_is_int(c) and c >= 1 for c in items):
        return "expected a list of neuron counts ≥ 1, e.g. [10, 50]"
    return None


def _int_list(v: Any) -> str | None:
    items = _list(v)
    if items is None or not all(_is_int(c) for c in items):
        return "expected a list of integers"
    return None


def _split(v: Any) -> str | None:
    items = _list(v)
    try:
        fr = [float(x) for x in items] if items is not None and not any(isinstance(x, bool) for x in items) else None
    except (TypeError, ValueError):
        fr = None
    if fr is None or len(fr) != 3 or any(not math.isfinite(x) or x < 0 for x in fr) or not 0 < sum(fr) <= 1 + 1e-9:
        return "expected three non-negative fractions (train, dev, test) summing to at most 1, e.g. [0.8, 0.1, 0.1]"
    return None


def _devices(v: Any) -> str | None:
    if (_is_int(v) and (v >= 1 or v == -1)) or v == "auto" or (isinstance(v, str) and v.strip().isdigit()
                                                                  and int(v) >= 1):
        return None
    items = _list(v)
    if items is not None and items and all(_is_int(d) and d >= 0 for d in items):
        return None
    return "expected a number of devices ≥ 1, -1, auto, or a list of device ids"


def _share(v: Any) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
    return None if ok else "expected a fraction in (0, 1]"


def _lower(v: Any) -> Any:
    return str(v).lower() if v is not None else None


@dataclass(frozen=True)
class Rule:
    """``key`` (a dotted config path) is checked with ``check`` for the ``verbs`` that read it."""

    key: str
    check: Callable[[Any], str | None]
    verbs: frozenset = ALL


RULES: tuple[Rule, ...] = (
    Rule("seed", _seed),
    Rule("store.shard_size", _int_at_least(1, " (rows per shard)")),
    Rule("store.overwrite", _bool),
    Rule("store.verify", _one_of(VERIFY_MODES, _lower)),
    Rule("store.nonfinite", _one_of(NONFINITE_MODES, _lower)),
    Rule("extract.dtype", _one_of(("fp16", "bf16", "fp32"), lambda v: DTYPE_ALIASES.get(str(v).lower()))),
    Rule("extract.aggregation", _one_of(("first", "last", "mean", "max"))),
    Rule("extract.batch_tokens", _int_at_least(1, " (tokens per batch, padding counted)")),
    Rule("extract.max_batch_sentences", _int_at_least(1)),
    Rule("extract.stride", _optional(_int_at_least(1))),
    Rule("extract.sentence_rows", _one_of((None, "mean", "first", "last"),
                                          lambda v: None if v in (None, "none", "null", "") else v)),
    Rule("corpus.split", _split),
    Rule("trainer.devices", _devices),
    Rule("data.memory_budget_mb", _number_at_least(0, " (MB; 0 streams every batch from the store)"), READS_STORE),
    Rule("data.batch_size", _int_at_least(1), READS_STORE),
    Rule("data.chunk_rows", _int_at_least(1), READS_STORE),
    Rule("data.chunk_mb", _number_at_least(0, " (MB of float32 rows per block; 0: data.chunk_rows alone)"), READS_STORE),
    Rule("data.eval_chunk_rows", _int_at_least(0), READS_STORE),
    Rule("data.num_workers", _int_at_least(0), READS_STORE),
    Rule("data.normalize", _one_of(("zscore", "none"), lambda v: {True: "zscore", False: "none", None: "none"}.get(v, v)),
         READS_STORE),
    Rule("data.balance", _one_of(("none", "undersample", "class_weights"), lambda v: v or "none"), READS_STORE),
    Rule("data.unseen_labels", _one_of(("drop", "error", "other")), READS_STORE),
    Rule("data.sentence_pooling", _one_of(("mean", "first", "last")), READS_STORE),
    Rule("evaluation.percentages", lambda v: None if v is None else _percentages(v), TRAINS),
    Rule("evaluation.counts", lambda v: None if v is None else _counts(v), TRAINS),
    Rule("evaluation.split", _one_of(SPLITS), TRAINS),
)


def _max_epochs(cfg: Any) -> str | None:
    v = _select(cfg, "trainer.max_epochs")
    if v is _ABSENT:
        return None
    steps = _select(cfg, "trainer.max_steps")
    if _is_int(v) and v >= 1:
        return None
    if v in (-1, None) and _is_int(steps) and steps > 0:
        return None
    return (f"trainer.max_epochs={v!r}: expected an integer ≥ 1 (a probe trained for no epoch would rank neurons "
            "by its initial weights), or -1 with trainer.max_steps > 0")


def _pattern(cfg: Any) -> str | None:
    target = str(_select(cfg, "concept._target_", "") or "")
    if not target.endswith("RegexConcept"):
        return None
    v = _select(cfg, "concept.pattern")
    if v is _ABSENT or v is _MISSING or v is None or v == "":
        return ("concept.pattern is not set: concept=regex needs a regular expression, e.g. "
                "concept.pattern='^[A-Z]'")
    try:
        re.compile(str(v))
    except re.error as e:
        return f"concept.pattern={v!r}: not a valid regular expression ({e})"
    return None


def _corpus(cfg: Any) -> str | None:
    if _select(cfg, "corpus") is _ABSENT:
        return None
    files = [_select(cfg, f"corpus.{k}", None) for k in ("path", "train", "dev", "test")]
    if all(f in (None, "", _MISSING, _ABSENT) for f in files):
        return "corpus.path is not set: give corpus.path=... (a CoNLL-U file, a folder of them, or a list)"
    fmt = _select(cfg, "corpus.format", "conllu")
    if fmt in ("parallel", "sentence_labels") and files[0] not in (None, "", _MISSING):
        if _select(cfg, "corpus.labels", None) in (None, "", _MISSING):
            return f"corpus.labels is not set: corpus.format={fmt} needs one label file per sentence file"
    return None


#: checks that look at several keys
CROSS_CHECKS: dict[str, tuple[Callable[[Any], str | None], frozenset]] = {
    "trainer.max_epochs": (_max_epochs, TRAINS),
    "concept.pattern": (_pattern, READS_STORE),
    "corpus.path": (_corpus, ALL),
}

_ABSENT = object()
_MISSING = object()


class _Unresolvable(Exception):
    pass


def _select(cfg: Any, key: str, default: Any = _ABSENT) -> Any:
    try:
        v = OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
    except MissingMandatoryValue:
        return _MISSING
    except (InterpolationResolutionError, OmegaConfBaseException) as e:
        raise _Unresolvable(str(e).splitlines()[0]) from None
    if isinstance(v, (DictConfig, ListConfig)):
        return v
    return v


def _show(v: Any) -> str:
    if isinstance(v, (ListConfig, DictConfig)):
        v = OmegaConf.to_container(v, resolve=True)
    return "null" if v is None else (f"{v!r}" if isinstance(v, str) else str(v))


def problems(cfg: Any, verb: str) -> list[str]:
    """Every problem of ``cfg`` for ``verb`` (empty when it is fine)."""
    out: list[str] = []
    for rule in RULES:
        if verb not in rule.verbs:
            continue
        try:
            v = _select(cfg, rule.key)
        except _Unresolvable as e:
            out.append(f"{rule.key}: cannot be resolved ({e})")
            continue
        if v is _ABSENT:
            continue
        if v is _MISSING:
            continue  # reported with the other unset values below
        msg = rule.check(v)
        if msg:
            out.append(f"{rule.key}={_show(v)}: {msg}")
    for key, (check, verbs) in CROSS_CHECKS.items():
        if verb in verbs:
            try:
                msg = check(cfg)
            except _Unresolvable as e:
                msg = f"{key}: cannot be resolved ({e})"
            if msg:
                out.append(msg)
    groups = VERB_GROUPS.get(verb, ())
    try:
        missing = sorted(OmegaConf.missing_keys(cfg)) if isinstance(cfg, DictConfig) else []
    except Exception:  # pragma: no cover - very old omegaconf
        missing = []
    for key in missing:
        if key.split(".")[0].split("[")[0] not in groups or key == "concept.pattern":
            continue
        out.append(f"{key} is not set (give {key}=...)")
    return out


def validate(cfg: Any, verb: str) -> None:
    """Raise :class:`~neurolab.errors.ConfigError` listing every bad or unset setting of ``verb``."""
    found = problems(cfg, verb)
    if found:
        raise ConfigError("; ".join(found))
