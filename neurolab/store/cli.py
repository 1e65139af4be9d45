"""``neurolab store info|verify|list|import|export``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import NeurolabError

from .format import MANIFEST, StoreError
from .store import ActivationStore


def _verify(path: str) -> int:
    """``neurolab store verify PATH``: 0 intact, 1 damaged (problems on stderr), 2 not a store."""
    if Path(path).is_dir() and (Path(path) / MANIFEST).exists():
        try:
            store = ActivationStore.open(path, verify="never")
        except StoreError as e:  # the manifest itself is damaged
            sys.stderr.write(f"{e}\n")
            sys.stdout.write(f"{path}: CORRUPT: the manifest cannot be trusted\n")
            return 1
    else:
        store = ActivationStore.open(path, verify="never")  # raises: not a store
    problems = store.verify()
    strays = store.stray_entries()
    for p in problems:
        sys.stderr.write(p + "\n")
    for s in strays:
        sys.stderr.write(f"{store.path / s}: not part of the store (left by a killed or concurrent writer?); "
                         "remove it\n")
    missing = sum(1 for p in problems if p.endswith("shard directory missing"))
    files = sum(len(sh["files"]) + 1 for sh in store.shards if (store.path / "shards" / sh["dir"]).is_dir())
    status = "CORRUPT" if problems else ("STRAY FILES" if strays else "OK")
    sys.stdout.write(
        f"{path}: {status}: {len(store.shards)} shards ({missing} shard directories missing), {files} files checked, "
        f"{len(problems)} problems, {len(strays)} stray entries\n"
    )
    return 0 if status == "OK" else 1


def default_cache_root() -> Path:
    """Where stores without an explicit ``store.dir`` live: ``$NEUROLAB_CACHE/stores`` (default
    ``~/.cache/neurolab/stores``), as ``conf/paths/default.yaml`` says."""
    return Path(os.environ.get("NEUROLAB_CACHE") or Path.home() / ".cache" / "neurolab") / "stores"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _list(root: str | None) -> int:
    """``neurolab store list [ROOT]``: the stores of the cache (or ROOT), one line each, with sizes."""
    base = Path(root) if root else default_cache_root()
    if not base.is_dir():
        sys.stdout.write(f"{base}: no stores (the directory does not exist)\n")
        return 0
    total, rows = 0, []
    for mp in sorted(base.glob(f"*/{MANIFEST}")):
        d = mp.parent
        try:
            m = json.loads(mp.read_text())
        except (OSError, ValueError):
            rows.append((d.name, "?", "?", "?", "unreadable manifest", _size(d)))
            continue
        meta = m.get("meta") or {}
        size = _size(d)
        total += size
        state = "complete" if m.get("complete") else "incomplete (an interrupted extraction: rerun to resume)"
        rows.append((d.name, str(meta.get("model") or "?"), str(meta.get("corpus") or "?"),
                     f"{len(m.get('sites') or [])} sites, {int(m.get('num_tokens') or 0)} rows, {m.get('dtype')}",
                     state, size))
    for name, model, corpus, shape, state, size in rows:
        sys.stdout.write(f"{size / 2**20:10.1f} MB  {name}\n{'':15}model {model}, corpus {corpus}, {shape}, {state}\n")
    sys.stdout.write(f"{len(rows)} stores, {total / 2**20:.1f} MB in {base}\n")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="neurolab store", description="Inspect, check or import activation stores.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="print a JSON summary of a store")
    p_info.add_argument("path")
    p_ver = sub.add_parser("verify", help="check every file (headers, checksums, shard records, non-finite values) "
                                          "and list stray files; exit 1 if anything is wrong")
    p_ver.add_argument("path")
    p_list = sub.add_parser("list", help="list the stores of the cache ($NEUROLAB_CACHE/stores) or of ROOT, with sizes")
    p_list.add_argument("root", nargs="?", default=None)
    from .importers import add_import_parser  # NeuroX HDF5/JSON import

    add_import_parser(sub)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "info":
            store = ActivationStore.open(args.path)
            sys.stdout.write(json.dumps(store.info(), indent=2) + "\n")
            return 0
        if args.cmd == "verify":
            return _verify(args.path)
        if args.cmd == "list":
            return _list(args.root)
        return args.func(args)
    except (NeurolabError, StoreError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"neurolab store {args.cmd}: error: {e}\n")
        return 2
