"""On-disk layout of an activation store.

A store is a directory::

    manifest.json            schema version, identity (model, sites, dtype, corpus fingerprint ...),
                             the list of finished shards and whether the store is complete
    shards/000000/           one directory per shard, renamed into place only when complete
        index.npy            int32 [rows, 2]: (sentence_id, word_id) per row
        <site>.npy           [rows, units] in the storage dtype (bf16 is kept as raw uint16)
        shard.json           rows and the sha256 of every file of the shard

No pickle anywhere: ``.npy`` files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NeurolabError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
SHARD_META = "shard.json"
INDEX_FILE = "index.npy"

#: storage dtype name -> numpy dtype used on disk
DTYPES = {"fp16": np.float16, "fp32": np.float32, "bf16": np.uint16}
DTYPE_ALIASES = {
    "float16": "fp16", "half": "fp16", "fp16": "fp16",
    "float32": "fp32", "float": "fp32", "fp32": "fp32",
    "bfloat16": "bf16", "bf16": "bf16",
}


class StoreError(NeurolabError, RuntimeError):
    """A store cannot be opened, written or trusted; the message names the file."""


class StoreMismatchError(StoreError):
    """A store directory holds a store built from another model, corpus or setting."""


def normalize_dtype(name: str) -> str:
    key = str(name).lower()
    if key not in DTYPE_ALIASES:
        raise StoreError(f"unknown storage dtype {name!r}; expected one of fp16, bf16, fp32")
    return DTYPE_ALIASES[key]


def site_filename(site: str) -> str:
    if not site or "/" in site or "\\" in site or site.startswith("."):
        raise StoreError(f"site name {site!r} cannot be stored (no slashes, not empty)")
    return f"{site}.npy"


def shard_dirname(shard_id: int) -> str:
    return f"{shard_id:06d}"


def to_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """Convert float activations to the storage representation of ``dtype``."""
    a = np.asarray(array)
    if dtype == "bf16":
        # round-to-nearest-even on the upper 16 bits of float32
        f = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        rounding = ((f >> 16) & 1) + np.uint32(0x7FFF)
        return ((f + rounding) >> 16).astype(np.uint16)
    with np.errstate(over="ignore"):  # fp16 overflow -> inf; StoreWriter counts and reports it
        return np.ascontiguousarray(a, dtype=DTYPES[dtype])


def from_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """Storage representation -> float32 (a new array; never a view of the file)."""
    if dtype == "bf16":
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32).copy() if array.dtype == np.float32 else array.astype(np.float32)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy, fsync it, and return its sha256."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return sha256_file(path)


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from None


_TORCH: Any = None


def _torch():
    """torch if importable (its fp16/bf16 -> fp32 conversion is vectorised; numpy's fp16 is not)."""
    global _TORCH
    if _TORCH is None:
        try:
            import torch

            _TORCH = torch
        except ImportError:  # pragma: no cover
            _TORCH = False
    return _TORCH or None


#: elements per conversion call: below torch's parallel grain (32768), so a call runs in the calling
#: thread; waking torch's thread pool for each block is slow on busy machines and in loader workers
_CONVERT_BLOCK = 32768


def read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data_offset)`` of a ``.npy`` file; the data is not read.

    Raises :class:`StoreError` naming the file when it cannot be read.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            return tuple(shape), bool(fortran), dtype, fh.tell()
    except Exception as e:  # OSError, ValueError, SyntaxError or tokenize errors of a damaged header
        raise StoreError(f"{path}: cannot read shard file ({type(e).__name__}: {e})") from None


def convert_into(dst: np.ndarray, src: np.ndarray, dtype: str) -> None:
    """``dst[...] = float32(src)`` for ``src`` in the storage representation of ``dtype``.

    fp16/bf16 go through torch's vectorised conversion (numpy converts fp16 element by element,
    several times slower), in blocks that stay in the calling thread.
    """
    if dtype == "fp32":
        dst[...] = src
        return
    torch = _torch() if src.size >= 2048 else None
    if torch is None:
        dst[...] = from_storage(src, "bf16") if dtype == "bf16" else src
        return
    src = np.asarray(src)
    step = max(1, _CONVERT_BLOCK // max(src.shape[1], 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # from_numpy of a read-only memory map / buffer
        for a in range(0, src.shape[0], step):
            t = torch.from_numpy(src[a : a + step])
            if dtype == "bf16":
                t = t.view(torch.bfloat16)
            torch.from_numpy(dst[a : a + step]).copy_(t)
