"""pytest wrapper of bench_gaussmask.py (marked ``benchmark``: not run in CI; `pytest -m benchmark` runs it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
def test_bench_gaussmask_prints_one_json_object():
    script = Path(__file__).with_name("bench_gaussmask.py")
    out = subprocess.run([sys.executable, str(script), "--k", "5", "--epochs", "1"], capture_output=True, text=True,
                         check=True, timeout=1800)
    lines = [l for l in out.stdout.splitlines() if l.strip()]
    res = json.loads(lines[-1])
    for key in ("gaussian_fit_s", "gaussian_select_s", "mask_train_s"):
        assert res[key] > 0
