"""Cross-method comparison on real data: EWT dev x all-MiniLM-L6-v2 (7 sites x 384 neurons), one
binary concept per XPOS tag (the tag against every other word); prints ONE JSON object and writes
``compare.json`` and ``compare.html`` into ``--out``.

    python tests/benchmarks/bench_compare_ewt.py [--store DIR] [--conllu FILE]
        [--tags NN,NNS,NNP,JJ,RB,IN,DT,PRP,VB,VBD,VBG,CD] [--methods probeless,selectivity,iou,ap,genetic]
        [--probes linear,gaussian,neuron_mask] [--matrix-k 30] [--out DIR]

For each tag: every method ranks the neurons on the training split (the registered ones from their
``conf/method/*.yaml``, genetic with ``k = --matrix-k``; the probes of ``--probes`` not yet registered as
methods, the linear one with ``method.ordering=mass``); then
``neurolab.benchmark.compare_concept``: the pairwise overlap of the top-k sets and the neuron vote at
k in {10, 20, 30, 40, 100}, the evaluation matrix (each ranking's top ``--matrix-k`` retrained under a
logistic regression, a class-conditional Gaussian and a random forest, all class-balanced, scored by
balanced accuracy on the test split: accuracy alone would reward predicting "not the tag"), and the
per-site balanced accuracy of the top-k of the neuron-vote consensus against k.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_planted import get_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "neurolab-bench" / "ewt-dev-minilm"))
    ap.add_argument("--conllu", default=str(Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data"))
                                            / "ud-english-ewt" / "en_ewt-ud-dev.conllu"))
    ap.add_argument("--tags", default="NN,NNS,NNP,JJ,RB,IN,DT,PRP,VB,VBD,VBG,CD")
    ap.add_argument("--methods", default="probeless,selectivity,iou,ap,genetic")
    ap.add_argument("--probes", default="linear,gaussian,neuron_mask")
    ap.add_argument("--matrix-k", type=int, default=30)
    ap.add_argument("--ks", default="10,20,30,40,100")
    ap.add_argument("--curve-ks", default="1,2,4,8,16,32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from functools import partial

    from neurolab.benchmark import compare_concept, write_compare_report
    from neurolab.benchmark.compare import GaussianClassifier, LogisticProbe, RandomForestProbe
    from neurolab.benchmark.runner import fit_method, hydra_factory, method_nodes
    from neurolab.corpus import read_conllu, split_sentences
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from neurolab.methods.base import RunContext

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="bench-compare-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    store, info = get_store(Path(args.store), Path(args.conllu))
    corpus = read_conllu(args.conllu)
    splits = split_sentences(len(corpus))
    names = [m for m in args.methods.split(",") if m]
    overrides = {"genetic": {"k": args.matrix_k}} if "genetic" in names else {}
    factories = {n: hydra_factory(node, None)[0] for n, node in (method_nodes(names, overrides) if names else {}).items()}
    for p in [p for p in args.probes.split(",") if p]:
        factories[p] = hydra_factory(next(iter(method_nodes([p], {"linear": {"ordering": "mass"}}).values())), None)[0]
    ks = [int(k) for k in args.ks.split(",")]
    # class-balanced probes: a tag is a few percent of the words, and balanced accuracy is the metric
    probes = {"linear": partial(LogisticProbe, balanced=True), "gaussian": partial(GaussianClassifier, balanced=True),
              "random_forest": partial(RandomForestProbe, balanced=True)}
    out: dict = {"benchmark": "compare_ewt", "store": str(store.path), "neurons": store.num_neurons(), **info,
                 "tags": args.tags.split(","), "methods": list(factories), "matrix_k": args.matrix_k,
                 "metric": "balanced_accuracy"}
    seconds = {m: 0.0 for m in factories}
    comps, failed = [], []
    t_all = time.perf_counter()
    for tag in args.tags.split(","):
        t = time.perf_counter()
        dm = ActivationDataModule(store, corpus, splits, ColumnConcept("xpos", value=tag), memory_budget_mb=1 << 20,
                                  seed=args.seed)
        dm.setup()
        load_s = time.perf_counter() - t
        rankings = {}
        for m, build in factories.items():
            t = time.perf_counter()
            try:
                rankings[m] = fit_method(build(), dm, RunContext(seed=args.seed), positive=tag)
            except Exception as e:  # reported, not dropped
                failed.append(f"{m} on {tag}: {type(e).__name__}: {e}")
            seconds[m] += time.perf_counter() - t
        words = {}
        for s in corpus.sentences[:400]:
            for w, x in zip(s.words, s.annotations["xpos"]):
                if x == tag:
                    words[w] = words.get(w, 0) + 1
        examples = [w for w, _ in sorted(words.items(), key=lambda kv: -kv[1])[:8]]
        t = time.perf_counter()
        comp = compare_concept(f"xpos={tag}", rankings, dm, ks=ks, matrix_k=args.matrix_k, probes=probes,
                               curve_rankings=["vote"], curve_ks=[int(k) for k in args.curve_ks.split(",")],
                               curve_probe=probes["linear"], metric="balanced_accuracy", examples=examples)
        comp.info.update({"load_s": round(load_s, 2), "compare_s": round(time.perf_counter() - t, 2),
                          "positives_train": int((dm.targets("train") == dm.class_names.index(tag)).sum())})
        comps.append(comp)
        print(f"{tag}: share@10 {comp.agreement[10]['mean_share']:.3f}, compare {comp.info['compare_s']} s",
              file=sys.stderr, flush=True)
        del dm
    (out_dir / "compare.json").write_text(json.dumps([c.to_dict() for c in comps], indent=1) + "\n")
    write_compare_report(out_dir / "compare.html", comps, title="neurolab: ranking methods on EWT dev XPOS (MiniLM)",
                         info={"store": str(store.path), "tags": args.tags, "methods": ", ".join(factories),
                               "metric": "balanced accuracy (test split)"})
    out["seconds_total"] = round(time.perf_counter() - t_all, 1)
    out["method_s"] = {m: round(s, 1) for m, s in seconds.items()}
    out["failed"] = failed
    out["mean_jaccard"] = {k: round(float(np.mean([c.agreement[k]["mean_jaccard"] for c in comps])), 3) for k in ks}
    out["mean_share"] = {k: round(float(np.mean([c.agreement[k]["mean_share"] for c in comps])), 3) for k in ks}
    methods = comps[0].agreement[ks[0]]["methods"] if comps else []
    out["vote"] = {m: {k: round(float(np.mean([c.agreement[k]["vote"][m] for c in comps])), 3) for k in ks} for m in methods}
    out["average_overlap"] = {m: {k: round(float(np.mean([c.agreement[k]["average_overlap"][m] for c in comps])), 3)
                                  for k in ks} for m in methods}
    pair = {}
    for i, a in enumerate(methods):
        for j in range(i + 1, len(methods)):
            pair[f"{a}~{methods[j]}"] = round(float(np.mean([c.agreement[30]["share"][i][j] for c in comps])), 3) \
                if 30 in ks else None
    out["pairwise_share@30"] = pair
    mats = [c.matrix for c in comps if c.matrix]
    if mats:
        out["matrix"] = {m: {p: round(float(np.mean([x["scores"][m][p] for x in mats])), 3) for p in mats[0]["probes"]}
                         for m in mats[0]["methods"]}
        out["matrix_mean_rank"] = {m: {p: round(float(np.mean([x["rank"][m][p] for x in mats])), 2)
                                       for p in mats[0]["probes"]} for m in mats[0]["methods"]}
    out["curves_vote"] = {c.concept: {s: [[k, round(v, 3)] for k, v in pts] for s, pts in c.curves.get("vote", {}).items()}
                          for c in comps[:3]}
    out["out_dir"] = str(out_dir)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
