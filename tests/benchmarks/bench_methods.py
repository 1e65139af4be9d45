"""The four corpus-based rankers over EWT dev x all-MiniLM-L6-v2 (7 sites x 384 = 2,688 neurons) in
one shared streaming computation, next to NeuroX 1.0.9's probeless on the same data; prints ONE JSON
object.

    python tests/benchmarks/bench_methods.py [--store DIR] [--conllu FILE] [--bins 1024] [--top-k 20]
                                              [--neurox-python /tmp/neurox-venv/bin/python] [--no-neurox]

* the store: ``--store`` if it holds one, else extracted once with ``neurolab.tasks.extract.extract_store``
  (MiniLM, all_layers, fp16, subword mean) into ``--store`` (default
  ``$TMPDIR/neurolab-bench/ewt-dev-minilm``) and reused by later runs;
* neurolab: probeless, selectivity, IoU (q = 0.995) and AP, multi-class UPOS (17 classes), all rows,
  sharing pass 1 (per-class moments + top-k words per neuron) and pass 2 (per-class histograms);
  then concept search descriptions of all neurons (upos, deprel) and compositional explanations of
  the top 10 IoU neurons; peak RSS of this process;
* NeuroX: ``neurox.interpretation.probeless`` (``get_neuron_ordering`` and ``..._for_tag`` NOUN) in its
  own venv on the same activations (fp32 .npy) and labels, timed in a subprocess, with its peak RSS;
  ``neurox.interpretation.iou_probe`` is tried and reported as absent when this NeuroX lacks it.
  The orderings are compared with ours (same formula: they should agree up to float ties).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

NEUROX_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
np.int = int; np.float = float
X = np.load(sys.argv[1]); y = np.load(sys.argv[2]); noun = int(sys.argv[3])
out = {"rows": int(X.shape[0]), "neurons": int(X.shape[1])}
from neurox.interpretation import probeless
t, c = time.perf_counter(), time.process_time(); order = probeless.get_neuron_ordering(X, y)
out["probeless_s"] = time.perf_counter() - t; out["probeless_cpu_s"] = time.process_time() - c
t = time.perf_counter()
tag = probeless.get_neuron_ordering_for_tag(X, y, {"NOUN": noun}, "NOUN")
out["probeless_tag_s"] = time.perf_counter() - t
out["probeless_order"] = [int(i) for i in order]
out["probeless_tag_order"] = [int(i) for i in tag]
try:
    from neurox.interpretation import iou_probe  # newer NeuroX only
    t = time.perf_counter()
    res = iou_probe.get_neuron_ordering(X, y)
    out["iou_s"] = time.perf_counter() - t
except ImportError as e:
    out["iou"] = f"unavailable in this NeuroX ({e})"
out["peak_rss_mb"] = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps(out))
"""


def rss_mb(reset: bool = False) -> float:
    """Peak RSS of this process (VmHWM); ``reset`` restarts the peak from the current RSS."""
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    try:
        return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def get_store(store_dir: Path, conllu: Path) -> tuple[object, dict]:
    from neurolab.store import ActivationStore

    if (store_dir / "manifest.json").exists():
        return ActivationStore.open(store_dir), {"reused": True}
    from neurolab.config import compose
    from neurolab.tasks.extract import extract_store

    cfg = compose("extract", [f"corpus.path={conllu}", "corpus.name=ewt_dev", f"store.dir={store_dir}", "sites=all_layers"],
                  run_dir=tempfile.mkdtemp(prefix="bench-extract-"))
    st: dict = {}
    t = time.perf_counter()
    store = extract_store(cfg, stats=st)
    return store, {"reused": False, "extract_s": round(time.perf_counter() - t, 2)}


def overlap(a, b, k) -> float:
    return len(set(list(a)[:k]) & set(list(b)[:k])) / k


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "neurolab-bench" / "ewt-dev-minilm"))
    ap.add_argument("--conllu", default=str(Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data"))
                                            / "ud-english-ewt" / "en_ewt-ud-dev.conllu"))
    ap.add_argument("--bins", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--chunk-rows", type=int, default=8192)
    ap.add_argument("--neurox-python", default="/tmp/neurox-venv/bin/python")
    ap.add_argument("--no-neurox", action="store_true")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from neurolab.corpus import read_conllu
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ChunkSource, row_labels
    from neurolab.methods import (AnnotationTable, APRanker, ConceptSearch, IoURanker, ProbelessRanker,
                                  SelectivityRanker, fit_rankers)
    from neurolab.methods.compositional import explain_neurons

    out: dict = {"benchmark": "methods", "corpus": args.conllu}
    store, info = get_store(Path(args.store), Path(args.conllu))
    out["store"] = {"path": str(store.path), "rows": store.num_tokens, "neurons": store.num_neurons(), "dtype": store.dtype,
                    "shards": len(store.shards), **info}
    t = time.perf_counter()
    corpus = read_conllu(args.conllu)
    labels = row_labels(store, ColumnConcept("upos").labels(corpus))
    out["labels_s"] = round(time.perf_counter() - t, 2)
    source = ChunkSource.from_store(store, labels, chunk_rows=args.chunk_rows)
    rankers = [ProbelessRanker(), SelectivityRanker(), IoURanker(bins=args.bins), APRanker(bins=args.bins)]
    rss0 = rss_mb(reset=True)
    t, cpu = time.perf_counter(), time.process_time()
    stats = fit_rankers(source, rankers, concept="upos", top_k=args.top_k)
    total, total_cpu = time.perf_counter() - t, time.process_time() - cpu
    C, F = stats.num_classes, stats.num_features
    out["neurolab"] = {
        "classes": C, "neurons": F, "rows": stats.num_rows, "passes": stats.passes,
        "pass1_moments_topk_s": round(stats.seconds["pass1"], 2), "pass2_histograms_s": round(stats.seconds["pass2"], 2),
        "four_rankers_total_s": round(total, 2),
        "pass1_cpu_s": round(stats.seconds["pass1_cpu"], 2), "pass2_cpu_s": round(stats.seconds["pass2_cpu"], 2),
        "four_rankers_total_cpu_s": round(total_cpu, 2), "torch_threads": __import__("torch").get_num_threads(),
        "histogram_state_mb": round(C * F * args.bins * 4 / 2**20, 1),
        "rss_mb_before": round(rss0, 1), "peak_rss_mb_during": round(rss_mb(), 1),
        "top10": {r.name: r.ranking_.names[:10] for r in rankers},
        "top10_sites_10pct": {r.name: r.ranking_.by_site("10%") for r in rankers},
    }
    t, cpu = time.perf_counter(), time.process_time()
    alone = ProbelessRanker().fit(source, concept="upos")
    out["neurolab"]["probeless_alone_s"] = round(time.perf_counter() - t, 2)
    out["neurolab"]["probeless_alone_cpu_s"] = round(time.process_time() - cpu, 2)
    assert alone.ranking_.indices.tolist() == rankers[0].ranking_.indices.tolist()
    cls = stats.class_names
    noun = cls.index("NOUN")
    out["neurolab"]["noun_top5"] = {r.name: [r.ranking_.names_of([int(i)])[0] for i in
                                           np.argsort(-np.nan_to_num(r.scores_[noun], nan=-np.inf), kind="stable")[:5]]
                                   for r in rankers}
    out["neurolab"]["best_scores"] = {r.name: float(r.ranking_.neurons[0].score) for r in rankers}
    # concept search: descriptions of every neuron from the top-k of pass 1
    t = time.perf_counter()
    ann = AnnotationTable.from_store(store, corpus, ["upos", "deprel"])
    cs = ConceptSearch(k=args.top_k).fit_top(stats.top, np.arange(store.num_tokens), source)
    descs = cs.describe(ann, alpha=0.01)
    out["concept_search"] = {
        "describe_all_neurons_s": round(time.perf_counter() - t, 2),
        "neurons_with_a_description": int(sum(1 for d in descs if d)),
        "examples": {store.neuron_names()[i]: [d.label for d in descs[i][:2]] for i in rankers[2].ranking_.indices[:3]},
    }
    t = time.perf_counter()
    iou = rankers[2]
    top = iou.ranking_.indices[:10]
    ex = explain_neurons(source, ann, top, iou.thresholds_[top], names=iou.ranking_.names_of(top), max_length=3,
                         beam_size=5, min_count=5)
    out["compositional"] = {"neurons": len(ex), "seconds": round(time.perf_counter() - t, 2),
                            "examples": [[e.name, e.formula, round(e.iou, 3)] for e in ex[:3]]}
    out["neurolab"]["peak_rss_mb_incl_concept_search"] = round(rss_mb(), 1)

    if not args.no_neurox and Path(args.neurox_python).exists():
        with tempfile.TemporaryDirectory(prefix="bench-neurox-") as tmp:
            xp, yp = Path(tmp) / "X.npy", Path(tmp) / "y.npy"
            X = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float32, shape=(store.num_tokens, F))
            for a, block in store.iter_chunks(chunk_rows=args.chunk_rows):
                X[a : a + len(block)] = block
            X.flush()
            del X
            codes = np.array([cls.index(v) for v in labels], dtype=np.int64)
            np.save(yp, codes)
            t = time.perf_counter()
            res = subprocess.run([args.neurox_python, "-c", NEUROX_SCRIPT, str(xp), str(yp), str(noun)],
                                 capture_output=True, text=True)
            wall = time.perf_counter() - t
        if res.returncode != 0:
            out["neurox"] = {"error": res.stderr[-1500:]}
        else:
            nx = json.loads(res.stdout.strip().splitlines()[-1])
            order, tag = nx.pop("probeless_order"), nx.pop("probeless_tag_order")
            ours = rankers[0].ranking_.indices.tolist()
            ours_tag = np.argsort(-rankers[0].scores_[noun], kind="stable").tolist()
            n1 = max(1, F // 100)
            nx.update({
                "subprocess_wall_s": round(wall, 2),
                "probeless_top1pct_overlap": overlap(order, ours, n1),
                "probeless_top10pct_overlap": overlap(order, ours, F // 10),
                "probeless_same_order": order == ours,
                "probeless_noun_top1pct_overlap": overlap(tag, ours_tag, n1),
                "probeless_noun_same_order": tag == ours_tag,
            })
            out["neurox"] = nx
    else:
        out["neurox"] = "skipped"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
