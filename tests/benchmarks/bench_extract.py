"""Extraction benchmark: prints ONE JSON object.

EWT dev (``../shared/data/ud-english-ewt/en_ewt-ud-dev.conllu``), all-MiniLM-L6-v2, ``sites=all_layers``
(7 sites, 2,688 neurons):

* ``neurolab``: words/s of extraction into a store (forward passes with hooks, aggregation, fp16
  writing of every shard, checksums), best and median of ``--rounds`` runs;
* ``bare``: a bare batched forward pass over the same batches (no hooks, no output_hidden_states,
  no writing) as the ceiling, measured in the same process, alternating with the neurolab runs;
* ``ratio``: neurolab / bare words/s (target >= 0.85), from wall time and from the CPU time of the
  process (the latter is steadier when other jobs share the machine);
* ``neurox``: NeuroX 1.0.9 ``transformers_extractor.extract_representations`` (sentence at a time) on
  the same words, when its venv exists (``NEUROX_PYTHON``, default ``/tmp/neurox-venv/bin/python``);
* ``rss``: peak RSS of a whole extraction in a subprocess with the corpus x1 and x4.

    python tests/benchmarks/bench_extract.py [--corpus FILE] [--rounds 3] [--device auto] [--no-neurox] [--no-rss]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DEFAULT_CORPUS = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"
NEUROX_SNIPPET = r"""
import json, sys, time
import numpy as np
np.int = int; np.float = float
import torch
import neurox.data.extraction.transformers_extractor as ex
words_path, out_path, model, device = sys.argv[1:5]
t = time.perf_counter()
ex.extract_representations(model, words_path, out_path, aggregation="average", output_type="hdf5", device=device)
print(json.dumps({"extract_s": time.perf_counter() - t}))
"""


def _extractor(model_name: str, sites: str, device: str, batch_tokens: int):
    from neurolab.extraction import Extractor
    from neurolab.models import load_model

    model, tok = load_model({"name_or_path": model_name})
    return Extractor(model, tok, sites, device=device, batch_tokens=batch_tokens, progress=False)


def rss_child(corpus: str, model_name: str, sites: str, device: str, shard_size: int, batch_tokens: int) -> None:
    """Whole extraction in this process; prints peak RSS."""
    from neurolab.corpus import read_conllu
    from neurolab.extraction import extract_to_store

    c = read_conllu(corpus)
    ex = _extractor(model_name, sites, device, batch_tokens)
    d = tempfile.mkdtemp(prefix="bench_rss_")
    try:
        t = time.perf_counter()
        store, st = extract_to_store(ex, c, Path(d) / "store", shard_size=shard_size)
        dt = time.perf_counter() - t
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({"words": c.num_words, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": round(dt, 3), "words_per_s": round(c.num_words / dt, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--sites", default="all_layers")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--shard-size", type=int, default=16384)
    ap.add_argument("--no-neurox", action="store_true")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.rss_child:
        rss_child(args.corpus, args.model, args.sites, args.device, args.shard_size, args.batch_tokens)
        return
    import torch

    from neurolab.corpus import read_conllu
    from neurolab.extraction import extract_to_store

    corpus = read_conllu(args.corpus)
    words = corpus.num_words
    ex = _extractor(args.model, args.sites, args.device, args.batch_tokens)
    t = time.perf_counter()
    plan = ex.plan(corpus.words(), args.shard_size)
    plan_s = time.perf_counter() - t
    n_batches = sum(len(ex.batches(plan, s)[0]) for s in plan.shards)
    ex.bare_forward(plan, plan.shards[:1])  # warm-up
    bare, neuro, bare_cpu, neuro_cpu = [], [], [], []
    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        for r in range(args.rounds):
            t, c = time.perf_counter(), time.process_time()
            ex.bare_forward(plan)
            bare.append(time.perf_counter() - t)
            bare_cpu.append(time.process_time() - c)
            d = work / f"store{r}"
            t, c = time.perf_counter(), time.process_time()
            store, st = extract_to_store(ex, corpus, d, shard_size=args.shard_size, plan=plan)
            neuro.append(time.perf_counter() - t)
            neuro_cpu.append(time.process_time() - c)
            size = store.info()["bytes_on_disk"]
            shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "benchmark": "extract",
        "corpus": args.corpus,
        "model": args.model,
        "sites": ex.site_names,
        "neurons": sum(ex.units.values()),
        "device": str(ex.device),
        "torch_threads": torch.get_num_threads(),
        "sentences": len(corpus),
        "words": words,
        "batches": n_batches,
        "batch_tokens": args.batch_tokens,
        "tokenize_and_plan_s": round(plan_s, 3),
        "store_mb": round(size / 1e6, 1),
        "neurolab_s": [round(x, 3) for x in neuro],
        "bare_forward_s": [round(x, 3) for x in bare],
        "neurolab_words_per_s_best": round(words / min(neuro), 1),
        "bare_words_per_s_best": round(words / min(bare), 1),
        "neurolab_words_per_s_median": round(words / statistics.median(neuro), 1),
        "bare_words_per_s_median": round(words / statistics.median(bare), 1),
        "ratio_best": round(min(bare) / min(neuro), 3),
        "ratio_median": round(statistics.median(bare) / statistics.median(neuro), 3),
        # CPU seconds of this process (all threads): less sensitive to other load on a shared machine
        "neurolab_cpu_s": [round(x, 3) for x in neuro_cpu],
        "bare_forward_cpu_s": [round(x, 3) for x in bare_cpu],
        "ratio_cpu_median": round(statistics.median(bare_cpu) / statistics.median(neuro_cpu), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    nx = os.environ.get("NEUROX_PYTHON", "/tmp/neurox-venv/bin/python")
    if not args.no_neurox and Path(nx).exists():
        d = Path(tempfile.mkdtemp(prefix="bench_neurox_"))
        try:
            kept = [[w for w in s if " " not in w] for s in corpus.words()]
            (d / "words.txt").write_text("\n".join(" ".join(s) for s in kept) + "\n", encoding="utf-8")
            dev = "cuda" if ex.device.type == "cuda" else "cpu"
            r = subprocess.run([nx, "-c", NEUROX_SNIPPET, str(d / "words.txt"), str(d / "a.hdf5"), str(ex.model.neurolab_path), dev],
                               capture_output=True, text=True, timeout=1800)
            if r.returncode == 0:
                nxs = json.loads(r.stdout.strip().splitlines()[-1])["extract_s"]
                out["neurox_s"] = round(nxs, 3)
                out["neurox_words_per_s"] = round(sum(map(len, kept)) / nxs, 1)
                out["speedup_vs_neurox_best"] = round(nxs / min(neuro), 2)
                out["speedup_vs_neurox_median"] = round(nxs / statistics.median(neuro), 2)
            else:
                out["neurox_error"] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        out["neurox_s"] = None
    if not args.no_rss:
        d = Path(tempfile.mkdtemp(prefix="bench_rss_corpus_"))
        try:
            x4 = d / "x4.conllu"
            text = Path(args.corpus).read_text(encoding="utf-8")
            x4.write_text(text.rstrip("\n") + "\n\n" + (text.rstrip("\n") + "\n\n") * 3, encoding="utf-8")
            for name, path in (("x1", args.corpus), ("x4", str(x4))):
                r = subprocess.run([sys.executable, __file__, "--rss-child", "--corpus", path, "--model", args.model,
                                    "--sites", args.sites, "--device", args.device, "--shard-size", str(args.shard_size),
                                    "--batch-tokens", str(args.batch_tokens)], capture_output=True, text=True, timeout=3600)
                if r.returncode != 0:
                    out[f"rss_{name}_error"] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
                    continue
                res = json.loads(r.stdout.strip().splitlines()[-1])
                out[f"rss_{name}"] = res
        finally:
            shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
