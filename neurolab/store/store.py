"""Activation store: sharded, checksummed, write-once arrays on disk.

Reading never loads the whole store: shards are memory-mapped and only the requested rows and
sites are copied out. Writing goes shard by shard into a temporary directory that is renamed into
place once every file is written and fsynced, so a killed writer never leaves a visible
half-written shard and a rerun resumes from the finished ones.

Example::

    >>> import numpy as np, tempfile
    >>> from neurolab.store import write_store, ActivationStore
    >>> d = tempfile.mkdtemp()
    >>> acts = {"layers.0": np.arange(12, dtype=np.float32).reshape(4, 3)}
    >>> s = write_store(d + "/s", acts, sentence_ids=[0, 0, 1, 1], word_ids=[0, 1, 0, 1])
    >>> s.read(slice(1, 3)).tolist()
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .format import (
    DTYPES,
    INDEX_FILE,
    MANIFEST,
    SCHEMA_VERSION,
    SHARD_META,
    SHARDS,
    StoreError,
    StoreMismatchError,
    convert_into,
    normalize_dtype,
    read_json,
    read_npy_header,
    shard_dirname,
    site_filename,
    to_storage,
    write_json_atomic,
    write_npy,
)
from . import integrity
from .integrity import LOCK, describe_entries, foreign_entries, is_store_manifest, manifest_digest, shard_dir

log = logging.getLogger(__name__)

__all__ = ["ActivationStore", "StoreWriter", "write_store"]

#: scratch buffers of a store are kept for reuse between reads up to this size
_KEEP_BYTES = 128 << 20


def _describe_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: store has {old.get(k)!r}, requested {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs)


class StoreWriter:
    """Writes a store shard by shard; safe to resume and to share between processes.

    ``identity`` holds everything that defines the content (model, revision, sites, dtype,
    aggregation, corpus fingerprint, shard plan ...). Opening a directory whose manifest has another
    identity is refused with :class:`StoreMismatchError` unless ``overwrite=True``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sites: Sequence[str],
        neurons_per_site: Mapping[str, int],
        dtype: str = "fp16",
        identity: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.sites = list(sites)
        if len(set(self.sites)) != len(self.sites):
            raise StoreError(f"duplicate site names in {self.sites}")
        for s in self.sites:
            site_filename(s)
        missing = [s for s in self.sites if s not in neurons_per_site]
        if missing:
            raise StoreError(f"no unit count given for sites {missing}")
        self.neurons_per_site = {s: int(neurons_per_site[s]) for s in self.sites}
        self.dtype = normalize_dtype(dtype)
        ident = dict(identity or {})
        ident.update(sites=self.sites, neurons_per_site=self.neurons_per_site, dtype=self.dtype)
        self.identity = _jsonable(ident)
        self.meta = _jsonable(dict(meta or {}))
        self.overwrite = overwrite
        self.complete = False

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def shards_path(self) -> Path:
        return self.path / SHARDS

    def open(self, *, clean: bool = True) -> "StoreWriter":
        """Create the directory, or check that the existing store is the same one (resume).

        ``clean`` removes temporary shard directories left by a killed writer; pass False from
        all but one process when several write into the same store.

        With ``overwrite=True`` only a neurolab store (a directory with a store manifest) or an empty
        directory is replaced; a directory holding anything else is refused, naming what it holds.
        """
        check_replaceable(self.path, self.overwrite)
        mp = self.manifest_path
        if mp.exists():
            old = read_json(mp)
            if old.get("schema_version") != SCHEMA_VERSION or old.get("identity") != self.identity:
                if not self.overwrite:
                    why = (
                        f"schema version {old.get('schema_version')} != {SCHEMA_VERSION}"
                        if old.get("schema_version") != SCHEMA_VERSION
                        else _describe_difference(old.get("identity", {}), self.identity)
                    )
                    raise StoreMismatchError(
                        f"{mp}: this directory holds another store ({why}). Use another store.dir, "
                        "or store.overwrite=true to replace it."
                    )
                log.warning("overwriting the store in %s (store.overwrite=true)", self.path)
                self._wipe()
            else:
                self.complete = bool(old.get("complete"))
                if self.complete:
                    if clean:  # a writer killed while rewriting the manifest of a finished store
                        for p in self.path.glob(f".{MANIFEST}.tmp-*"):
                            p.unlink(missing_ok=True)
                    return self
        elif self.path.exists() and any(not self._writer_leftover(p) for p in self.path.iterdir()):
            if not self.overwrite:
                held = [p.name for p in sorted(self.path.iterdir()) if not self._writer_leftover(p)]
                raise StoreMismatchError(
                    f"{self.path}: directory is not empty and holds no {MANIFEST}; refusing to write a "
                    f"store into it (it holds {describe_entries(held)}; store.overwrite=true replaces it)."
                )
            self._wipe()
        self.path.mkdir(parents=True, exist_ok=True)
        if clean:
            # leftovers of a writer killed while writing the manifest or a shard
            for p in self.path.glob(f".{MANIFEST}.tmp-*"):
                p.unlink(missing_ok=True)
            if self.shards_path.exists():
                for p in self.shards_path.iterdir():
                    if p.name.startswith(".tmp-"):
                        shutil.rmtree(p, ignore_errors=True)
        if not mp.exists():
            write_json_atomic(mp, self._manifest(complete=False, shards=[]))
        self.shards_path.mkdir(parents=True, exist_ok=True)
        return self

    @contextmanager
    def locked(self, timeout: float | None = None):
        """Hold the store's lock file (``.lock``) for the block: writers into one store run one at a
        time (see :func:`store_lock`)."""
        with store_lock(self.path, self.overwrite, timeout=timeout):
            yield self

    def _writer_leftover(self, p: Path) -> bool:
        """What a writer killed before its first manifest leaves: a manifest temp file, an empty shards/."""
        if p.name.startswith(f".{MANIFEST}.tmp-") or p.name in (LOCK, integrity.MARKER):
            return True
        return p == self.shards_path and p.is_dir() and not any(q for q in p.iterdir() if not q.name.startswith(".tmp-"))

    def _wipe(self) -> None:
        """Remove the store in ``self.path`` (only what a store writer made: refused otherwise)."""
        wipe_store(self.path)

    def _manifest(self, complete: bool, shards: list[dict], num_tokens: int = 0) -> dict:
        m = {
            "schema_version": SCHEMA_VERSION,
            "format": "neurolab-activation-store",
            "complete": complete,
            "identity": self.identity,
            "sites": self.sites,
            "neurons_per_site": self.neurons_per_site,
            "dtype": self.dtype,
            "num_tokens": int(num_tokens),
            "num_shards": len(shards),
            "shards": shards,
            "meta": self.meta,
        }
        m["digest"] = manifest_digest(m)
        return m

    # -- shards ------------------------------------------------------------------------------
    def finished_shards(self) -> dict[int, dict]:
        """Shards fully written so far: ``{shard_id: shard.json content}``."""
        out: dict[int, dict] = {}
        if not self.shards_path.exists():
            return out
        for p in self.shards_path.iterdir():
            if p.name.startswith(".") or not p.is_dir():
                continue
            meta_file = p / SHARD_META
            if not meta_file.exists():  # cannot happen with rename-into-place, but be strict
                raise StoreError(f"{p}: shard directory without {SHARD_META}; the store is damaged")
            out[int(p.name)] = read_json(meta_file)
        return out

    def write_shard(
        self,
        shard_id: int,
        activations: Mapping[str, np.ndarray],
        sentence_ids: Sequence[int] | np.ndarray,
        word_ids: Sequence[int] | np.ndarray,
    ) -> dict:
        """Write one shard atomically. Rows must be in corpus order within the shard."""
        sent = np.asarray(sentence_ids, dtype=np.int64)
        word = np.asarray(word_ids, dtype=np.int64)
        n = len(sent)
        if len(word) != n:
            raise StoreError(f"shard {shard_id}: {n} sentence ids but {len(word)} word ids")
        if set(activations) != set(self.sites):
            raise StoreError(f"shard {shard_id}: sites {sorted(activations)} != store sites {sorted(self.sites)}")
        for s in self.sites:
            a = activations[s]
            if a.ndim != 2 or a.shape[0] != n or a.shape[1] != self.neurons_per_site[s]:
                raise StoreError(
                    f"shard {shard_id}: site {s} has shape {tuple(a.shape)}, expected ({n}, {self.neurons_per_site[s]})"
                )
        final = self.shards_path / shard_dirname(shard_id)
        if final.exists():
            raise StoreError(f"{final}: shard already written (shards are write-once)")
        tmp = self.shards_path / f".tmp-{shard_dirname(shard_id)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        files = {INDEX_FILE: write_npy(tmp / INDEX_FILE, np.stack([sent, word], axis=1).astype(np.int32))}
        overflow: dict[str, int] = {}
        for s in self.sites:
            stored = to_storage(activations[s], self.dtype)
            if self.dtype == "fp16":  # values beyond fp16's range become inf: count and report them
                n_inf = int(np.count_nonzero(np.isinf(stored)))
                if n_inf:
                    n_inf -= int(np.count_nonzero(np.isinf(np.asarray(activations[s]))))
                    if n_inf:
                        overflow[s] = n_inf
            files[site_filename(s)] = write_npy(tmp / site_filename(s), stored)
        meta = {
            "shard_id": int(shard_id),
            "rows": int(n),
            "first_sentence": int(sent[0]) if n else None,
            "last_sentence": int(sent[-1]) if n else None,
            "files": files,
        }
        if overflow:
            meta["fp16_overflow"] = overflow
            log.warning(
                "shard %d: %d activations beyond the fp16 range (|x| > 65504) stored as inf (%s); "
                "use extract.dtype=bf16 or fp32 to keep them", shard_id, sum(overflow.values()), overflow,
            )
        write_json_atomic(tmp / SHARD_META, meta)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if final.exists() or e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise StoreError(
                    f"{final}: written by another process at the same time; two extractions into one store must "
                    "not run at once (rerun to resume)"
                ) from None
            raise StoreError(f"{final}: cannot move the finished shard into place ({e})") from None
        _fsync_dir(self.shards_path)
        return meta

    def finalize(self, num_shards: int | None = None, meta: Mapping[str, Any] | None = None) -> "ActivationStore":
        """Check that shards 0..n-1 are all there, write the complete manifest, open the store."""
        done = self.finished_shards()
        n = num_shards if num_shards is not None else (max(done) + 1 if done else 0)
        missing = [i for i in range(n) if i not in done]
        if missing:
            raise StoreError(f"{self.path}: cannot finalize, shards {missing[:10]} are not written")
        extra = sorted(set(done) - set(range(n)))
        if extra:
            raise StoreError(f"{self.path}: unexpected shards {extra[:10]} beyond the planned {n}")
        shards, start = [], 0
        for i in range(n):
            rows = int(done[i]["rows"])
            shards.append({"id": i, "dir": shard_dirname(i), "start": start, "rows": rows, "files": done[i]["files"]})
            start += rows
        if meta:
            self.meta.update(_jsonable(dict(meta)))
        over = sum(sum(done[i].get("fp16_overflow", {}).values()) for i in range(n))
        if over:
            self.meta["fp16_overflow"] = int(over)
        write_json_atomic(self.manifest_path, self._manifest(complete=True, shards=shards, num_tokens=start))
        self.complete = True
        # every file was hashed as it was written: readers verify the store when they open it
        return ActivationStore.open(self.path, verify="never")


def _refuse_foreign(path: Path, foreign: list[str], overwrite: bool) -> StoreMismatchError:
    if overwrite:
        return StoreMismatchError(
            f"{path}: store.overwrite=true replaces only a neurolab store (a directory with its {MANIFEST}) or an "
            f"empty directory; this one holds {describe_entries(foreign)}, which no store writer made. Nothing was "
            "deleted: choose another store.dir, or move those files away"
        )
    return StoreMismatchError(
        f"{path}: directory is not empty and holds no neurolab {MANIFEST}; refusing to write a store into it "
        f"(it holds {describe_entries(foreign)}). Choose another store.dir"
    )


def check_replaceable(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse a store directory that is neither a neurolab store, nor empty, nor absent (read-only check)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreMismatchError(f"{path}: not a directory; a store is a directory")
    mp = path / MANIFEST
    has_store = is_store_manifest(mp)
    if mp.exists() and not has_store:
        raise StoreMismatchError(
            f"{mp}: not a neurolab store manifest; refusing to write into {path}"
            + (" (store.overwrite=true replaces only a neurolab store or an empty directory)" if overwrite else "")
        )
    if not has_store:
        foreign = [n for n in foreign_entries(path) if n.rstrip("/") != SHARDS]
        if foreign:
            raise _refuse_foreign(path, foreign, overwrite)


def wipe_store(path: str | os.PathLike) -> None:
    """Delete the store in ``path``: only entries a store writer made, never following a link and never
    reading the manifest's paths. A directory holding anything else is refused and left untouched."""
    path = Path(path)
    if not path.exists():
        return
    mp = path / MANIFEST
    if mp.exists() and not is_store_manifest(mp):
        raise StoreMismatchError(f"{mp}: not a neurolab store manifest; store.overwrite=true replaces only a "
                                 "neurolab store or an empty directory. Nothing was deleted")
    foreign = foreign_entries(path)
    if foreign:
        raise _refuse_foreign(path, foreign, True)
    for p in path.iterdir():
        if p.name == LOCK:
            continue
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            shutil.rmtree(p)


@contextmanager
def store_lock(path: str | os.PathLike, overwrite: bool = False, *, timeout: float | None = None, poll: float = 0.25):
    """Hold ``path/.lock`` (an exclusive ``flock``) for the block, so that writers into one store run one
    at a time: a second writer waits (with a log message) until the first is done, or raises
    :class:`StoreError` after ``timeout`` seconds. The directory is checked first (see
    :func:`check_replaceable`): no lock file is ever created in a directory that is not a store."""
    path = Path(path)
    check_replaceable(path, overwrite)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on this platform: writers are not serialised
        yield
        return
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            log.warning("%s is being written by another process (pid %s); waiting for it to finish", path, holder)
            t0 = time.monotonic()
            while True:
                time.sleep(poll)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if timeout is not None and time.monotonic() - t0 > timeout:
                        raise StoreError(
                            f"{path}: another process (pid {holder}) is writing this store ({lock} is locked); "
                            "wait for it to finish, or use another store.dir"
                        ) from None
        except OSError as e:  # a file system without locks
            log.warning("cannot lock %s (%s); make sure no other process writes this store", lock, e)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (OmegaConf containers, numpy scalars and tuples converted)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        obj = OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _release(m: np.ndarray) -> None:
    """Unmap the pages a gather touched in one shard file (they stay in the page cache, so the next read
    of them is a minor fault): without it, random reads over a store map all of it into the process's
    resident set (the kernel maps about 64 KB around each row read), which then grows with the store."""
    mm = getattr(m, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


class ActivationStore:
    """Read access to a finished store. Opening reads only the manifest.

    Attributes: ``sites``, ``neurons_per_site`` (dict), ``num_tokens``, ``dtype``, ``identity``,
    ``meta``; ``sentence_ids`` / ``word_ids`` (one per row, read on first use).
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.sites: list[str] = list(manifest["sites"])
        self.neurons_per_site: dict[str, int] = {s: int(manifest["neurons_per_site"][s]) for s in self.sites}
        self.num_tokens: int = int(manifest["num_tokens"])
        self.dtype: str = manifest["dtype"]
        self.identity: dict = manifest.get("identity", {})
        self.meta: dict = manifest.get("meta", {})
        self.shards: list[dict] = manifest["shards"]
        self._starts = np.array([s["start"] for s in self.shards] + [self.num_tokens], dtype=np.int64)
        self._mmaps: dict[tuple[int, str], np.ndarray] = {}
        self._headers: dict[tuple[int, str], tuple[int, np.dtype]] = {}
        self._buf: np.ndarray | None = None
        self._gather: np.ndarray | None = None
        self._index: np.ndarray | None = None
        #: what :meth:`open` checked (None: opened with verify=never)
        self.verification: integrity.Verification | None = None

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool | str | None = None, *,
             nonfinite: str | None = None) -> "ActivationStore":
        """Open a finished store after checking it (see :mod:`neurolab.store.integrity`).

        ``verify``: ``"once"`` (read and hash every file unless a marker says it was verified and is
        unchanged), ``"always"`` (or True), ``"never"`` (or False; the manifest is still checked, and
        headers when rows are read); None: the process's setting (``store.verify`` of the running
        verb, default once). ``nonfinite``: ``"error"`` refuses a store holding inf / nan activations,
        ``"warn"`` counts and reports them; None: ``store.nonfinite`` (default error).
        What was checked is in :attr:`verification`.
        """
        path = Path(path)
        mp = path / MANIFEST
        if not path.exists():
            raise StoreError(f"{path}: no such store directory")
        if not mp.exists():
            raise StoreError(f"{mp}: not found; {path} is not an activation store")
        try:
            raw = mp.read_bytes()
        except OSError as e:
            raise StoreError(f"{mp}: cannot read ({e})") from None
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise StoreError(f"{mp}: not valid JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{mp}: not a store manifest (a JSON object expected)")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{mp}: schema version {manifest.get('schema_version')!r}, this neurolab reads {SCHEMA_VERSION}"
            )
        if manifest.get("complete") is not True:
            raise StoreError(f"{mp}: the store is incomplete (an extraction was interrupted); rerun it to resume")
        for key in ("sites", "neurons_per_site", "num_tokens", "dtype", "shards"):
            if key not in manifest:
                raise StoreError(f"{mp}: missing field {key!r}")
        if manifest["dtype"] not in DTYPES:
            raise StoreError(f"{mp}: unknown dtype {manifest['dtype']!r}")
        integrity.check_manifest(mp, manifest)
        store = cls(path, manifest)
        pol = integrity.policy()
        mode = integrity.check_verify_mode(verify) if verify is not None else pol.verify
        nf = integrity.check_nonfinite_mode(nonfinite) if nonfinite is not None else pol.nonfinite
        if mode != "never":
            rep = integrity.check_contents(store, mode, manifest_sha=hashlib.sha256(raw).hexdigest())
            store.verification = rep
            if rep.files_hashed:
                log.debug("verified %s: %s", path, rep.as_dict())
            integrity.record(rep)
            integrity.enforce_nonfinite(store, rep, nf)
        return store

    def __getstate__(self) -> dict:
        """Pickle (e.g. into DataLoader workers) without memory maps or scratch buffers."""
        d = dict(self.__dict__)
        d.update(_mmaps={}, _buf=None, _gather=None)
        return d

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, tokens={self.num_tokens}, sites={len(self.sites)}, "
            f"neurons={self.num_neurons()}, dtype={self.dtype}, shards={len(self.shards)})"
        )

    def __len__(self) -> int:
        return self.num_tokens

    # -- columns -----------------------------------------------------------------------------
    def num_neurons(self, sites: Sequence[str] | None = None) -> int:
        return sum(self.neurons_per_site[s] for s in self._check_sites(sites))

    def column_ranges(self, sites: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        """``{site: (start, stop)}`` columns of each site in the concatenation of ``sites``."""
        out, c = {}, 0
        for s in self._check_sites(sites):
            out[s] = (c, c + self.neurons_per_site[s])
            c += self.neurons_per_site[s]
        return out

    def neuron_names(self, sites: Sequence[str] | None = None) -> list[str]:
        """``site:unit`` names of the columns of ``read(..., sites)``."""
        return [f"{s}:{u}" for s in self._check_sites(sites) for u in range(self.neurons_per_site[s])]

    def _check_sites(self, sites: Sequence[str] | None) -> list[str]:
        if sites is None:
            return list(self.sites)
        if isinstance(sites, str):
            sites = [sites]
        unknown = [s for s in sites if s not in self.neurons_per_site]
        if unknown:
            raise StoreError(f"{self.path}: unknown sites {unknown}; the store has {self.sites}")
        return list(sites)

    # -- index -------------------------------------------------------------------------------
    def _load_index(self) -> np.ndarray:
        if self._index is None:
            parts = [self._index_part(i) for i in range(len(self.shards))]
            self._index = np.concatenate(parts, axis=0).astype(np.int64) if parts else np.zeros((0, 2), np.int64)
        return self._index

    def _index_part(self, shard: int) -> np.ndarray:
        f = self._file(shard, INDEX_FILE)
        try:
            a = np.load(f, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # a damaged header: ValueError, SyntaxError, tokenize errors
            raise StoreError(f"{f}: cannot read shard file ({type(e).__name__}: {e})") from None
        expect = (int(self.shards[shard]["rows"]), 2)
        if a.shape != expect or a.dtype != np.dtype(np.int32):
            raise StoreError(f"{f}: array of shape {a.shape} ({a.dtype}), expected {expect} (int32)")
        return a

    @property
    def sentence_ids(self) -> np.ndarray:
        return self._load_index()[:, 0]

    @property
    def word_ids(self) -> np.ndarray:
        return self._load_index()[:, 1]

    @property
    def model_name(self) -> str:
        """The model that made the activations, as recorded in the manifest (its ``name`` when the
        record is a mapping); ``""`` when the store does not say (a ``write_store`` store without meta)."""
        for src in (self.identity or {}, self.meta or {}):
            v = src.get("model") if isinstance(src, dict) else None
            if isinstance(v, dict):
                v = v.get("name") or v.get("name_or_path")
            if v:
                return str(v)
        return ""

    @property
    def num_sentences(self) -> int:
        ids = self.sentence_ids
        return int(ids.max()) + 1 if len(ids) else 0

    # -- data --------------------------------------------------------------------------------
    def _file(self, shard: int, name: str) -> Path:
        return shard_dir(self.path, self.shards[shard]["dir"]) / name

    def _mmap(self, shard: int, site: str) -> np.ndarray:
        key = (shard, site)
        m = self._mmaps.get(key)
        if m is None:
            f = self._file(shard, site_filename(site))
            try:
                m = np.load(f, mmap_mode="r", allow_pickle=False)
            except Exception as e:  # a damaged header: ValueError, SyntaxError, tokenize errors
                raise StoreError(f"{f}: cannot read shard file ({type(e).__name__}: {e})") from None
            expect = (self.shards[shard]["rows"], self.neurons_per_site[site])
            if m.shape != expect or m.dtype != np.dtype(DTYPES[self.dtype]):
                raise StoreError(f"{f}: array of shape {m.shape} ({m.dtype}), manifest says {expect} ({self.dtype})")
            self._mmaps[key] = m
        return m

    def _header(self, shard: int, site: str) -> tuple[int, np.dtype]:
        """(data offset, dtype) of a shard file, from its .npy header (cached; the data is not read)."""
        key = (shard, site)
        got = self._headers.get(key)
        if got is None:
            f = self._file(shard, site_filename(site))
            shape, fortran, dtype, offset = read_npy_header(f)
            expect = (int(self.shards[shard]["rows"]), self.neurons_per_site[site])
            if tuple(shape) != expect or fortran or dtype != np.dtype(DTYPES[self.dtype]):
                raise StoreError(f"{f}: array of shape {tuple(shape)} ({dtype}), manifest says {expect} ({self.dtype})")
            size = f.stat().st_size
            if size < offset + expect[0] * expect[1] * dtype.itemsize:
                raise StoreError(f"{f}: truncated ({size} bytes)")
            got = self._headers[key] = (offset, dtype)
        return got

    @staticmethod
    def _out(out: np.ndarray | None, rows: int, cols: int) -> np.ndarray:
        if out is None:
            return np.empty((rows, cols), dtype=np.float32)
        if out.dtype != np.float32 or out.shape != (rows, cols) or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(
                f"out must be a writable C-contiguous float32 array of shape {(rows, cols)}, got {out.dtype} {out.shape}"
            )
        return out

    def _scratch(self, nbytes: int) -> np.ndarray:
        """A reused byte buffer (kept between calls only up to ``_KEEP_BYTES``)."""
        if nbytes > _KEEP_BYTES:
            return np.empty(nbytes, dtype=np.uint8)
        if self._buf is None or self._buf.nbytes < nbytes:
            self._buf = np.empty(max(nbytes, 1 << 16), dtype=np.uint8)
        return self._buf[:nbytes]

    def _pread(self, shard: int, site: str, a: int, b: int) -> np.ndarray:
        """Rows a..b-1 (shard-local) of one site in the storage dtype, read with pread (no mmap).

        The result lives in a scratch buffer that the next call reuses.
        """
        offset, dtype = self._header(shard, site)
        w = self.neurons_per_site[site]
        row_bytes = w * dtype.itemsize
        buf = self._scratch((b - a) * row_bytes)
        f = self._file(shard, site_filename(site))
        fd = os.open(f, os.O_RDONLY)
        try:
            mv, pos, at = memoryview(buf), offset + a * row_bytes, 0
            while at < len(mv):
                n = os.preadv(fd, [mv[at:]], pos + at)
                if n <= 0:
                    raise StoreError(f"{f}: truncated (read {at} of {len(mv)} bytes at offset {pos})")
                at += n
        finally:
            os.close(fd)
        return buf.view(dtype).reshape(b - a, w)

    def read(
        self, rows: slice | Sequence[int] | np.ndarray, sites: Sequence[str] | None = None, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows × the concatenated units of ``sites`` as a new float32 array.

        ``rows`` is a slice (step 1) or an integer index array (any order, repeats allowed).
        Slices are read with ``pread`` (memory stays bounded by the result); index arrays through
        memory maps of the shard files. ``out``: a C-contiguous float32 array of the result's shape
        to fill and return instead of a new one (reusing it saves the page faults of fresh memory
        in a streaming loop).
        """
        sites = self._check_sites(sites)
        widths = [self.neurons_per_site[s] for s in sites]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.num_tokens)
            if step != 1:
                return self.read(np.arange(start, stop, step), sites, out=out)
            out = self._out(out, max(stop - start, 0), sum(widths))
            if stop <= start:
                return out
            sh = int(np.searchsorted(self._starts, start, side="right") - 1)
            r = start
            while r < stop:
                s0, s1 = int(self._starts[sh]), int(self._starts[sh + 1])
                a, b = r - s0, min(stop, s1) - s0
                c = 0
                for s, w in zip(sites, widths):
                    convert_into(out[r - start : r - start + b - a, c : c + w], self._pread(sh, s, a, b), self.dtype)
                    c += w
                r = s0 + b
                sh += 1
            return out
        idx = np.asarray(rows).reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"row indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        out = self._out(out, idx.size, sum(widths))
        if idx.size == 0:
            return out
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_tokens:
            raise IndexError(f"row index out of range [0, {self.num_tokens})")
        ascending = bool(np.all(idx[1:] >= idx[:-1]))
        if ascending and hi - lo + 1 == idx.size:  # a contiguous run: read it as a slice
            return self.read(slice(lo, hi + 1), sites, out=out)
        if ascending:
            order, srt, dst = None, idx, out
        else:
            order = np.argsort(idx, kind="stable")
            srt = idx[order]
            # rows in sorted order go to a reused buffer, then one scatter into out
            if out.size * 4 > _KEEP_BYTES:
                dst = np.empty_like(out)
            else:
                if self._gather is None or self._gather.size < out.size:
                    self._gather = np.empty(out.size, dtype=np.float32)
                dst = self._gather[: out.size].reshape(out.shape)
        first = int(np.searchsorted(self._starts, srt[0], side="right") - 1)
        last = int(np.searchsorted(self._starts, srt[-1], side="right") - 1)
        bounds = np.searchsorted(srt, self._starts[first : last + 2], side="left")
        for k, sh in enumerate(range(first, last + 1)):
            p, q = int(bounds[k]), int(bounds[k + 1])
            if q <= p:
                continue
            local = srt[p:q] - self._starts[sh]
            c = 0
            for s, w in zip(sites, widths):
                m = self._mmap(sh, s)
                convert_into(dst[p:q, c : c + w], m[local], self.dtype)
                _release(m)  # at most one shard file's pages mapped at a time
                c += w
        if order is not None:
            out[order] = dst
        return out

    def iter_chunks(
        self, sites: Sequence[str] | None = None, chunk_rows: int | None = None, rows: slice | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Sequential pass: yields ``(first_row, float32 block)``; memory bounded by ``chunk_rows``.

        Without ``chunk_rows`` the blocks follow shard boundaries.
        """
        start, stop, _ = (rows or slice(None)).indices(self.num_tokens)
        if chunk_rows is None:
            cuts = [int(x) for x in self._starts if start < x < stop]
            edges = [start] + cuts + [stop]
        else:
            edges = list(range(start, stop, int(chunk_rows))) + [stop]
        for a, b in zip(edges[:-1], edges[1:]):
            if b > a:
                yield a, self.read(slice(a, b), sites)

    # -- integrity ---------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Read every file again: headers against the manifest, checksums, shard records and non-finite
        values; return the problems found (empty when the store is intact). A clean result is
        remembered (see :mod:`neurolab.store.integrity`)."""
        raw = (self.path / MANIFEST).read_bytes()
        rep = integrity.check_contents(self, "always", manifest_sha=hashlib.sha256(raw).hexdigest(), collect=True)
        problems = list(rep.problems or [])
        if rep.nonfinite:
            problems.append(integrity.nonfinite_message(self, rep))
        return problems

    def stray_entries(self) -> list[str]:
        """Paths in the store that belong to no listed shard (e.g. the temporary directory of a writer
        that was killed, or an unlisted shard), relative to the store."""
        out = []
        listed = {sh["dir"] for sh in self.shards}
        sp = self.path / SHARDS
        if sp.is_dir():
            out += [f"{SHARDS}/{p.name}" for p in sorted(sp.iterdir()) if p.name not in listed]
        out += [p for p in foreign_entries(self.path) if p.rstrip("/") != SHARDS]
        return out

    def info(self) -> dict:
        """A JSON-able summary of the store."""
        size = sum((self.path / SHARDS / sh["dir"] / n).stat().st_size for sh in self.shards for n in sh["files"])
        return {
            "path": str(self.path),
            "num_tokens": self.num_tokens,
            "num_sentences": self.num_sentences,
            "sites": self.sites,
            "neurons_per_site": self.neurons_per_site,
            "num_neurons": self.num_neurons(),
            "dtype": self.dtype,
            "num_shards": len(self.shards),
            "bytes_on_disk": int(size),
            "identity": self.identity,
            "meta": self.meta,
        }


def write_store(
    path: str | os.PathLike,
    activations: Mapping[str, np.ndarray],
    sentence_ids: Sequence[int] | np.ndarray,
    word_ids: Sequence[int] | np.ndarray,
    meta: Mapping[str, Any] | None = None,
    *,
    dtype: str = "fp32",
    shard_size: int = 65536,
    overwrite: bool = False,
) -> ActivationStore:
    """Build a store from arrays made anywhere (another library, a synthetic test).

    ``activations`` maps site names to ``[tokens, units]`` arrays in corpus order (sentence by
    sentence, word by word). Such a store carries no corpus fingerprint; it is joined with a corpus by
    (sentence, word) ids. ``meta`` may name the ``model``; it is kept in the manifest.
    Shards are cut at ``shard_size`` rows (not at sentence boundaries).
    """
    if not activations:
        raise StoreError("write_store: no activations given")
    sites = list(activations)
    sent = np.asarray(sentence_ids, dtype=np.int64).reshape(-1)
    word = np.asarray(word_ids, dtype=np.int64).reshape(-1)
    n = len(sent)
    for s, a in activations.items():
        if np.ndim(a) != 2 or len(a) != n:
            raise StoreError(f"write_store: site {s!r} has shape {np.shape(a)}, expected ({n}, units)")
    if len(word) != n:
        raise StoreError(f"write_store: {n} sentence ids but {len(word)} word ids")
    if n and (np.any(np.diff(sent) < 0)):
        raise StoreError("write_store: rows must be in corpus order (sentence ids non-decreasing)")
    meta = dict(meta or {})
    identity = {
        "source": "arrays",
        "model": meta.get("model"),
        "corpus_fingerprint": None,
        "created": meta.get("created", None),
    }
    meta.setdefault("written_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
    writer = StoreWriter(
        path,
        sites=sites,
        neurons_per_site={s: int(np.shape(a)[1]) for s, a in activations.items()},
        dtype=dtype,
        identity=identity,
        meta=meta,
        overwrite=True if overwrite else False,
    )
    if int(shard_size) < 1:
        raise StoreError(f"write_store: shard_size={shard_size!r}; expected at least 1 row per shard")
    # write_store always builds afresh: an existing store at path is refused unless overwrite
    with writer.locked():
        if (Path(path) / MANIFEST).exists() and not overwrite:
            raise StoreMismatchError(f"{Path(path) / MANIFEST}: a store already exists here (overwrite=True replaces it)")
        if overwrite:
            writer._wipe()
        writer.open()
        shard_size = int(shard_size)
        num = 0
        for i, a in enumerate(range(0, max(n, 1), shard_size)):
            b = min(a + shard_size, n)
            writer.write_shard(i, {s: np.asarray(act[a:b]) for s, act in activations.items()}, sent[a:b], word[a:b])
            num += 1
        return writer.finalize(num)
