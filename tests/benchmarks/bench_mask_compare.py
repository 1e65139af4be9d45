"""The model-mode mask's ranking beside the linear, attribution and ablation rankings, all of MiniLM's 7
hidden sites (2,688 neurons) for UPOS, under the same evaluators; prints ONE JSON object.

    python tests/benchmarks/bench_mask_compare.py [--work DIR] [--methods neuron_mask,linear,attribution,ablation]
        [--evaluation ablation,retrain] [--sentences 100] [--test-sentences 120] [--mask KEY=VALUE ...]

Every method runs through ``neurolab rank`` (composed configs, as the CLI composes them) on one store of
EWT dev (MiniLM, ``sites=all_layers``, extracted once into ``--work``) and one UPOS tagger head on
layers.5 (trained by the first run, reused by the others with ``task.path``). The causal methods see the
first ``--sentences`` sentences of their split: the mask the dev split (``method.live.max_sentences``),
ablation the train split (``method.max_sentences``); attribution the first ``--attribution-sentences`` of the
train split (integrated gradients cost about 0.5 s per word and site on one CPU thread: 7 sites x 100
sentences would take hours); linear trains its probe on the store's train rows. Evaluators: ``ablation`` (zero-ablation of the top / random k in the live model, the tagger's
accuracy on the first ``--test-sentences`` sentences of the test split; random k: 3 seeds) and ``retrain``
(probes retrained on the top / random k), at 1% and 5% (27 and 134 neurons). ``--mask key=value``:
overrides of the mask's settings (e.g. ``method.module.lr=0.02``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
UD = Path(os.environ.get("NEUROLAB_DATA", REPO.parent / "shared" / "data")) / "ud-english-ewt"

METHODS = {
    "neuron_mask": ["method=neuron_mask", "method.mode=model"],
    "linear": ["method=linear"],
    "attribution": ["method=attribution"],
    "ablation": ["method=ablation"],
}
KEYS = ("ablation/base", "ablation/top@1%", "ablation/random@1%", "ablation/random_std@1%", "ablation/top@5%",
        "ablation/random@5%", "ablation/random_std@5%", "top/acc@1%", "random/acc@1%", "top/acc@5%", "random/acc@5%",
        "mask/kept", "mask/kept_share", "mask/kl", "mask/constraint_met", "mask/epochs")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/neurolab-bench-mask-compare")
    ap.add_argument("--conllu", default=str(UD / "en_ewt-ud-dev.conllu"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--evaluation", default="ablation,retrain")
    ap.add_argument("--sentences", type=int, default=100)
    ap.add_argument("--attribution-sentences", type=int, default=8)
    ap.add_argument("--test-sentences", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mask", nargs="*", default=[], help="overrides of the mask's settings (method.*=...)")
    args = ap.parse_args(argv)

    import logging

    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    from neurolab.config import compose
    from neurolab.models.loading import packaged_minilm
    from neurolab.tasks.rank import rank

    work = Path(args.work)
    common = [f"model.name_or_path={packaged_minilm()}", f"corpus.path={args.conllu}", "corpus.name=ewt_dev",
              f"store.dir={work / 'store'}", "sites=all_layers", "extract.progress=false", "concept=upos",
              "logger=none", "viz.enabled=false", "trainer.enable_progress_bar=false", "seed=0",
              f"evaluation=[{args.evaluation}]", "evaluation.percentages=[1,5]", "evaluation.plots=false",
              "task=tagger", "task.site=layers.5", "task.device=cpu", "trainer.accelerator=cpu", "trainer.devices=1"]
    evals = args.evaluation.split(",")
    if "ablation" in evals:
        common += [f"evaluation.ablation.max_sentences={args.test_sentences}", "evaluation.ablation.bottom=false",
                   "evaluation.ablation.plots=false"]
    if "retrain" in evals:
        common += ["evaluation.retrain.bottom=false"]
    head = work / "head"
    per = {
        "neuron_mask": [f"method.live.max_sentences={args.sentences}", *args.mask],
        "linear": [],
        "attribution": [f"method.max_sentences={args.attribution_sentences}", "method.save_examples=false"],
        "ablation": [f"method.max_sentences={args.sentences}", "method.loss_on=all"],  # (concept=upos has no value)
    }
    out: dict = {"model": "all-MiniLM-L6-v2", "sites": "all_layers (2688 neurons)", "concept": "upos",
                 "task": "tagger on layers.5", "sentences": args.sentences,
                 "attribution_sentences": args.attribution_sentences, "test_sentences": args.test_sentences,
                 "threads": torch.get_num_threads(), "mask_overrides": args.mask, "methods": {}}
    for name in args.methods.split(","):
        task = [f"task.path={head}"] if (head / "task").exists() else []
        run = head if not task else work / name
        t0 = time.perf_counter()
        m = rank(compose("rank", common + task + METHODS[name] + per[name], run_dir=run))
        res = {k: (round(float(m[k]), 4) if isinstance(m.get(k), float) else m.get(k)) for k in KEYS if k in m}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out["methods"][name] = res
        print(json.dumps({name: res}), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
