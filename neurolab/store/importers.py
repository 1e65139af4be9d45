"""Import activations made elsewhere into a store, and export a store to the older toolkit's format.

Formats of the older toolkit (NeuroX 1.0.9, ``neurox.data.writer``) that are read here:

``neurox-hdf5``
    One dataset per sentence, named by the sentence's 0-based line number in the input file
    (``"0"``, ``"1"`` ...), shaped ``[layers, words, units]`` (float32 or float16), plus a dataset
    ``sentence_to_index`` whose element 0 is a JSON object mapping the (detokenized) sentence text to
    that name.
``neurox-json``
    JSON lines, one per sentence: ``{"linex_index": i, "features": [{"token": w, "layers":
    [{"index": k, "values": [...]}, ...]}, ...]}`` (values rounded to 8 decimals).

Its layer axis holds the embeddings first (NeuroX layer 0 -> site ``embeddings``) and then every
block's output (NeuroX layer ``l >= 1`` -> site ``layers.{l-1}``), unless the file was written with
``--ignore_embeddings`` (axis ``k`` is NeuroX layer ``k + 1``) or ``--filter_layers`` (pass the same
list as ``layers``). Files written with ``--decompose_layers`` (``name-layer{l}.hdf5``) are passed
together; their layer numbers are read from their names.

NeuroX does not store the words it was given, so the rows are mapped to (sentence, word) with the
sentence file the user gave NeuroX (one sentence per line, words separated by single spaces, split
exactly as NeuroX splits them). Every sentence's row count is checked against its word count; a
mismatch is an error that names the sentence (``on_mismatch="skip"`` leaves such sentences out and
``"prefix"`` keeps the rows of sentences that NeuroX truncated; both count and report what they did).

Example::

    >>> from neurolab.store.importers import import_neurox_hdf5  # doctest: +SKIP
    >>> store = import_neurox_hdf5("acts.hdf5", "sentences.txt", "stores/acts", model="bert-base-cased")  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .format import MANIFEST, StoreError, StoreMismatchError, normalize_dtype
from .store import ActivationStore, StoreWriter, write_store

log = logging.getLogger(__name__)

__all__ = [
    "read_sentence_file",
    "neurox_layer_to_site",
    "import_neurox_hdf5",
    "import_neurox_json",
    "import_numpy",
    "export_neurox_hdf5",
    "export_numpy",
    "add_import_parser",
]

FORMATS = ("neurox-hdf5", "neurox-json", "numpy")
_DECOMPOSED = re.compile(r"-layer(\d+)\.(hdf5|json)$")


# -- helpers -------------------------------------------------------------------------------------
def read_sentence_file(path: str | Path) -> list[list[str]]:
    """Words of each line of a sentence file, split exactly as NeuroX splits them.

    NeuroX strips each line and splits it on single spaces, so an empty line is one (empty) word
    and two spaces in a row make an empty word; the row counts of its files follow that rule.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip().split(" ") for line in f]
    except FileNotFoundError:
        raise StoreError(f"{path}: sentence file not found") from None
    except UnicodeDecodeError as e:
        raise StoreError(f"{path}: not UTF-8 text ({e})") from None


def neurox_layer_to_site(layer: int) -> str:
    """NeuroX layer number -> neurolab site name (0 -> ``embeddings``, l -> ``layers.{l-1}``)."""
    layer = int(layer)
    if layer < 0:
        raise StoreError(f"NeuroX layer numbers are >= 0, got {layer}")
    return "embeddings" if layer == 0 else f"layers.{layer - 1}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def _parse_layers(layers: str | Sequence[int] | None) -> list[int] | None:
    if layers is None:
        return None
    if isinstance(layers, str):
        try:
            return [int(x) for x in layers.split(",") if x.strip() != ""]
        except ValueError:
            raise StoreError(f"layers {layers!r}: expected a comma-separated list of NeuroX layer numbers") from None
    return [int(x) for x in layers]


def _layer_numbers(paths: list[Path], counts: list[int], layers, ignore_embeddings: bool) -> list[list[int]]:
    """NeuroX layer number of each layer-axis entry of each file."""
    total = sum(counts)
    given = _parse_layers(layers)
    if given is not None:
        if len(given) != total:
            raise StoreError(
                f"layers={given} names {len(given)} layers but the files hold {total} "
                f"({', '.join(f'{p.name}: {c}' for p, c in zip(paths, counts))})"
            )
        out, i = [], 0
        for c in counts:
            out.append(given[i : i + c])
            i += c
        return out
    names = [_DECOMPOSED.search(p.name) for p in paths]
    if all(m is not None for m in names) and all(c == 1 for c in counts):
        return [[int(m.group(1))] for m in names]  # NeuroX --decompose_layers output
    if len(paths) > 1:
        raise StoreError(
            "several activation files were given but their layers are unknown: name them like NeuroX's "
            "--decompose_layers output (name-layer{l}.hdf5, one layer each) or pass layers=l1,l2,..."
        )
    off = 1 if ignore_embeddings else 0
    return [list(range(off, off + counts[0]))]


class _Buffer:
    """Collects rows and writes a shard every ``shard_size`` rows."""

    def __init__(self, writer: StoreWriter, sites: list[str], shard_size: int):
        self.writer, self.sites, self.shard_size = writer, sites, max(int(shard_size), 1)
        self.parts: dict[str, list[np.ndarray]] = {s: [] for s in sites}
        self.sent: list[np.ndarray] = []
        self.word: list[np.ndarray] = []
        self.rows = 0
        self.shards = 0
        self.total = 0

    def add(self, sentence_id: int, per_site: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(per_site.values())))
        for s in self.sites:
            self.parts[s].append(per_site[s])
        self.sent.append(np.full(n, sentence_id, dtype=np.int64))
        self.word.append(np.arange(n, dtype=np.int64))
        self.rows += n
        self.total += n
        while self.rows >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        acts = {}
        for s in self.sites:
            a = np.concatenate(self.parts[s], axis=0)
            acts[s], rest = a[:n], a[n:]
            self.parts[s] = [rest] if len(rest) else []
        sent, word = np.concatenate(self.sent), np.concatenate(self.word)
        self.sent, self.word = ([sent[n:]] if len(sent) > n else []), ([word[n:]] if len(word) > n else [])
        self.writer.write_shard(self.shards, acts, sent[:n], word[:n])
        self.shards += 1
        self.rows -= n

    def close(self) -> int:
        if self.rows or self.shards == 0:
            self._flush(self.rows)
        return self.shards


def _new_writer(out, sites, units, dtype, identity, meta, overwrite) -> StoreWriter:
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise StoreMismatchError(f"{out / MANIFEST}: a store already exists here (pass --overwrite to replace it)")
    w = StoreWriter(out, sites=sites, neurons_per_site=units, dtype=dtype, identity=identity, meta=meta, overwrite=True)
    if overwrite:
        w._wipe()
    elif out.exists() and any(out.iterdir()):
        raise StoreMismatchError(f"{out}: directory is not empty; refusing to import into it (--overwrite replaces "
                                 "a neurolab store or an empty directory, nothing else)")
    return w.open()


# -- readers: each yields (sentence_id, [layers, words, units] float array) in sentence order --------
class _HDF5Reader:
    def __init__(self, path: Path):
        import h5py

        self.path = path
        try:
            self.f = h5py.File(path, "r")
        except FileNotFoundError:
            raise StoreError(f"{path}: activation file not found") from None
        except OSError as e:
            raise StoreError(f"{path}: not a readable HDF5 file ({e})") from None
        names = [k for k in self.f.keys() if k != "sentence_to_index"]
        bad = [k for k in names if not k.isdigit()]
        if bad:
            raise StoreError(f"{path}: unexpected datasets {bad[:5]}; a NeuroX HDF5 file names its datasets 0..N-1")
        self.ids = sorted(int(k) for k in names)
        if "sentence_to_index" not in self.f:
            log.warning("%s: no sentence_to_index dataset (not written by NeuroX's writer?)", path)
        else:
            try:
                raw = self.f["sentence_to_index"][0]
                mapping = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
                vals = sorted(int(v) for v in mapping.values())
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise StoreError(f"{path}: sentence_to_index is not a JSON object of sentence -> index ({e})") from None
            if vals != self.ids:
                missing = sorted(set(vals) - set(self.ids))[:5]
                extra = sorted(set(self.ids) - set(vals))[:5]
                raise StoreError(
                    f"{path}: sentence_to_index lists {len(vals)} sentences but the file holds {len(self.ids)} "
                    f"datasets (listed but missing: {missing}; present but not listed: {extra})"
                )
        if not self.ids:
            raise StoreError(f"{path}: holds no sentence datasets")
        first = self.f[str(self.ids[0])]
        if first.ndim != 3:
            raise StoreError(f"{path}: dataset '{self.ids[0]}' has shape {first.shape}, expected [layers, words, units]")
        self.num_layers, self.units = int(first.shape[0]), int(first.shape[2])

    def check(self, num_sentences: int, sentences_path: Path) -> None:
        if self.ids[-1] >= num_sentences:
            raise StoreError(
                f"{self.path}: holds sentence {self.ids[-1]} (0-based) but {sentences_path} has only "
                f"{num_sentences} lines"
            )
        if len(self.ids) != num_sentences:
            missing = sorted(set(range(num_sentences)) - set(self.ids))
            raise StoreError(
                f"{self.path}: holds {len(self.ids)} sentences but {sentences_path} has {num_sentences} lines; "
                f"no activations for sentence {missing[0]} (0-based line {missing[0]}, line {missing[0] + 1} "
                f"of {sentences_path.name})"
            )

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for i in self.ids:
            ds = self.f[str(i)]
            if ds.ndim != 3 or ds.shape[0] != self.num_layers or ds.shape[2] != self.units:
                raise StoreError(
                    f"{self.path}: sentence {i} has shape {ds.shape}, expected [{self.num_layers}, words, {self.units}]"
                )
            yield i, ds[()]

    def close(self) -> None:
        self.f.close()


class _JSONReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.f = open(path, encoding="utf-8")
        except FileNotFoundError:
            raise StoreError(f"{path}: activation file not found") from None
        first = self._peek()
        self.num_layers = len(first[1])
        self.units = first[1].shape[2] if first[1].size else 0

    def _parse(self, lineno: int, line: str) -> tuple[int, np.ndarray]:
        try:
            obj = json.loads(line)
            sid = int(obj["linex_index"])
            feats = obj["features"]
            if not feats:
                return sid, np.zeros((getattr(self, "num_layers", 0), 0, getattr(self, "units", 0)), np.float32)
            layers = [[lay["values"] for lay in sorted(ft["layers"], key=lambda d: d["index"])] for ft in feats]
            arr = np.asarray(layers, dtype=np.float32)  # [words, layers, units]
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"{self.path}, line {lineno}: not a NeuroX JSON activation record "
                f"({{'linex_index', 'features': [{{'token', 'layers': [{{'index', 'values'}}]}}]}}): {e}"
            ) from None
        if arr.ndim != 3:
            raise StoreError(f"{self.path}, line {lineno}: words have different numbers of layers or units")
        return sid, np.ascontiguousarray(arr.transpose(1, 0, 2))

    def _peek(self) -> tuple[int, np.ndarray]:
        pos = self.f.tell()
        line = self.f.readline()
        self.f.seek(pos)
        if not line.strip():
            raise StoreError(f"{self.path}: empty activation file")
        return self._parse(1, line)

    def check(self, num_sentences: int, sentences_path: Path) -> None:
        pass  # checked while streaming (a JSON lines file cannot be counted without reading it)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for lineno, line in enumerate(self.f, start=1):
            if not line.strip():
                continue
            sid, arr = self._parse(lineno, line)
            if arr.shape[1] and (arr.shape[0] != self.num_layers or arr.shape[2] != self.units):
                raise StoreError(
                    f"{self.path}, line {lineno} (sentence {sid}): {arr.shape[0]} layers x {arr.shape[2]} units, "
                    f"expected {self.num_layers} x {self.units}"
                )
            yield sid, arr

    def close(self) -> None:
        self.f.close()


def _import_neurox(
    fmt: str,
    activations: str | Path | Sequence[str | Path],
    sentences: str | Path,
    out: str | Path,
    *,
    dtype: str,
    model: str | None,
    layers,
    ignore_embeddings: bool,
    shard_size: int,
    overwrite: bool,
    on_mismatch: str,
) -> ActivationStore:
    if on_mismatch not in ("error", "skip", "prefix"):
        raise StoreError(f"on_mismatch={on_mismatch!r}: expected error, skip or prefix")
    dtype = normalize_dtype(dtype)
    paths = [Path(activations)] if isinstance(activations, (str, Path)) else [Path(p) for p in activations]
    if not paths:
        raise StoreError("no activation files given")
    sentences = Path(sentences)
    words = read_sentence_file(sentences)
    reader_cls = _HDF5Reader if fmt == "neurox-hdf5" else _JSONReader
    readers = []
    try:
        for p in paths:
            readers.append(reader_cls(p))
        numbers = _layer_numbers(paths, [r.num_layers for r in readers], layers, ignore_embeddings)
        sites = [neurox_layer_to_site(n) for nums in numbers for n in nums]
        dup = sorted({s for s in sites if sites.count(s) > 1})
        if dup:
            raise StoreError(f"NeuroX layers map to the same site twice: {dup}")
        units = {}
        for r, nums in zip(readers, numbers):
            for n in nums:
                units[neurox_layer_to_site(n)] = r.units
        for r in readers:
            r.check(len(words), sentences)
        identity = {
            "source": fmt,
            "model": model,
            "corpus_fingerprint": None,
            "sentences_sha256": _sha256(sentences),
            "activations": [p.name for p in paths],
        }
        meta = {
            "model": model,
            "imported_from": [str(p.resolve()) for p in paths],
            "sentences_file": str(sentences.resolve()),
            "neurox_layers": [n for nums in numbers for n in nums],
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        writer = _new_writer(out, sites, units, dtype, identity, meta, overwrite)
        buf = _Buffer(writer, sites, shard_size)
        skipped: list[dict[str, Any]] = []
        truncated: list[dict[str, Any]] = []
        expected = 0
        iters = [iter(r) for r in readers]
        while True:
            items = [next(it, None) for it in iters]
            if all(x is None for x in items):
                break
            if any(x is None for x in items):
                short = paths[[x is None for x in items].index(True)]
                raise StoreError(f"{short}: ends before sentence {expected} while the other activation files go on")
            ids = {sid for sid, _ in items}
            if len(ids) != 1:
                raise StoreError(f"activation files disagree on the sentence order: {[(p.name, s) for p, (s, _) in zip(paths, items)]}")
            sid = items[0][0]
            if sid >= len(words):
                raise StoreError(f"{paths[0]}: holds sentence {sid} (0-based) but {sentences} has only {len(words)} lines")
            if sid != expected:
                raise StoreError(
                    f"{paths[0]}: expected sentence {expected} (line {expected + 1} of {sentences.name}) next, found "
                    f"sentence {sid}; the file must hold every sentence of the sentence file, in order"
                )
            expected += 1
            n_rows = {a.shape[1] for _, a in items}
            n_words = len(words[sid])
            if n_rows != {n_words}:
                got = min(n_rows)
                what = (
                    f"sentence {sid} (line {sid + 1} of {sentences}, {n_words} words: "
                    f"{' '.join(words[sid])[:80]!r}) has {'/'.join(map(str, sorted(n_rows)))} activation rows in "
                    f"{', '.join(p.name for p in paths)}"
                )
                if on_mismatch == "prefix" and len(n_rows) == 1 and got < n_words:
                    truncated.append({"sentence": sid, "words": n_words, "rows": got})
                elif on_mismatch == "error":
                    raise StoreError(
                        what + "; the sentence file must be the one NeuroX was given (on_mismatch=skip leaves such "
                        "sentences out, on_mismatch=prefix keeps the rows of truncated ones)"
                    )
                else:
                    skipped.append({"sentence": sid, "words": n_words, "rows": sorted(n_rows)})
                    continue
            per_site = {}
            for (_, arr), nums in zip(items, numbers):
                for k, n in enumerate(nums):
                    per_site[neurox_layer_to_site(n)] = arr[k]
            buf.add(sid, per_site)
        if expected != len(words):
            raise StoreError(
                f"{paths[0]}: holds {expected} sentences but {sentences} has {len(words)} lines; no activations for "
                f"sentence {expected} (line {expected + 1})"
            )
        num = buf.close()
        report = {
            "num_sentences": len(words),
            "num_rows": buf.total,
            "skipped_sentences": skipped,
            "truncated_sentences": truncated,
        }
        if skipped:
            log.warning("import: %d sentences left out (row count != word count): %s", len(skipped), [d["sentence"] for d in skipped[:20]])
        if truncated:
            log.warning("import: %d sentences truncated by NeuroX, their first rows kept: %s", len(truncated), [d["sentence"] for d in truncated[:20]])
        store = writer.finalize(num, meta={"import": report})
        log.info("imported %d rows of %d sentences (%d sites) into %s", buf.total, len(words), len(sites), store.path)
        return store
    finally:
        for r in readers:
            r.close()


def import_neurox_hdf5(
    activations: str | Path | Sequence[str | Path],
    sentences: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp16",
    model: str | None = None,
    layers: str | Sequence[int] | None = None,
    ignore_embeddings: bool = False,
    shard_size: int = 65536,
    overwrite: bool = False,
    on_mismatch: str = "error",
) -> ActivationStore:
    """Import NeuroX HDF5 activation file(s) into a new store at ``out``; streams sentence by sentence.

    ``layers``: the NeuroX layer numbers of the file's layer axis (as given to its
    ``--filter_layers``); by default ``0..L-1`` (``1..L`` with ``ignore_embeddings``).
    Rows are (sentence = line of ``sentences``, word = position in the line).
    """
    return _import_neurox(
        "neurox-hdf5", activations, sentences, out, dtype=dtype, model=model, layers=layers,
        ignore_embeddings=ignore_embeddings, shard_size=shard_size, overwrite=overwrite, on_mismatch=on_mismatch,
    )


def import_neurox_json(
    activations: str | Path | Sequence[str | Path],
    sentences: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp16",
    model: str | None = None,
    layers: str | Sequence[int] | None = None,
    ignore_embeddings: bool = False,
    shard_size: int = 65536,
    overwrite: bool = False,
    on_mismatch: str = "error",
) -> ActivationStore:
    """Import NeuroX JSON-lines activation file(s) into a new store at ``out`` (see :func:`import_neurox_hdf5`)."""
    return _import_neurox(
        "neurox-json", activations, sentences, out, dtype=dtype, model=model, layers=layers,
        ignore_embeddings=ignore_embeddings, shard_size=shard_size, overwrite=overwrite, on_mismatch=on_mismatch,
    )


def import_numpy(
    path: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp16",
    model: str | None = None,
    sites: Sequence[str] | None = None,
    shard_size: int = 65536,
    overwrite: bool = False,
) -> ActivationStore:
    """Import a ``.npz`` holding ``sentence_ids``, ``word_ids`` and one ``[rows, units]`` array per site.

    Every other key of the archive is a site (in archive order unless ``sites`` is given). Read with
    ``allow_pickle=False``: object arrays are refused.
    """
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"{path}: not a readable .npz archive ({e})") from None
    if not hasattr(z, "files"):
        raise StoreError(f"{path}: a single .npy array; expected an .npz archive with sentence_ids, word_ids and sites")
    with z:
        for key in ("sentence_ids", "word_ids"):
            if key not in z.files:
                raise StoreError(f"{path}: no {key!r} array; the archive holds {z.files}")
        names = [k for k in z.files if k not in ("sentence_ids", "word_ids")]
        if sites is not None:
            unknown = [s for s in sites if s not in names]
            if unknown:
                raise StoreError(f"{path}: sites {unknown} are not in the archive, which holds {names}")
            names = list(sites)
        if not names:
            raise StoreError(f"{path}: no site arrays besides sentence_ids and word_ids")
        try:
            sent, word = z["sentence_ids"], z["word_ids"]
            acts = {s: z[s] for s in names}
        except ValueError as e:
            raise StoreError(f"{path}: {e} (object arrays are not accepted)") from None
        for k, a in [("sentence_ids", sent), ("word_ids", word)]:
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
                raise StoreError(f"{path}: {k} must be a 1-D integer array, got {a.dtype} {a.shape}")
        for s, a in acts.items():
            if a.ndim != 2 or len(a) != len(sent) or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise StoreError(f"{path}: site {s!r} is {a.dtype} {a.shape}, expected numbers [{len(sent)}, units]")
        meta = {"model": model, "imported_from": str(path.resolve()), "source": "numpy"}
        return write_store(out, acts, sent, word, meta, dtype=normalize_dtype(dtype), shard_size=shard_size, overwrite=overwrite)


# -- export --------------------------------------------------------------------------------------
def _sentence_spans(store: ActivationStore) -> Iterator[tuple[int, int, int]]:
    sid = store.sentence_ids
    if len(sid) == 0:
        return
    cuts = np.flatnonzero(np.diff(sid)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(sid)]])
    for a, b in zip(starts, stops):
        yield int(sid[a]), int(a), int(b)


def export_neurox_hdf5(
    store: ActivationStore | str | Path,
    out: str | Path,
    *,
    sites: Sequence[str] | None = None,
    sentences: str | Path | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a store as a NeuroX HDF5 activation file that ``neurox.data.loader.load_activations`` reads.

    ``sites`` (default: all) become the layer axis in the given order, so they must have the same
    width. The dataset of each sentence is named by its sentence id. ``sentence_to_index`` keys are
    the words of ``sentences`` (a sentence file) when given, else ``"sentence {id}"``.
    """
    import h5py

    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(store)
    sites = store._check_sites(sites)
    widths = {store.neurons_per_site[s] for s in sites}
    if len(widths) != 1:
        raise StoreError(f"NeuroX files stack layers of one width; sites {sites} have widths {sorted(widths)}")
    d = widths.pop()
    if dtype not in ("float32", "float16"):
        raise StoreError(f"dtype {dtype!r}: NeuroX files hold float32 or float16")
    words = read_sentence_file(sentences) if sentences is not None else None
    out = Path(out)
    if out.suffix != ".hdf5":
        raise StoreError(f"{out}: NeuroX reads HDF5 activations only from files named *.hdf5")
    tmp = out.with_name(f".{out.name}.tmp")
    index: dict[str, str] = {}
    gaps = 0
    with h5py.File(tmp, "w") as f:
        for sid, a, b in _sentence_spans(store):
            x = store.read(slice(a, b), sites).reshape(b - a, len(sites), d).transpose(1, 0, 2)
            if not np.array_equal(store.word_ids[a:b], np.arange(b - a)):
                gaps += 1
            f.create_dataset(str(sid), data=x.astype(dtype))
            text = " ".join(words[sid]) if words is not None and sid < len(words) else f"sentence {sid}"
            key, k = text, 1
            while key in index:
                k += 1
                key = f"{text} (Occurrence {k})"
            index[key] = str(sid)
        ds = f.create_dataset("sentence_to_index", (1,), dtype=h5py.special_dtype(vlen=str))
        ds[0] = json.dumps(index)
    tmp.replace(out)
    if gaps:
        log.warning("export: %d sentences have words without rows in the store; their rows are written in order", gaps)
    log.info("exported %d sentences x %d layers x %d units to %s", len(index), len(sites), d, out)
    return out


def export_numpy(store: ActivationStore | str | Path, out: str | Path, *, sites: Sequence[str] | None = None) -> Path:
    """Write a store (float32) as an ``.npz`` that :func:`import_numpy` reads back."""
    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(store)
    sites = store._check_sites(sites)
    arrays = {s: store.read(slice(None), [s]) for s in sites}
    out = Path(out)
    np.savez(out, sentence_ids=store.sentence_ids, word_ids=store.word_ids, **arrays)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


# -- command line --------------------------------------------------------------------------------
def _run_import(args: argparse.Namespace) -> int:
    common = dict(dtype=args.dtype, model=args.model, shard_size=args.shard_size, overwrite=args.overwrite)
    if args.format == "numpy":
        if len(args.activations) != 1:
            raise StoreError("--format numpy takes one .npz file")
        store = import_numpy(args.activations[0], args.out, **common)
    else:
        if not args.sentences:
            raise StoreError(f"--format {args.format} needs --sentences FILE (the sentence file NeuroX was given)")
        fn = import_neurox_hdf5 if args.format == "neurox-hdf5" else import_neurox_json
        store = fn(
            args.activations, args.sentences, args.out, layers=args.layers, ignore_embeddings=args.ignore_embeddings,
            on_mismatch=args.on_mismatch, **common,
        )
    sys.stdout.write(json.dumps(store.info(), indent=2) + "\n")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    sites = args.sites.split(",") if args.sites else None
    if args.format == "numpy":
        out = export_numpy(args.store, args.out, sites=sites)
    else:
        out = export_neurox_hdf5(args.store, args.out, sites=sites, sentences=args.sentences, dtype=args.dtype)
    sys.stdout.write(f"{out}\n")
    return 0


def add_import_parser(subparsers) -> None:
    """Add ``import`` and ``export`` to ``neurolab store``'s subcommands (each sets ``func``)."""
    p = subparsers.add_parser(
        "import",
        help="import NeuroX HDF5/JSON activations or a .npz of arrays into a new store",
        description="Import activations made elsewhere into a new store. NeuroX layer 0 becomes site "
        "'embeddings' and layer l >= 1 site 'layers.{l-1}'; rows are mapped to (sentence, word) with the "
        "sentence file NeuroX was given.",
    )
    p.add_argument("activations", nargs="+", help="activation file(s) (several for NeuroX --decompose_layers output)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--sentences", help="sentence file NeuroX was given (one sentence per line)")
    p.add_argument("--out", required=True, help="directory of the new store")
    p.add_argument("--dtype", default="fp16", help="storage dtype: fp16 (default), bf16, fp32")
    p.add_argument("--model", default=None, help="model name recorded in the manifest")
    p.add_argument("--layers", default=None, help="NeuroX layer numbers of the file's layers (its --filter_layers)")
    p.add_argument("--ignore-embeddings", action="store_true", help="the file was written with --ignore_embeddings")
    p.add_argument("--on-mismatch", default="error", choices=("error", "skip", "prefix"),
                   help="a sentence whose row count differs from its word count: fail (default), leave it out, "
                   "or keep the rows of a sentence NeuroX truncated")
    p.add_argument("--shard-size", type=int, default=65536, help="rows per shard")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.set_defaults(func=_run_import)

    e = subparsers.add_parser("export", help="export a store to a NeuroX HDF5 file or a .npz")
    e.add_argument("store")
    e.add_argument("--format", default="neurox-hdf5", choices=("neurox-hdf5", "numpy"))
    e.add_argument("--out", required=True)
    e.add_argument("--sites", default=None, help="comma-separated sites (default: all)")
    e.add_argument("--sentences", default=None, help="sentence file for sentence_to_index keys")
    e.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    e.set_defaults(func=_run_export)
