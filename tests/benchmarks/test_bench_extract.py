"""pytest wrapper of the extraction benchmark (run explicitly: pytest -m benchmark)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.benchmark
def test_bench_extract(ewt_dev, minilm_dir):
    script = Path(__file__).with_name("bench_extract.py")
    r = subprocess.run([sys.executable, str(script), "--corpus", str(ewt_dev), "--rounds", "1", "--no-rss"],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["words"] > 20000 and out["neurons"] == 2688
    assert out["ratio_best"] > 0
