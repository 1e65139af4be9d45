"""Record what users see from every method: ``ranking.json`` bytes and ``metrics.json`` values.

Runs the real CLI once per method (default config, seed 42) on a corpus and writes a JSON digest:
for each run the sha256 of ``ranking.json`` and the metrics without timings. Two digests made
before and after a change are compared with ``--compare``::

    python tests/regression/record_outputs.py --corpus demo --out /tmp/before-demo.json
    python tests/regression/record_outputs.py --corpus demo --out /tmp/after-demo.json --compare /tmp/before-demo.json

``--corpus ewt_dev`` needs ``../shared/data/ud-english-ewt`` (or ``NEUROLAB_DATA``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# (name, verb, overrides): every way to rank neurons, as a user starts it
RUNS = [
    ("linear", "probe", ["probe=linear"]),
    ("linear_path", "probe", ["probe=linear", "method.ordering=path"]),
    ("linear_mass", "probe", ["probe=linear", "method.ordering=mass"]),
    ("gaussian", "probe", ["probe=gaussian"]),
    ("neuron_mask", "probe", ["probe=neuron_mask"]),
    ("probeless", "rank", ["method=probeless"]),
    ("iou", "rank", ["method=iou"]),
    ("ap", "rank", ["method=ap"]),
    ("selectivity", "rank", ["method=selectivity"]),
    ("random_forest", "rank", ["method=random_forest"]),
]


# fields a change added on purpose (documented): a difference only there is reported, not failed
ADDED = {"linear_mass": {"extra.ordering"}}


def _digest(run_dir: Path) -> dict:
    out = {}
    r = run_dir / "ranking.json"
    if r.exists():
        out["ranking_sha256"] = hashlib.sha256(r.read_bytes()).hexdigest()
        out["ranking"] = json.loads(r.read_text())
    m = run_dir / "metrics.json"
    if m.exists():
        metrics = json.loads(m.read_text())
        out["metrics"] = {k: v for k, v in sorted(metrics.items()) if not k.startswith("time/")}
    return out


def _added(old: dict, new: dict, path: str = "") -> set | None:
    """Dotted keys present in ``new`` only, when that is the only difference (else None)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return None if old != new else set()
    if set(old) - set(new):
        return None
    out = {f"{path}{k}" for k in set(new) - set(old)}
    for k in old:
        sub = _added(old[k], new[k], f"{path}{k}.")
        if sub is None:
            return None
        out |= sub
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="demo")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="where stores and run directories go (default: a temp dir)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these names")
    ap.add_argument("--compare", default=None, help="a digest to compare with: exit 1 on any difference")
    ap.add_argument("--verb-map", default=None,
                    help="JSON {name: [verb, overrides...]} replacing RUNS entries (after a CLI change)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="neurolab-record-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / f"store-{args.corpus}"
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    common = [f"corpus={args.corpus}", f"store.dir={store}", "logger=none", "seed=42"]
    runs = list(RUNS)
    if args.verb_map:
        remap = json.loads(args.verb_map)
        runs = [(n, *(remap[n][0], remap[n][1:])) if n in remap else (n, v, o) for n, v, o in runs]
    digest: dict = {"corpus": args.corpus, "runs": {}}
    for name, verb, overrides in runs:
        if args.only and name not in args.only:
            continue
        run_dir = work / f"{args.corpus}-{name}"
        cmd = [sys.executable, "-m", "neurolab.cli", verb, *common, *overrides, f"hydra.run.dir={run_dir}"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.stderr.write(f"{name}: exit {p.returncode}\n{p.stderr[-3000:]}\n")
            digest["runs"][name] = {"error": p.returncode}
            continue
        digest["runs"][name] = _digest(run_dir)
        sys.stderr.write(f"{name}: ok\n")
    Path(args.out).write_text(json.dumps(digest, indent=1, sort_keys=True) + "\n")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())["runs"]
        bad = 0
        for name, new in digest["runs"].items():
            o = old.get(name)
            if o is None:
                continue
            if o.get("ranking_sha256") != new.get("ranking_sha256"):
                added = _added(o.get("ranking") or {}, new.get("ranking") or {})
                if added is not None and added <= ADDED.get(name, set()):
                    sys.stderr.write(f"{name}: ranking.json has the documented new fields {sorted(added)}, "
                                     "otherwise the same\n")
                else:
                    sys.stderr.write(f"{name}: ranking.json differs\n")
                    bad += 1
            om, nm = o.get("metrics", {}), new.get("metrics", {})
            diff = {k: (om.get(k), nm.get(k)) for k in sorted(set(om) | set(nm)) if om.get(k) != nm.get(k)}
            if diff:
                sys.stderr.write(f"{name}: metrics differ: {diff}\n")
                bad += 1
        sys.stderr.write("same\n" if not bad else f"{bad} differences\n")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
