"""Pytest wrapper of bench_datamodule.py (marked benchmark; not run in CI)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).with_name("bench_datamodule.py")


@pytest.mark.benchmark
def test_bench_datamodule_small(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--rows", "20000", "--scale", "2", "--workdir", str(tmp_path)],
                         check=True, capture_output=True, text=True, timeout=1800)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["train_x1"]["rows"] == 16000 and res["train_x2"]["rows"] == 32000
    assert res["throughput_ratio"] > 0 and res["rss_ratio"] > 0
