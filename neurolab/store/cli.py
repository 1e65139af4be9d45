"""``neurolab store info|verify|import``."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import NeurolabError
from pathlib import Path

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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="neurolab store", description="Inspect, check or import activation stores.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="print a JSON summary of a store")
    p_info.add_argument("path")
    p_ver = sub.add_parser("verify", help="check every file (headers, checksums, shard records, non-finite values) "
                                          "and list stray files; exit 1 if anything is wrong")
    p_ver.add_argument("path")
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
        return args.func(args)
    except (NeurolabError, StoreError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"neurolab store {args.cmd}: error: {e}\n")
        return 2
