"""pytest wrapper of bench_store_verify.py (not run in CI): the script prints one JSON object."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark


def test_bench_store_verify_prints_one_json_object(tmp_path):
    script = Path(__file__).with_name("bench_store_verify.py")
    r = subprocess.run([sys.executable, str(script), "--work", str(tmp_path)], capture_output=True, text=True,
                       timeout=7200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if "skipped" in out:
        pytest.skip(out["skipped"])
    assert out["open_s"]["once_files_hashed"] == 0  # the marker vouches for every file after the first run
    assert out["overhead"] <= 0.10
