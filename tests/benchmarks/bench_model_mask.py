"""One epoch of the differentiable mask of the live model (``method=neuron_mask method.mode=model``)
against one forward + backward pass of the frozen model over the same words, side by side in one
run; prints ONE JSON object.

    python tests/benchmarks/bench_model_mask.py [--conllu EWT-dev.conllu] [--max-sentences 0] [--threads 0]

MiniLM (the packaged all-MiniLM-L6-v2) with a tagger on layers.5 (seeded random weights: timing does not
depend on its training), gates on the 7 hidden sites (2,688 neurons; ``--sites``: others), EWT dev (``--max-sentences``: its
first sentences only; 0: all), batches of at most 16 sentences / 2,048 padded tokens, as the method's
defaults. The mask runs two epochs: the first also computes (and keeps) the unmasked outputs; the
second is the steady state. An epoch is its training steps (a forward and a backward pass with sampled
gates, and with ``constraint_every`` = n > 0, every n steps a forward pass without gradient of the kept set for the
multiplier) plus the evaluation of the kept set over the whole split at the epoch's end (the
sparsity / fidelity path). ``baseline``: one forward and one backward pass of the head's loss over the
same batches with one gradient leaf per site (the same hooks, gates fixed at 1). Wall-clock seconds
(best of three baseline runs) and process CPU seconds are both reported: on a shared machine the CPU
time is the steadier figure (``ratio_cpu_mean_epoch``: the mask's CPU time per epoch, both epochs
averaged, over the baseline's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DEFAULT_CONLLU = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt" / "en_ewt-ud-dev.conllu"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conllu", default=str(DEFAULT_CONLLU))
    ap.add_argument("--max-sentences", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--constraint-every", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sites", nargs="+", default=["embeddings"] + [f"layers.{i}" for i in range(6)],
                    help="gated sites (default: all 7; e.g. layers.5 alone: the blocks below it are kept from the "
                         "first epoch and only the top block reruns)")
    args = ap.parse_args(argv)

    import logging

    import pytorch_lightning as pl
    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    from neurolab.causal import LiveModel, TaggerHead
    from neurolab.causal.mask import LiveMask
    from neurolab.corpus import read_conllu
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.models.loading import load_model, packaged_minilm

    corpus = read_conllu(args.conllu)
    classes = sorted({u for s in corpus.sentences for u in s.annotations["upos"] if u not in (None, "_")})
    rng = np.random.default_rng(0)
    head = TaggerHead(site="layers.5").set_weights(rng.normal(size=(len(classes), 384)) * 0.05,
                                                   np.zeros(len(classes)), classes)
    model, tok = load_model({"name_or_path": str(packaged_minilm())})
    live = LiveModel.from_corpus(model, tok, head, corpus, {"dev": np.arange(len(corpus))}, ColumnConcept("upos"),
                                 device=args.device)
    sites = list(args.sites)
    nps = {s: 384 for s in sites}
    gates = 384 * len(sites)
    ms = args.max_sentences or None
    dev = live.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def new_mask(every):
        return LiveMask(live, sites, nps, np.arange(gates), split="dev", max_sentences=ms, constraint_every=every,
                        eps=0.1, lr=0.1, lambda_lr=0.1, init_open=0.95, target_kept=None)

    probe = new_mask(1)
    batches = probe.batches_
    words = int(sum(len(b.rows) for b in batches))
    tokens = int(sum(int(b.attention_mask.sum()) for b in batches))

    def forward_backward():
        sync()
        t = time.perf_counter()
        c = time.process_time()
        for b in batches:
            leaves = {s: torch.ones(384, device=dev, requires_grad=True) for s in sites}
            fns = {s: (lambda x, _g=leaves[s]: x * _g) for s in sites}
            h, _ = live.forward(b, fns, grad=True)
            h.loss[0].sum().backward()
        sync()
        cpu.append(time.process_time() - c)
        return time.perf_counter() - t

    cpu: list[float] = []

    out = {"model": "all-MiniLM-L6-v2", "device": str(dev), "threads": torch.get_num_threads(), "sentences": len(probe.live.sentences("dev", ms)),
           "words": words, "tokens": tokens, "batches": len(batches), "gates": gates, "sites": sites}
    base = [forward_backward() for _ in range(2)]
    out["baseline_forward_backward_s"] = round(min(base), 3)
    runs = {}
    for every in args.constraint_every:
        mask = new_mask(every)
        pl.seed_everything(0, verbose=False)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, enable_progress_bar=False, limit_val_batches=0,
                             num_sanity_val_steps=0)
        c0 = time.process_time()
        trainer.fit(mask, train_dataloaders=mask.loader(0))
        cpu_fit = time.process_time() - c0
        first, second = mask.epoch_s_[0] + mask.eval_s_[0], mask.epoch_s_[1] + mask.eval_s_[1]
        runs[f"constraint_every={every}"] = {
            "first_epoch_s": round(first, 3), "epoch_s": round(second, 3), "steps_s": round(mask.epoch_s_[1], 3),
            "eval_s": round(mask.eval_s_[1], 3), "ratio_epoch": round(second / min(base), 3),
            "ratio_steps": round(mask.epoch_s_[1] / min(base), 3), "ratio_first_epoch": round(first / min(base), 3),
            "cpu_s_two_epochs": round(cpu_fit, 3),
            "ratio_cpu_mean_epoch": round(cpu_fit / 2 / min(cpu), 3),
            "kept_after_2_epochs": int(mask.kept_mask().sum()), "kl_after_2_epochs": round(mask.path_[-1]["kl"], 5)}
    base.append(forward_backward())
    out["baseline_forward_backward_s"] = round(min(base), 3)
    out["baseline_runs_s"] = [round(b, 3) for b in base]
    out["baseline_cpu_s"] = round(min(cpu), 3)
    out["mask"] = runs
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
