"""What a reader checks before it trusts a store, and how often.

Every :meth:`ActivationStore.open <neurolab.store.ActivationStore.open>` checks, whatever the setting:

- the manifest's structure: known fields, a self-digest (stores written since the digest was added),
  sites and units, shard entries in order with contiguous row ranges, shard directories that are
  plain names inside ``shards/`` (a manifest naming ``../elsewhere`` is refused), file names that
  are the store's own.

With ``store.verify=once`` (default) or ``always`` it also reads every shard file once:

- the ``.npy`` header against the manifest (dtype, shape, Fortran order, exact file size),
- the sha256 of every file against the manifest,
- each ``shard.json`` against the manifest (and its first / last sentence against the index),
- non-finite values (inf, nan) in the activations, counted per file with the first one located.

``once`` remembers a clean result in a marker file (``.verified.json`` in the store, or in the
cache folder when the store is read-only) keyed by the sha256 of ``manifest.json``: a later open
re-reads only the files whose size, modification time or inode changed since (or that were modified
less than :data:`SLACK_NS` before they were checked, since file times are coarse). ``always`` reads
everything on every open; ``never`` skips the reading (headers are still checked when rows are read).

Non-finite activations are refused with the file, row and unit named (``store.nonfinite=error``,
default) or counted and reported (``store.nonfinite=warn``: a warning and the counts in
:attr:`ActivationStore.verification <neurolab.store.ActivationStore.verification>`).

A task applies the run's settings with :func:`store_checks` (the verbs do it in their common
wrapper)::

    >>> from neurolab.store.integrity import store_checks
    >>> with store_checks({"store": {"verify": "always"}}):   # doctest: +SKIP
    ...     store = ActivationStore.open(path)                 # hashes every file
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..errors import ConfigError
from .format import (
    DTYPES,
    INDEX_FILE,
    MANIFEST,
    SHARD_META,
    SHARDS,
    StoreError,
    read_npy_header,
    site_filename,
    write_json_atomic,
)

log = logging.getLogger(__name__)

VERIFY_MODES = ("always", "once", "never")
NONFINITE_MODES = ("error", "warn")
#: the marker of a verified store, inside the store directory
MARKER = ".verified.json"
#: the lock file of writers, inside the store directory
LOCK = ".lock"
MARKER_FORMAT = "neurolab-store-verification-1"
#: a file modified less than this before it was checked is checked again at the next open: file
#: times are coarse (a clock tick, or 1-2 s on some file systems), so a change right after the
#: check could leave the time unchanged
SLACK_NS = 2_000_000_000
#: fields of a manifest (a field outside this set means the manifest is damaged or not ours)
MANIFEST_FIELDS = frozenset({"schema_version", "format", "complete", "identity", "sites", "neurons_per_site", "dtype",
                             "num_tokens", "num_shards", "shards", "meta", "digest"})
MANIFEST_FORMAT = "neurolab-activation-store"
SHARD_FIELDS = frozenset({"id", "dir", "start", "rows", "files"})
SHARD_META_FIELDS = frozenset({"shard_id", "rows", "first_sentence", "last_sentence", "files", "fp16_overflow"})
_DIR_NAME = re.compile(r"^[0-9A-Za-z_-][0-9A-Za-z._-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: bit mask of the exponent of each storage type (all ones: inf or nan)
_EXPONENT = {"fp16": (np.uint16, 0x7C00), "bf16": (np.uint16, 0x7F80), "fp32": (np.uint32, 0x7F800000)}
_CHUNK = 1 << 22


# -- the policy --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """How stores are checked when they are opened (see the module docstring)."""

    verify: str = "once"
    nonfinite: str = "error"


_POLICY = Policy()


def policy() -> Policy:
    """The checks :meth:`ActivationStore.open` applies when its caller does not say."""
    return _POLICY


def set_policy(verify: str | None = None, nonfinite: str | None = None) -> Policy:
    """Set the process-wide checks (``None`` keeps a setting); returns the previous policy."""
    global _POLICY
    old = _POLICY
    _POLICY = replace(old, **{k: v for k, v in (("verify", check_verify_mode(verify) if verify is not None else None),
                                                 ("nonfinite", check_nonfinite_mode(nonfinite) if nonfinite is not None
                                                  else None)) if v is not None})
    return old


def check_verify_mode(mode: Any, key: str = "store.verify") -> str:
    if isinstance(mode, bool):  # ActivationStore.open(path, verify=True) as before: check everything
        return "always" if mode else "never"
    m = str(mode).lower()
    if m not in VERIFY_MODES:
        raise ConfigError(f"{key}={mode!r}: expected one of {', '.join(VERIFY_MODES)}")
    return m


def check_nonfinite_mode(mode: Any, key: str = "store.nonfinite") -> str:
    m = str(mode).lower()
    if m not in NONFINITE_MODES:
        raise ConfigError(f"{key}={mode!r}: expected one of {', '.join(NONFINITE_MODES)}")
    return m


def policy_of(cfg: Any) -> Policy:
    """The :class:`Policy` of a run config (``store.verify``, ``store.nonfinite``; defaults: once, error)."""
    node = None
    try:
        node = cfg.get("store") if cfg is not None else None
    except Exception:  # not a mapping
        node = None
    verify = node.get("verify", None) if node is not None else None
    nonfinite = node.get("nonfinite", None) if node is not None else None
    return Policy(check_verify_mode(verify if verify is not None else "once"),
                  check_nonfinite_mode(nonfinite if nonfinite is not None else "error"))


@dataclass
class Checks:
    """The policy a block runs under, and what the stores opened in it reported (:func:`store_checks`)."""

    policy: Policy
    reports: list = field(default_factory=list)


_ACTIVE: list[Checks] = []


def record(rep: "Verification") -> None:
    """Keep what opening a store found, for the :func:`store_checks` block in progress."""
    if _ACTIVE:
        _ACTIVE[-1].reports.append(rep)


@contextlib.contextmanager
def store_checks(cfg: Any) -> Iterator[Checks]:
    """Apply the store checks of ``cfg`` (``store.verify``, ``store.nonfinite``) to every store opened
    inside the block, then restore the previous ones. Yields a :class:`Checks` whose ``reports``
    collect the :class:`Verification` of each store opened in the block."""
    global _POLICY
    checks = Checks(policy_of(cfg))
    old, _POLICY = _POLICY, checks.policy
    _ACTIVE.append(checks)
    try:
        yield checks
    finally:
        _POLICY = old
        _ACTIVE.remove(checks)


@contextlib.contextmanager
def overriding(verify: str | None = None, nonfinite: str | None = None) -> Iterator[Policy]:
    """Change some checks for the block (e.g. ``neurolab extract`` reports non-finite values of a store
    it reuses instead of refusing it: it does not compute on them)."""
    old = set_policy(verify, nonfinite)
    try:
        yield _POLICY
    finally:
        set_policy(old.verify, old.nonfinite)


# -- the manifest ------------------------------------------------------------------------------------
def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's content without its ``digest`` field (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_manifest(mp: Path, m: Mapping[str, Any]) -> None:
    """Refuse a manifest that is damaged or not self-consistent (no file other than it is read).

    Raises :class:`StoreError` naming the manifest and the field.
    """
    def bad(what: str) -> StoreError:
        return StoreError(f"{mp}: {what}; the manifest is damaged or was edited")

    extra = sorted(set(m) - MANIFEST_FIELDS)
    if extra:
        raise bad(f"unexpected field(s) {extra}")
    if m.get("format") != MANIFEST_FORMAT:
        raise bad(f"format {m.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if "digest" in m and m["digest"] != manifest_digest(m):
        raise bad("content does not match its digest")
    sites, nps = m["sites"], m["neurons_per_site"]
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites) or len(set(sites)) != len(sites):
        raise bad(f"sites {sites!r} are not a list of distinct names")
    for s in sites:
        try:
            site_filename(s)
        except StoreError:
            raise bad(f"site name {s!r} cannot name a file") from None
    if not isinstance(nps, dict) or set(nps) != set(sites) or not all(_int(v) and v > 0 for v in nps.values()):
        raise bad(f"neurons_per_site {nps!r} does not give a positive count for each of the sites {sites}")
    ident = m.get("identity") or {}
    if not isinstance(ident, dict):
        raise bad("identity is not an object")
    for k in ("sites", "neurons_per_site", "dtype"):
        if k in ident and ident[k] != m[k]:
            raise bad(f"{k} {m[k]!r} differs from the identity's {ident[k]!r}")
    shards, n = m["shards"], m["num_tokens"]
    if not isinstance(shards, list) or not _int(n) or n < 0:
        raise bad("shards / num_tokens are not a list / a count")
    if "num_shards" in m and m["num_shards"] != len(shards):
        raise bad(f"num_shards {m['num_shards']!r} but {len(shards)} shards listed")
    want_files = {INDEX_FILE, *(site_filename(s) for s in sites)}
    start, dirs = 0, set()
    for i, sh in enumerate(shards):
        if not isinstance(sh, dict) or set(sh) != SHARD_FIELDS:
            raise bad(f"shard entry {i} has fields {sorted(sh) if isinstance(sh, dict) else sh!r}, "
                      f"expected {sorted(SHARD_FIELDS)}")
        d = sh["dir"]
        if not isinstance(d, str) or not _DIR_NAME.match(d) or d in (".", ".."):
            raise bad(f"shard {i}: directory {d!r} is not a plain name inside {SHARDS}/")
        if d in dirs:
            raise bad(f"shard {i}: directory {d!r} listed twice")
        dirs.add(d)
        if sh["id"] != i or not _int(sh["rows"]) or sh["rows"] < 0 or sh["start"] != start:
            raise bad(f"shard {i}: id {sh['id']!r}, start {sh['start']!r}, rows {sh['rows']!r} "
                      f"(expected id {i}, start {start})")
        files = sh["files"]
        if not isinstance(files, dict) or set(files) != want_files:
            raise bad(f"shard {i}: files {sorted(files) if isinstance(files, dict) else files!r}, "
                      f"expected {sorted(want_files)}")
        if not all(isinstance(v, str) and _HEX64.match(v) for v in files.values()):
            raise bad(f"shard {i}: a checksum is not a sha256 hex digest")
        start += sh["rows"]
    if start != n:
        raise bad(f"num_tokens {n} but the shards hold {start} rows")


def shard_dir(root: Path, d: str) -> Path:
    """``root/shards/d`` for a checked directory name (never a path outside the store)."""
    if not isinstance(d, str) or not _DIR_NAME.match(d) or d in (".", ".."):
        raise StoreError(f"{root / MANIFEST}: shard directory {d!r} is not a plain name inside {SHARDS}/")
    return root / SHARDS / d


# -- reading files -----------------------------------------------------------------------------------
def check_header(f: Path, rows: int, units: int, dtype: np.dtype, what: str) -> int:
    """Check a ``.npy`` header against the manifest; returns the data offset."""
    shape, fortran, got, offset = read_npy_header(f)
    if tuple(shape) != (rows, units) or fortran or got != dtype:
        raise StoreError(f"{f}: array of shape {tuple(shape)} ({got}{', Fortran order' if fortran else ''}), "
                         f"the manifest says ({rows}, {units}) ({dtype}, {what})")
    size = f.stat().st_size
    want = offset + rows * units * dtype.itemsize
    if size != want:
        raise StoreError(f"{f}: {size} bytes, expected {want} for its header and shape "
                         f"({'truncated' if size < want else 'trailing bytes'})")
    return offset


def hash_and_scan(f: Path, offset: int, units: int, storage: str | None) -> tuple[str, dict | None]:
    """sha256 of the file, and (for activations in ``storage`` type) non-finite values: ``{"count",
    "row", "unit", "value"}`` (first one), or None when every value is finite."""
    h = hashlib.sha256()
    count, first = 0, None
    itype, mask = _EXPONENT[storage] if storage else (None, 0)
    item = np.dtype(itype).itemsize if itype else 1
    with open(f, "rb") as fh:
        head = fh.read(offset)
        h.update(head)
        pos = 0  # element index of the next data byte
        while True:
            b = fh.read(_CHUNK)
            if not b:
                break
            h.update(b)
            if itype is None:
                continue
            a = np.frombuffer(b, dtype=itype, count=len(b) // item)
            hits = (a & itype(mask)) == itype(mask)
            k = int(np.count_nonzero(hits))
            if k:
                if first is None:
                    j = int(np.argmax(hits)) + pos
                    first = (j // units, j % units, int(a[j - pos]))
                count += k
            pos += len(a)
    if not count:
        return h.hexdigest(), None
    row, unit, bits = first
    if storage == "fp16":
        v = float(np.array([bits], np.uint16).view(np.float16)[0])
    elif storage == "bf16":
        v = float((np.array([bits], np.uint32) << 16).view(np.float32)[0])
    else:
        v = float(np.array([bits], np.uint32).view(np.float32)[0])
    return h.hexdigest(), {"count": count, "row": row, "unit": unit, "value": str(v)}


# -- the marker --------------------------------------------------------------------------------------
def _cache_marker(root: Path) -> Path:
    base = os.environ.get("NEUROLAB_CACHE") or str(Path(os.environ.get("HOME", ".")) / ".cache" / "neurolab")
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
    return Path(base) / "verified" / f"{key}.json"


def read_marker(root: Path, manifest_sha: str) -> dict:
    """The file entries of a marker for this manifest (``{}`` when there is none or it is stale)."""
    for p in (root / MARKER, _cache_marker(root)):
        try:
            with open(p, encoding="utf-8") as fh:
                m = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("format") == MARKER_FORMAT and m.get("manifest_sha256") == manifest_sha \
                and isinstance(m.get("files"), dict):
            return m["files"]
    return {}


def write_marker(root: Path, manifest_sha: str, files: Mapping[str, dict]) -> Path | None:
    body = {"format": MARKER_FORMAT, "manifest_sha256": manifest_sha, "files": dict(files)}
    for p in (root / MARKER, _cache_marker(root)):
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(p, body)
            return p
        except OSError as e:
            log.debug("cannot write the verification marker %s: %s", p, e)
    return None


def _stat_entry(st: os.stat_result) -> dict:
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "ino": int(st.st_ino)}


def _trusted(entry: Any, st: os.stat_result) -> bool:
    if not isinstance(entry, dict):
        return False
    try:
        return (entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns and entry["ino"] == st.st_ino
                and st.st_mtime_ns < int(entry["checked_ns"]) - SLACK_NS)
    except (KeyError, TypeError, ValueError):
        return False


# -- the check ---------------------------------------------------------------------------------------
@dataclass
class Verification:
    """What opening a store checked: ``mode``, files read (hashed) / trusted from the marker, bytes
    hashed, seconds, and non-finite values per file (``{relative path: {count, row, unit, value}}``)."""

    mode: str
    files_hashed: int = 0
    files_trusted: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    nonfinite: dict | None = None
    problems: list | None = None

    @property
    def nonfinite_values(self) -> int:
        return int(sum(v["count"] for v in (self.nonfinite or {}).values()))

    def as_dict(self) -> dict:
        return {"mode": self.mode, "files_hashed": self.files_hashed, "files_trusted": self.files_trusted,
                "bytes_hashed": self.bytes_hashed, "seconds": round(self.seconds, 4),
                "nonfinite_values": self.nonfinite_values}


def check_contents(store, mode: str, *, manifest_sha: str, collect: bool = False) -> Verification:
    """Read every file of ``store`` not vouched for by the marker (all of them for ``always``).

    Raises :class:`StoreError` naming the first damaged file (``collect=True``: returns every
    problem in ``problems`` instead).
    """
    t0 = time.perf_counter()
    root = Path(store.path)
    old = read_marker(root, manifest_sha) if mode == "once" else {}
    new: dict[str, dict] = {}
    rep = Verification(mode, nonfinite={}, problems=[])
    dtype = np.dtype(DTYPES[store.dtype])
    changed = not old

    def problem(msg: str) -> None:
        if not collect:
            raise StoreError(msg)
        rep.problems.append(msg)

    real_root = root.resolve()
    for i, sh in enumerate(store.shards):
        d = shard_dir(root, sh["dir"])
        if not d.is_dir():
            problem(f"{d}: shard directory missing")
            continue
        try:
            d.resolve().relative_to(real_root)
        except ValueError:
            problem(f"{d}: a link to {d.resolve()}, outside the store; shard directories must be inside it")
            continue
        rows = int(sh["rows"])
        index_ok = False
        for name, digest in sh["files"].items():
            f = d / name
            rel = f"{SHARDS}/{sh['dir']}/{name}"
            try:
                st = f.stat()
            except FileNotFoundError:
                problem(f"{f}: missing")
                continue
            entry = old.get(rel)
            if _trusted(entry, st) and entry.get("sha256") == digest:
                new[rel] = entry
                rep.files_trusted += 1
                if entry.get("nonfinite"):
                    rep.nonfinite[rel] = entry["nonfinite"]
                index_ok = index_ok or name == INDEX_FILE
                continue
            changed = True
            checked_ns = time.time_ns()
            try:
                if name == INDEX_FILE:
                    offset, units, storage = check_header(f, rows, 2, np.dtype(np.int32), "int32 sentence/word ids"), 2, None
                else:
                    site = name[: -len(".npy")]
                    units = int(store.neurons_per_site[site])
                    offset, storage = check_header(f, rows, units, dtype, store.dtype), store.dtype
                got, nonfinite = hash_and_scan(f, offset, units, storage)
            except StoreError as e:
                problem(str(e))
                continue
            rep.files_hashed += 1
            rep.bytes_hashed += int(st.st_size)
            if got != digest:
                problem(f"{f}: checksum mismatch (the file is corrupt or was changed)")
                continue
            if nonfinite:
                rep.nonfinite[rel] = nonfinite
            index_ok = index_ok or name == INDEX_FILE
            if f.stat().st_mtime_ns == st.st_mtime_ns:  # (a file changed while it was read is read again next time)
                new[rel] = dict(_stat_entry(st), sha256=digest, checked_ns=checked_ns, nonfinite=nonfinite)
        _check_shard_meta(store, i, d, old, new, rep, problem, index_ok)
    rep.seconds = time.perf_counter() - t0
    if rep.problems:
        return rep
    if changed or len(new) != len(old):
        write_marker(root, manifest_sha, new)
    return rep


def _check_shard_meta(store, i: int, d: Path, old: dict, new: dict, rep: Verification, problem, index_ok: bool) -> None:
    """``shard.json`` agrees with the manifest (and with the index's first / last sentence)."""
    sh = store.shards[i]
    f = d / SHARD_META
    rel = f"{SHARDS}/{sh['dir']}/{SHARD_META}"
    try:
        st = f.stat()
    except FileNotFoundError:
        problem(f"{f}: missing")
        return
    entry = old.get(rel)
    if _trusted(entry, st):
        new[rel] = entry
        rep.files_trusted += 1
        return
    checked_ns = time.time_ns()
    try:
        with open(f, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as e:
        problem(f"{f}: not valid JSON ({e})")
        return
    why = None
    if not isinstance(meta, dict) or not {"shard_id", "rows", "files"} <= set(meta) or set(meta) - SHARD_META_FIELDS:
        why = f"fields {sorted(meta) if isinstance(meta, dict) else meta!r}"
    elif meta["shard_id"] != sh["id"] or meta["rows"] != sh["rows"] or meta["files"] != sh["files"]:
        why = "shard id, rows or checksums differ from the manifest"
    elif sh["rows"] and index_ok:
        idx = np.load(d / INDEX_FILE, mmap_mode="r", allow_pickle=False)
        if meta.get("first_sentence") != int(idx[0, 0]) or meta.get("last_sentence") != int(idx[-1, 0]):
            why = "first / last sentence differ from the index"
        del idx
    over = meta.get("fp16_overflow") if isinstance(meta, dict) else None
    if why is None and over is not None and (not isinstance(over, dict) or not set(over) <= set(store.sites)
                                             or not all(_int(v) and v > 0 for v in over.values())):
        why = f"fp16_overflow {over!r}"
    if why:
        problem(f"{f}: {why}; the shard's record is damaged")
        return
    rep.files_hashed += 1
    new[rel] = dict(_stat_entry(st), checked_ns=checked_ns)


def nonfinite_message(store, rep: Verification) -> str:
    """One message naming the first non-finite value (file, row, unit) and the totals."""
    items = sorted(rep.nonfinite.items())
    rel, first = items[0]
    sh_dir = rel.split("/")[1]
    shard = next(s for s in store.shards if s["dir"] == sh_dir)
    site = rel.rsplit("/", 1)[1][: -len(".npy")]
    total = rep.nonfinite_values
    msg = (f"{Path(store.path) / rel}: row {first['row']} (store row {int(shard['start']) + int(first['row'])}), "
           f"unit {first['unit']} ({site}:{first['unit']}) is {first['value']}; the store holds {total} non-finite "
           f"value{'s' if total != 1 else ''} in {len(items)} file{'s' if len(items) != 1 else ''}")
    over = (store.meta or {}).get("fp16_overflow")
    if over:
        msg += (f" ({over} activations were beyond the fp16 range when the store was extracted: extract with "
                "extract.dtype=bf16 or fp32)")
    return msg


def enforce_nonfinite(store, rep: Verification, mode: str) -> None:
    """Refuse (``error``) or report (``warn``) the non-finite values found by :func:`check_contents`."""
    if not rep.nonfinite:
        return
    msg = nonfinite_message(store, rep)
    if mode == "error":
        raise StoreError(msg + ". Results computed on them are not meaningful; store.nonfinite=warn reads the "
                         "store anyway (the values are counted and reported)")
    log.warning("%s (store.nonfinite=warn: reading it anyway)", msg)


# -- directories a writer may replace ----------------------------------------------------------------
def is_store_manifest(mp: Path) -> bool:
    """``mp`` is a neurolab store manifest (JSON with the store format)."""
    try:
        with open(mp, encoding="utf-8") as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT


def _owned(p: Path) -> bool:
    """An entry of a store directory that a store writer made."""
    name = p.name
    if name in (MANIFEST, MARKER, LOCK) and not p.is_dir():
        return True
    if name.startswith(f".{MANIFEST}.tmp-") or name.startswith(f".{MARKER}.tmp-"):
        return True
    if name == SHARDS:
        return True
    if p.is_dir() and not p.is_symlink():  # a nested store (e.g. the sentence-row store)
        return is_store_manifest(p / MANIFEST) and not foreign_entries(p)
    return False


def foreign_entries(path: Path) -> list[str]:
    """Entries of ``path`` that no store writer made (names, directories with a slash)."""
    out = []
    for p in sorted(path.iterdir()):
        if not _owned(p):
            out.append(p.name + ("/" if p.is_dir() else ""))
    return out


def describe_entries(names: list[str], k: int = 5) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")
