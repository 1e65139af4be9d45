"""pytest wrapper of bench_methods.py (marked ``benchmark``: not run in CI; `pytest -m benchmark` runs it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_methods(ewt_dev, minilm_dir, tmp_path):
    script = Path(__file__).with_name("bench_methods.py")
    res = subprocess.run([sys.executable, str(script), "--conllu", str(ewt_dev), "--store", str(tmp_path / "store")],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["neurolab"]["neurons"] == 2688 and out["neurolab"]["passes"] == 2
    if isinstance(out["neurox"], dict) and "probeless_same_order" in out["neurox"]:
        assert out["neurox"]["probeless_top1pct_overlap"] == 1.0
