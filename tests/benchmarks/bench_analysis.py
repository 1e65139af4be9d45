"""Neuron-to-neuron analyses at the size of EWT dev x all-MiniLM-L6-v2; prints ONE JSON object.

    python tests/benchmarks/bench_analysis.py [--store DIR] [--full-store DIR] [--repeats 3] [--skip-x8]

``--store``: a store of EWT dev with the 7 hidden-state sites (2,688 neurons), e.g. made by
``neurolab extract corpus.path=.../en_ewt-ud-dev.conllu sites=all_layers store.dir=DIR``;
``--full-store``: the same with the 6 MLP sites too (``sites=[all_layers,mlp]``, 11,904 neurons).
Without them, stores of the same shape are written with random activations (timings of the passes
do not depend on the values; clustering and k-means converge differently on real data).

Measured:

* ``correlation``: one streaming pass of :func:`neurolab.analysis.stream_moments` over the 2,688
  neurons (float32 and float64 products) against one sequential ``store.read`` of the same shards
  and sites in blocks of the same size (best of ``--repeats``, warm page cache);
  ``throughput_ratio`` = read time / pass time (target >= 0.5);
* ``memory``: peak RSS of a fresh process making that pass over the store and over a store of 8x
  the rows (built with ``write_store``); ``rss_ratio`` = x8 / x1 (target <= 1.2);
* ``clustering``: moments of the hidden + MLP neurons, then average-linkage clustering of all of
  them at threshold 0.3 (the N x N part timed on its own);
* ``latent``: latent concepts of one site (``layers.3``: the store's words x 384) with the default
  settings (K=500; mini-batch k-means to weighted centroids, then Ward) and their UPOS alignment.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from neurolab.store import ActivationStore, write_store  # noqa: E402

HIDDEN = ["embeddings"] + [f"layers.{i}" for i in range(6)]
MLP = [f"layers.{i}.mlp" for i in range(6)]
EWT_ROWS = 25_147
EWT = Path(__file__).resolve().parents[3] / "shared" / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu"


def _synthetic(path: Path, sites: dict[str, int], rows: int = EWT_ROWS) -> ActivationStore:
    rng = np.random.default_rng(0)
    # a few shared directions so that neurons correlate, as in a real model
    base = rng.normal(size=(rows, 16)).astype(np.float32)
    acts = {s: (base @ rng.normal(size=(16, w)).astype(np.float32) + rng.normal(size=(rows, w)).astype(np.float32)
                ).astype(np.float16) for s, w in sites.items()}
    r = np.arange(rows)
    return write_store(path, acts, r // 12, r % 12, dtype="fp16", shard_size=16384)


def _best(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def _read_all(store: ActivationStore, sites, chunk: int = 8192) -> None:
    for a in range(0, store.num_tokens, chunk):
        store.read(slice(a, min(a + chunk, store.num_tokens)), sites)


def _hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it does not carry the parent's peak
    across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_child(store: str) -> None:
    """Entry of the peak-RSS child: one pass over the hidden sites; prints peak and baseline RSS (MB)."""
    from neurolab.analysis.correlation import stream_moments

    st = ActivationStore.open(store)
    base = _hwm_mb()
    t = time.perf_counter()
    stream_moments([st], [HIDDEN]).moments(release=True)
    secs = time.perf_counter() - t
    peak = _hwm_mb()
    print(json.dumps({"peak_mb": round(peak, 1), "baseline_mb": round(base, 1), "pass_s": round(secs, 3),
                      "rows": st.num_tokens}))


def _cluster_child(store: str) -> None:
    """Entry of the clustering child: moments of the hidden + MLP neurons, then clustering at 0.3."""
    from neurolab.analysis.clusters import cluster_labels
    from neurolab.analysis.correlation import stream_moments

    full = ActivationStore.open(store)
    sites = [s for s in HIDDEN + MLP if s in full.neurons_per_site]
    t = time.perf_counter()
    mom = stream_moments([full], [sites]).moments(release=True)
    t_mom = time.perf_counter() - t
    t = time.perf_counter()
    r = mom.correlation(inplace=True)
    labels = cluster_labels(r, 0.3, inplace=True)
    t_cl = time.perf_counter() - t
    print(json.dumps({"neurons": int(len(labels)), "moments_s": round(t_mom, 2), "cluster_s": round(t_cl, 2),
                      "clusters": int(labels.max()) + 1, "peak_rss_mb": round(_hwm_mb(), 1)}))


def _child(store: Path) -> dict:
    r = subprocess.run([sys.executable, __file__, "--rss-child", str(store)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _x8(store: ActivationStore, path: Path) -> ActivationStore:
    acts = {s: np.tile(store.read(slice(0, store.num_tokens), [s]).astype(np.float16), (8, 1)) for s in HIDDEN}
    sent, word = store.sentence_ids, store.word_ids
    n_sent = int(sent.max()) + 1
    sents = np.concatenate([sent + k * n_sent for k in range(8)])
    words = np.tile(word, 8)
    out = write_store(path, acts, sents, words, dtype="fp16", shard_size=16384)
    del acts
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store")
    ap.add_argument("--full-store")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-x8", action="store_true")
    ap.add_argument("--skip-clustering", action="store_true")
    ap.add_argument("--rss-child")
    ap.add_argument("--cluster-child")
    args = ap.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child)
        return
    if args.cluster_child:
        _cluster_child(args.cluster_child)
        return
    import torch

    from neurolab.analysis.correlation import stream_moments
    from neurolab.analysis.latent import align_clusters, latent_clusters

    tmp = Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    out: dict = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    store = ActivationStore.open(args.store) if args.store else _synthetic(tmp / "hidden", {s: 384 for s in HIDDEN})
    out["store"] = {"path": str(store.path), "rows": store.num_tokens, "neurons": store.num_neurons(HIDDEN),
                    "synthetic": not args.store, "shards": len(store.shards)}

    # -- correlation pass vs one sequential read --------------------------------------------------
    _read_all(store, HIDDEN)  # warm the page cache
    read_s = _best(lambda: _read_all(store, HIDDEN), args.repeats)
    c = {"read_s": round(read_s, 3)}
    for dt in ("float32", "float64"):
        t = _best(lambda: stream_moments([store], [HIDDEN], product_dtype=dt).moments(release=True), args.repeats)
        c[f"pass_{dt}_s"] = round(t, 3)
        c[f"throughput_ratio_{dt}"] = round(read_s / t, 4)
    n, D = store.num_tokens, store.num_neurons(HIDDEN)
    c["multiply_adds"] = float(n) * D * (D + 768) / 2  # the upper-triangle blocks of the Gram matrix
    c["gmacs_float32"] = round(c["multiply_adds"] / c["pass_float32_s"] / 1e9, 2)
    x = torch.randn(8192, 2688)
    gemm = _best(lambda: x.T @ x, 2)
    c["torch_gemm_8192x2688_gmacs"] = round(8192 * 2688 * 2688 / gemm / 1e9, 2)
    out["correlation"] = c

    # -- flat memory: peak RSS of the pass, x1 vs x8 rows ----------------------------------------------
    if not args.skip_x8:
        m1 = _child(store.path)
        t = time.perf_counter()
        big = _x8(store, tmp / "x8")
        build = time.perf_counter() - t
        m8 = _child(big.path)
        out["memory"] = {"x1": m1, "x8": m8, "rss_ratio": round(m8["peak_mb"] / m1["peak_mb"], 3),
                         "x8_build_s": round(build, 1)}
        import shutil

        shutil.rmtree(big.path, ignore_errors=True)

    # -- clustering of the hidden + MLP neurons (in a fresh process: its own peak RSS) -----------------
    if not args.skip_clustering:
        full = args.full_store or str(_synthetic(tmp / "full", {**{s: 384 for s in HIDDEN},
                                                                 **{s: 1536 for s in MLP}}).path)
        r = subprocess.run([sys.executable, __file__, "--cluster-child", full], capture_output=True, text=True,
                           check=True)
        out["clustering"] = {**json.loads(r.stdout.strip().splitlines()[-1]), "synthetic": not args.full_store}

    # -- latent concepts: all words x 384 ---------------------------------------------------------
    X = store.read(slice(0, store.num_tokens), ["layers.3"])
    t = time.perf_counter()
    labels, info = latent_clusters(X, 500, seed=0)
    t_lat = time.perf_counter() - t
    lat = {"words": int(len(X)), "units": int(X.shape[1]), "k": 500, "seconds": round(t_lat, 2), **info}
    if args.store and EWT.exists():
        from neurolab.corpus import read_conllu
        from neurolab.methods.annotations import AnnotationTable

        corpus = read_conllu(EWT)
        ann = AnnotationTable.from_store(store, corpus, ["upos"])
        t = time.perf_counter()
        al = align_clusters(labels, ann.codes, ann.values, 0.9)
        lat["align_s"] = round(time.perf_counter() - t, 3)
        lat["upos_aligned_share"] = round(al.summary()["upos"]["aligned_share"], 4)
    out["latent"] = lat
    print(json.dumps(out))


if __name__ == "__main__":
    main()
