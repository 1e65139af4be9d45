"""Gaussian probe / neuron mask benchmark: prints ONE JSON object.

* ``gaussian_fit_s``: one streaming pass of per-class statistics (float64) over the training rows;
* ``gaussian_select_s``: greedy selection of ``--k`` (50) neurons out of all (2,688 for MiniLM's 7
  hidden-state sites), every candidate scored at every step, MI on the dev rows; with ``--threads
  1,2,1,2`` also ``gaussian_select_s_by_threads`` (the same selection at each torch thread count,
  alternating in this process; a list per count) and ``gaussian_same_selection_across_threads``;
* ``gaussian_peak_rss_mb``: the process's peak resident memory after the Gaussian part (it includes
  the arrays, ``rss_before_gaussian_mb``);
* ``mask_train_s``: the neuron mask's training in probe mode as ``probe=neuron_mask`` runs it (its default
  config: ``--epochs`` constrained epochs, then the annealing epochs), in front of a linear probe trained
  beforehand (not timed); ``mask_kept``: neurons kept within eps on dev.

Data: EWT dev / all-MiniLM-L6-v2 / UPOS through neurolab's DataModule when ``--store`` names a store of
that corpus (e.g. one built by ``neurolab probe corpus=ewt_dev store.dir=...``), else synthetic arrays
of the same size (20,117 training rows, 2,515 dev rows, 2,688 neurons, 17 classes); ``data`` says which.

    python tests/benchmarks/bench_gaussmask.py [--store DIR] [--k 50] [--epochs 30] [--device cpu|cuda]
        [--threads 1,2] [--skip-mask]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "disabled")


def _arrays(store_dir: str | None, seed: int = 0):
    import numpy as np

    if store_dir and (Path(store_dir) / "manifest.json").exists():
        from neurolab.config import compose
        from neurolab.data import build_datamodule

        cfg = compose("probe", ["corpus=ewt_dev", f"store.dir={store_dir}", "extract_if_missing=false", "logger=none"])
        dm = build_datamodule(cfg)
        dm.setup("fit")
        (Xtr, ytr), (Xva, yva) = dm.arrays("train"), dm.arrays("val")
        return Xtr, ytr.astype(np.int64), Xva, yva.astype(np.int64), int(dm.num_classes), f"store:{store_dir}"
    rng = np.random.default_rng(seed)
    C, D = 17, 2688
    W = rng.normal(size=(C, D)).astype(np.float32) * 0.3
    def draw(n):
        y = rng.integers(0, C, n)
        return (rng.normal(size=(n, D)).astype(np.float32) + W[y]), y
    Xtr, ytr = draw(20117)
    Xva, yva = draw(2515)
    return Xtr, ytr, Xva, yva, C, "synthetic 20117x2688, 17 classes"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--score-dtype", default="float32")
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts to time the selection at")
    ap.add_argument("--skip-mask", action="store_true", help="only the Gaussian part")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import numpy as np
    import pytorch_lightning as pl
    import torch

    from neurolab.probes.gaussian import GaussianProbe

    import resource

    def rss_mb(now: bool = False) -> float:
        if now:
            with open("/proc/self/statm") as f:
                return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20, 1)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    Xtr, ytr, Xva, yva, C, data = _arrays(args.store)
    D = Xtr.shape[1]
    out = {"data": data, "rows_train": int(len(ytr)), "rows_dev": int(len(yva)), "neurons": int(D), "classes": C,
           "device": args.device, "torch_threads": torch.get_num_threads(), "k": args.k}
    dev = torch.device(args.device)
    out["rss_before_gaussian_mb"] = rss_mb(now=True)
    probe = GaussianProbe(C, D, score_dtype=args.score_dtype).to(dev)
    probe.stats.to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    Xt = torch.from_numpy(np.ascontiguousarray(Xtr))
    yt = torch.from_numpy(ytr)
    for a in range(0, len(yt), 8192):
        probe.stats.update(Xt[a:a + 8192].to(dev), yt[a:a + 8192].to(dev))
    probe.finalize(release_stats=True)  # as the Gaussian method does
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["gaussian_fit_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    res = probe.select(Xva, yva, k=args.k, criterion="mi")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out["gaussian_select_s"] = round(time.perf_counter() - t0, 3)
    out["gaussian_select_s_per_step"] = round(out["gaussian_select_s"] / max(1, len(res.selected)), 4)
    out["gaussian_mi_bits_at_k"] = round(res.path[-1]["select_mi_bits"], 4)
    out["gaussian_dev_acc_at_k"] = round(res.path[-1]["select_acc"], 4)
    if args.threads:
        base = torch.get_num_threads()
        by, same = {}, True
        try:
            for th in [int(t) for t in args.threads.split(",") if t]:
                torch.set_num_threads(th)
                t0 = time.perf_counter()
                r = probe.select(Xva, yva, k=args.k, criterion="mi")
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                by.setdefault(str(th), []).append(round(time.perf_counter() - t0, 3))
                same = same and r.selected == res.selected
        finally:
            torch.set_num_threads(base)
        out["gaussian_select_s_by_threads"] = by
        out["gaussian_same_selection_across_threads"] = same
    out["gaussian_selected"] = [int(j) for j in res.selected]
    out["gaussian_peak_rss_mb"] = rss_mb()
    del probe, res
    if args.skip_mask:
        print(json.dumps(out))
        return out
    # the mask as `neurolab probe probe=neuron_mask` runs it (its default config): a linear probe on all
    # neurons first (not timed), then the constrained and annealing epochs (timed: time/mask_fit_s)
    from neurolab.config import compose
    from neurolab.data import ArrayData
    from neurolab.methods import RunContext
    from neurolab.tasks.pipeline import build_method

    data = ArrayData({"train": (Xtr, ytr), "val": (Xva, yva), "test": (Xva, yva)},
                     class_names=[str(c) for c in range(C)])
    mcfg = compose("probe", ["probe=neuron_mask", "logger=none", "trainer.enable_progress_bar=false",
                             f"method.max_epochs={args.epochs}", "probe.checkpoint=false",
                             f"trainer.accelerator={'gpu' if dev.type == 'cuda' else 'cpu'}"],
                   run_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench_gaussmask_run"))
    pl.seed_everything(0, verbose=False)
    m = build_method(mcfg.method).fit(data, RunContext(cfg=mcfg)).metrics_
    out["mask_train_s"] = round(float(m["time/mask_fit_s"]), 3)
    out["mask_epochs"] = args.epochs
    out["mask_anneal_epochs"] = int(mcfg.method.module.get("anneal_epochs", 0) or 0)
    out["mask_kept"] = int(m["mask/kept"])
    out["mask_dev_divergence"] = round(float(m.get("val/mask_divergence", float("nan"))), 4)
    out["mask_dev_acc"] = round(float(m.get("val/mask_acc", float("nan"))), 4)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
