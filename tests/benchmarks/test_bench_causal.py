"""pytest wrapper of bench_causal.py (marked ``benchmark``: not run in CI; `pytest -m benchmark` runs it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_causal(ewt_test, minilm_dir):
    script = Path(__file__).with_name("bench_causal.py")
    res = subprocess.run([sys.executable, str(script), "--conllu", str(ewt_test), "--max-sentences", "40", "--reps", "1"],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["curve"]["passes"] == 16 and out["first_order"]["neurons"] == 11904
    assert out["curve"]["upper_layers"]["rerun_fraction"] < out["curve"]["all_layers"]["rerun_fraction"]
