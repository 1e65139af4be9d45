"""The planted suite on real activations (EWT dev x all-MiniLM-L6-v2) for the corpus-based methods,
the linear probe and the genetic selection; prints ONE JSON object.

    python tests/benchmarks/bench_planted.py [--store DIR] [--conllu FILE] [--sites layers.2,layers.5]
        [--effects 0.25,0.5,1] [--seeds 0] [--types focused,group,...] [--methods probeless,iou,...]
        [--probes linear,gaussian,neuron_mask] [--out DIR] [--max-sentences N]

* the source store: ``--store`` if it holds one, else extracted once (MiniLM, all_layers, fp16) and
  reused by later runs (the same default path as ``bench_methods.py``);
* the suite: every planted type x ``--effects`` x ``--seeds`` on the rows of ``--sites``
  (``neurolab.benchmark.build_suite``), under ``--out``/suite;
* the methods: the registered ones named in ``--methods`` and ``--probes`` (their ``conf/method/*.yaml``;
  genetic with ``k=3``, the largest planted set, and every neuron as a candidate; the linear probe
  with ``--linear-ordering``, default ``mass``: the elastic-net probe's weight mass, no extra fits);
* reads: rows read from each planted store during the run, over its rows (1.0 = one pass shared by
  every method);
* the result: seconds (suite, reads, each method), mean AP per method and type (over effects and
  seeds), AP per effect, and each method's planted ranks per case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def get_store(store_dir: Path, conllu: Path):
    from neurolab.store import ActivationStore

    if (store_dir / "manifest.json").exists():
        return ActivationStore.open(store_dir), {"reused": True}
    from neurolab.config import compose
    from neurolab.tasks.extract import extract_store

    cfg = compose("extract", [f"corpus.path={conllu}", "corpus.name=ewt_dev", f"store.dir={store_dir}", "sites=all_layers"],
                  run_dir=tempfile.mkdtemp(prefix="bench-extract-"))
    t = time.perf_counter()
    store = extract_store(cfg)
    return store, {"reused": False, "extract_s": round(time.perf_counter() - t, 2)}


class ReadCounter:
    """Counts the rows read from each store (the data module's reader and the store's own read)."""

    def __init__(self):
        self.rows: dict[str, int] = defaultdict(int)

    def install(self):
        import numpy as np

        from neurolab.data.reader import RowReader
        from neurolab.store import ActivationStore

        counter = self
        orig_rows, orig_range, orig_read = RowReader.read_rows, RowReader.read_range, ActivationStore.read

        def read_rows(reader, rows, *a, **kw):
            counter.rows[str(reader.root)] += len(rows)
            return orig_rows(reader, rows, *a, **kw)

        def read_range(reader, start, stop, *a, **kw):
            counter.rows[str(reader.root)] += max(int(stop) - int(start), 0)
            return orig_range(reader, start, stop, *a, **kw)

        def read(store, rows, *a, **kw):
            n = len(range(*rows.indices(store.num_tokens))) if isinstance(rows, slice) else int(np.asarray(rows).size)
            counter.rows[str(store.path)] += n
            return orig_read(store, rows, *a, **kw)

        RowReader.read_rows, RowReader.read_range, ActivationStore.read = read_rows, read_range, read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "neurolab-bench" / "ewt-dev-minilm"))
    ap.add_argument("--conllu", default=str(Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data"))
                                            / "ud-english-ewt" / "en_ewt-ud-dev.conllu"))
    ap.add_argument("--sites", default="layers.2,layers.5")
    ap.add_argument("--max-sentences", type=int, default=None)
    ap.add_argument("--types", default="focused,group,group_xor,redundant,polysemous,distractors")
    ap.add_argument("--effects", default="0.25,0.5,1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default="probeless,selectivity,iou,ap,genetic")
    ap.add_argument("--probes", default="linear")
    ap.add_argument("--linear-ordering", default="mass", help="method.ordering of the linear probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    import torch

    from neurolab.benchmark import build_suite, leaderboard, source_from_store, summarize
    from neurolab.benchmark.report import plot_by_effect, write_leaderboard
    from neurolab.benchmark.runner import hydra_factory, method_nodes, run_planted
    from neurolab.corpus import read_conllu

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench-planted-"))
    out: dict = {"benchmark": "planted", "corpus": args.conllu, "torch_threads": torch.get_num_threads(),
                 "cpus": os.cpu_count()}
    store, info = get_store(Path(args.store), Path(args.conllu))
    out["store"] = {"path": str(store.path), "rows": store.num_tokens, "neurons": store.num_neurons(), **info}
    t = time.perf_counter()
    corpus = read_conllu(args.conllu)
    src = source_from_store(store, corpus, sites=args.sites.split(","), max_sentences=args.max_sentences)
    suite = build_suite(out_dir / "suite", src, types=args.types.split(","),
                        effects=[float(e) for e in args.effects.split(",")], seeds=[int(s) for s in args.seeds.split(",")])
    out["suite"] = {"seconds": round(time.perf_counter() - t, 2), "cases": len(suite.cases), "rows": src.num_rows,
                    "neurons": src.num_neurons, "sites": src.sites}
    del src

    names = [m for m in args.methods.split(",") if m]
    factories, cfgs = {}, {}
    # genetic: subsets of 3 (the largest planted set), searched over every neuron (the ANOVA-F pool
    # would drop group neurons, which are weak alone by design)
    overrides = {"genetic": {"k": 3, "pool": "100%"}} if "genetic" in names else {}
    for name, node in (method_nodes(names, overrides) if names else {}).items():
        factories[name], cfgs[name] = hydra_factory(node, None)
    for p in [p for p in args.probes.split(",") if p]:
        (node,) = method_nodes([p], {"linear": {"ordering": args.linear_ordering}}).values()
        factories[p], cfgs[p] = hydra_factory(node, None)
    out["methods"] = list(factories)
    counter = ReadCounter()
    counter.install()
    t = time.perf_counter()
    res = run_planted(suite.cases, factories, seed=args.seed, cfg=cfgs, run_dir=out_dir)
    out["run_s"] = round(time.perf_counter() - t, 2)
    out["method_s"] = res.seconds
    out["case_load_s"] = round(sum(res.read_seconds.values()), 2)
    ratios = [counter.rows.get(str(c.store_path), 0) / out["suite"]["rows"] for c in suite.cases]
    out["reads_per_store"] = {"min": min(ratios), "max": max(ratios)}
    rows = res.rows
    (out_dir / "benchmark.json").write_text(json.dumps({"results": rows}, indent=1) + "\n")
    out["failed"] = [f"{r['method']} on {r['type']}-e{r['effect']:g}-s{r['seed']}: {r['status']}" for r in rows
                     if r["status"] != "ok"]
    out["leaderboard"] = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()} for e in leaderboard(rows)]
    ap_by = defaultdict(dict)
    for s in summarize(rows):
        ap_by[f"{s['method']}/{s['type']}"][f"{s['effect']:g}"] = None if s["mean"] is None else round(s["mean"], 3)
    out["ap_by_effect"] = dict(ap_by)
    out["ranks"] = {f"{r['method']}/{r['type']}-e{r['effect']:g}-s{r['seed']}": r.get("ranks") for r in rows}
    img = plot_by_effect(rows, out_dir / "benchmark_ap.png", title="planted suite on MiniLM / EWT dev")
    write_leaderboard(out_dir / "leaderboard.html", rows, images=[img], seconds=res.seconds,
                      info={"store": str(store.path), "sites": args.sites, "effects": args.effects, "seeds": args.seeds})
    out["out_dir"] = str(out_dir)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
