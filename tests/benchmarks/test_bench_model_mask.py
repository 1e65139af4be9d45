"""pytest wrapper of bench_model_mask.py (marked ``benchmark``: not run in CI; `pytest -m benchmark` runs it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_model_mask(ewt_dev, minilm_dir):
    script = Path(__file__).with_name("bench_model_mask.py")
    res = subprocess.run([sys.executable, str(script), "--conllu", str(ewt_dev), "--max-sentences", "40",
                          "--constraint-every", "0"], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    run = out["mask"]["constraint_every=0"]
    assert out["gates"] == 2688 and out["words"] > 300 and run["epoch_s"] > 0 and run["ratio_epoch"] > 0
