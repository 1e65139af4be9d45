"""pytest wrapper of bench_store_read.py (marked benchmark: not run in CI)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
def test_bench_store_read():
    script = Path(__file__).with_name("bench_store_read.py")
    r = subprocess.run([sys.executable, str(script), "--gb", "0.25", "--repeats", "1"], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rows"] > 0 and result["read_slice_rows_per_s"] > 0
