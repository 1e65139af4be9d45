"""``neurolab store info|verify|import``."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import NeurolabError
from .format import StoreError
from .store import ActivationStore


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="neurolab store", description="Inspect, check or import activation stores.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="print a JSON summary of a store")
    p_info.add_argument("path")
    p_ver = sub.add_parser("verify", help="recompute every checksum; exit 1 if anything is wrong")
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
            store = ActivationStore.open(args.path)
            problems = store.verify()
            for p in problems:
                sys.stderr.write(p + "\n")
            files = sum(len(sh["files"]) for sh in store.shards)
            sys.stdout.write(
                f"{args.path}: {'OK' if not problems else 'CORRUPT'}: {files} files in {len(store.shards)} shards checked, "
                f"{len(problems)} problems\n"
            )
            return 0 if not problems else 1
        return args.func(args)
    except (NeurolabError, StoreError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"neurolab store {args.cmd}: error: {e}\n")
        return 2
