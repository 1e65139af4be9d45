"""What `neurolab probe` says on the console: its run directory first, no known-harmless warnings, the
W&B run's summary before the closing lines, and the run directory last."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.trust import tagged_store

REPO = Path(__file__).resolve().parents[2]
HARMLESS = ("LeafSpec", "anonymous setting", "IterableDataset", "configure_optimizers", "eval mode",
            "does not have many workers", "smaller than the logging interval")


def test_probe_console_output(tmp_path):
    conllu, store = tagged_store(tmp_path / "data")
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(REPO))
    env.pop("WANDB_DISABLED", None)
    env.pop("WANDB_SILENT", None)  # the tests silence W&B; a user sees its summary
    cmd = [sys.executable, "-m", "neurolab.cli", "probe", f"store.dir={store}", f"corpus.path={conllu}",
           "extract_if_missing=false", "logger=wandb", "trainer.max_epochs=2", "evaluation=[retrain,sites]",
           "evaluation.percentages=[10]", "evaluation.retrain.random_seeds=[0]", "method=gaussian", "method.k=3",
           f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=900)
    out = p.stdout
    assert p.returncode == 0, out[-3000:]
    for w in HARMLESS:
        assert w not in out, f"{w!r} on the console:\n{out[-4000:]}"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert "run directory" in lines[0] and str(tmp_path / "run") in lines[0]
    assert "probe done; run directory" in lines[-1]
    assert "probe gaussian" in lines[-2] and "test/acc" in lines[-2]
    wandb_summary = [i for i, ln in enumerate(lines) if "Run summary" in ln]
    assert wandb_summary and wandb_summary[0] < len(lines) - 2, "the W&B summary should come before the closing lines"
