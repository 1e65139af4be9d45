"""`neurolab run` with no overrides but the run directory: the whole pipeline on the bundled demo,
through the CLI in a subprocess, with a W&B offline run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_neurolab_run_demo_end_to_end(tmp_path):
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", NEUROLAB_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1",  # tiny probes: one thread is fastest on a shared machine
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "neurolab.cli", "run", f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    for f in ("metrics.json", "ranking.json", "probeless_ranking.json", "config.yaml", "report.html", "sites.png",
              "accuracy.png", "probeless_accuracy.png"):
        assert (run / f).exists(), f
    m = json.loads((run / "metrics.json").read_text())
    for k in ("test/acc", "top/acc@1%", "random/acc@1%", "bottom/acc@1%", "top/acc@5%", "top/acc@10%", "control/acc",
              "selectivity", "mask/acc@1%", "minimal/neurons", "probeless/top/acc@1%", "probeless/random/acc@1%"):
        assert isinstance(m.get(k), (int, float)), k
    assert m["test/acc"] > 0.85  # MiniLM, UPOS, all layers, demo corpus
    assert m["top/acc@10%"] > m["bottom/acc@10%"]
    assert m["selectivity"] == pytest.approx(m["test/acc"] - m["control/acc"], abs=1e-6)
    r = json.loads((run / "ranking.json").read_text())
    assert r["sites"] == ["embeddings"] + [f"layers.{i}" for i in range(6)] and len(r["neurons"]) > 0
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "top/acc@1%" in html
    # the W&B offline run carries the tables and images
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, list(run.iterdir())
    assert any(offline[0].rglob("*.wandb"))
    # a short human summary at the end
    log = (run / "run.log").read_text()
    assert "run directory" in log and "report" in log
