"""trainer=ddp: a probe trained by 2 CPU processes (gloo) equals the one trained by 1 process.

Both runs use the same global batch (each of the 2 ranks takes half of every batch) and the loss is
the mean over the global batch, so the steps are the same up to float summation order.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).with_name("probe_ddp_main.py")
REPO = Path(__file__).resolve().parents[2]


def _run(store: Path, out: Path, devices: int) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    r = subprocess.run([sys.executable, str(SCRIPT), str(store), str(out), str(devices), "4"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert (out / "metrics.json").exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text()), load_file(str(out / "probe" / "best.safetensors"))


def test_two_processes_give_the_same_probe_as_one(tmp_path):
    from tests.helpers.probes import planted_corpus, planted_store

    store = tmp_path / "store"
    planted_store(planted_corpus(120), store)
    m1, w1 = _run(store, tmp_path / "one", 1)
    m2, w2 = _run(store, tmp_path / "two", 2)
    np.testing.assert_allclose(w2["weight"], w1["weight"], atol=1e-5)
    np.testing.assert_allclose(w2["bias"], w1["bias"], atol=1e-5)
    assert m2["probe/best_epoch"] == m1["probe/best_epoch"]
    for k in ("val/acc", "test/acc", "test/f1_macro"):
        assert m2[k] == pytest.approx(m1[k], abs=1e-6)
