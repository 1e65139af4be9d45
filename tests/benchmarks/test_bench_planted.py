"""pytest wrappers of bench_planted.py and bench_compare_ewt.py (marked ``benchmark``: not run in CI;
`pytest -m benchmark` runs them, on a reduced grid)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_planted(ewt_dev, minilm_dir, tmp_path):
    res = subprocess.run([sys.executable, str(HERE / "bench_planted.py"), "--conllu", str(ewt_dev),
                          "--store", str(tmp_path / "store"), "--types", "focused,group,redundant", "--effects", "1",
                          "--methods", "probeless,selectivity,genetic", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["failed"] == [] and out["suite"]["cases"] == 3
    assert out["reads_per_store"] == {"min": 1.0, "max": 1.0}  # one read of each store for every method
    for m in ("probeless", "selectivity", "genetic", "linear"):
        assert out["ap_by_effect"][f"{m}/focused"]["1"] == 1.0
    assert out["ap_by_effect"]["genetic/group"]["1"] == 1.0


@pytest.mark.benchmark
@pytest.mark.slow
def test_bench_compare_ewt(ewt_dev, minilm_dir, tmp_path):
    res = subprocess.run([sys.executable, str(HERE / "bench_compare_ewt.py"), "--conllu", str(ewt_dev),
                          "--store", str(tmp_path / "store"), "--tags", "NN,VB", "--methods", "probeless,ap",
                          "--probes", "", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["failed"] == [] and set(out["matrix"]) == {"probeless", "ap"}
    assert 0.0 <= out["mean_share"]["10"] <= 1.0 and (tmp_path / "out" / "compare.html").exists()
