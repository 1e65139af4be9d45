"""Pytest wrapper of bench_memory_cli.py (marked benchmark; not run in CI)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).with_name("bench_memory_cli.py")


@pytest.mark.benchmark
def test_bench_memory_cli_small(tmp_path, ewt_dev):
    out = subprocess.run([sys.executable, str(BENCH), "--sentences", "60", "--scale", "2", "--short",
                          "--only", "rank:probeless", "--workdir", str(tmp_path)],
                         check=True, capture_output=True, text=True, timeout=1800)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rows_x2"] == 2 * res["rows_x1"]
    r = res["commands"]["rank:probeless"]
    assert r["x1"]["peak_rss_mb"] > 0 and r["x2"]["peak_rss_mb"] > 0 and r["ratio"] > 0, r
