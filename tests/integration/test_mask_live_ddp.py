"""trainer=ddp: the model-mode mask (method=neuron_mask method.mode=model) trained by 2 CPU processes
(gloo) gives the same gates as 1 process, on the tiny BERT whose tagger head reads units 3, 11, 20 of
layers.1.

Each rank runs its share of the sentences of every batch, the gates' noise is drawn for the whole batch
alike on every rank, the KL is the mean over the examples of all ranks and DDP averages the gradients:
the steps are those of one process up to float summation order (the test's tolerances below).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("mask_ddp_main.py")
REPO = Path(__file__).resolve().parents[2]


def _run(out: Path, devices: int) -> tuple[dict, np.ndarray]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    r = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices)], env=env, capture_output=True, text=True,
                       timeout=300, cwd=str(REPO))
    assert (out / "result.json").exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "result.json").read_text()), np.load(out / "gates.npy")


def test_two_processes_give_the_same_gates_as_one(tmp_path):
    r1, g1 = _run(tmp_path / "one", 1)
    r2, g2 = _run(tmp_path / "two", 2)
    assert r1["world"] == 1 and r2["world"] == 2
    # rank 0 ran only its share of the examples (about half), the single process all of them
    assert 0 < r2["examples_seen"] < 0.75 * r1["examples_seen"], (r1["examples_seen"], r2["examples_seen"])
    np.testing.assert_allclose(g2, g1, atol=1e-5)
    assert r2["order"] == r1["order"]
    assert r1["kept"] == r2["kept"] == [3, 11, 20]  # the planted units (local indices of layers.1)
    for k in ("mask/kept", "mask/kl", "mask/acc", "mask/base_acc", "mask/examples", "mask/constraint_met",
              "mask/chosen_epoch"):
        assert r2["metrics"][k] == pytest.approx(r1["metrics"][k], abs=1e-6), k
    assert [p["kept"] for p in r2["path"]] == [p["kept"] for p in r1["path"]]
    np.testing.assert_allclose([p["kl"] for p in r2["path"]], [p["kl"] for p in r1["path"]], atol=1e-6)
    np.testing.assert_allclose([p["lambda"] for p in r2["path"]], [p["lambda"] for p in r1["path"]], rtol=1e-5)
