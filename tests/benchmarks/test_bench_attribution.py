"""pytest wrapper of bench_attribution.py (marked ``benchmark``: not run in CI; `pytest -m benchmark` runs it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_attribution(ewt_test, minilm_dir):
    script = Path(__file__).with_name("bench_attribution.py")
    res = subprocess.run([sys.executable, str(script), "--conllu", str(ewt_test), "--words", "40", "--steps", "4",
                          "--reps", "1", "--sites", "layers.4.mlp", "--naive-words", "10",
                          "--generate-steps", "5"],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    site = out["sites"]["layers.4.mlp"]
    assert out["words"] >= 40 and site["attribution_s"] > 0 and site["plain_s"] > 0
    assert site["completeness_error"] < 0.2 and site["naive_words"] >= 10
    assert out["generation"]["seconds"] > 0
