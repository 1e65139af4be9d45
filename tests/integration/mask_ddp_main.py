"""Train the model-mode mask on the planted tiny tagger with 1 or N CPU processes (run by
test_mask_live_ddp.py).

    python tests/integration/mask_ddp_main.py OUT_DIR DEVICES [EPOCHS]

Lightning's DDP launcher re-runs this script for the other ranks; rank 0 writes ``OUT_DIR/gates.npy``
(the final log_alpha), ``OUT_DIR/result.json`` (ranking order, kept set, metrics, path).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    out_dir, devices = Path(sys.argv[1]), int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from neurolab.config import compose
    from neurolab.methods.base import RunContext
    from neurolab.probes.mask import NeuronMask
    from neurolab.probes.mask_method import NeuronMaskMethod
    from tests.helpers.live_mask import planted_live_mask_data

    live, data = planted_live_mask_data(4)
    data = data.subset(np.arange(32, 64))
    trainer = ["trainer=cpu"] if devices == 1 else ["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={devices}"]
    cfg = compose("probe", ["logger=none", "trainer.enable_progress_bar=false", "seed=0", *trainer], run_dir=out_dir)
    mod = dict(eps=0.02, lr=0.1, lambda_lr=0.1, lambda_init=100.0, target_kept=3, anneal_epochs=4)
    m = NeuronMaskMethod(module=lambda num_gates: NeuronMask(num_gates, **mod), mode="model", max_epochs=epochs,
                         live={"batch_sentences": 4, "eps": None})
    m.fit(data, RunContext(cfg=cfg, live=lambda: live, seed=0))
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "gates.npy", m.mask_.gates.log_alpha.detach().cpu().numpy())
        res = {"order": m.ranking_.indices.tolist(), "kept": m.mask_.kept().tolist(),
               "metrics": {k: float(v) for k, v in m.metrics_.items() if not k.startswith("time/")},
               "path": m.mask_.path_, "world": m.mask_.world_, "batches": len(m.mask_.batches_),
               "examples_seen": m.mask_.examples_seen_}
        (out_dir / "result.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()
