"""pytest wrapper of bench_analysis.py (marked ``benchmark``: not run in CI; `pytest -m benchmark` runs it)
on stores of EWT dev's shape with random activations, one repeat, without the 12k clustering."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_analysis():
    script = Path(__file__).with_name("bench_analysis.py")
    res = subprocess.run([sys.executable, str(script), "--repeats", "1", "--skip-clustering"], capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["store"]["neurons"] == 2688 and out["store"]["rows"] == 25147
    assert out["correlation"]["pass_float32_s"] > 0 and out["memory"]["rss_ratio"] > 0
    assert out["latent"]["words"] == 25147 and out["latent"]["method"] == "kmeans+ward"
