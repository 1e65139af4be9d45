"""Train one linear probe on the planted store with 1 or N CPU processes (run by test_probe_ddp.py).

    python tests/integration/probe_ddp_main.py STORE_DIR OUT_DIR DEVICES

Lightning's DDP launcher re-runs this script for the other ranks; rank 0 writes
``OUT_DIR/probe/best.safetensors`` and ``OUT_DIR/metrics.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    store_dir, out_dir, devices = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    import torch

    torch.set_num_threads(1)
    from neurolab.corpus import split_sentences
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from neurolab.probes import fit_probe
    from tests.helpers.probes import planted_corpus, probe_cfg

    corpus = planted_corpus(120)
    dm = ActivationDataModule(store_dir, corpus, split_sentences(len(corpus)), ColumnConcept("upos"))
    dm.setup()
    trainer = ["trainer=cpu"] if devices == 1 else ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"]
    cfg = probe_cfg(out_dir, *trainer, "trainer.enable_progress_bar=false", "probe.batch_size=64",
                    "probe.module.optimizer.lr=0.02", "trainer.max_epochs=" + (sys.argv[4] if len(sys.argv) > 4 else "4"))
    module, metrics = fit_probe(dm, cfg)
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    if rank == 0:
        (out_dir / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main()
