"""What a neurolab process pays for before it holds any data: the seed without Lightning, the verbs that
train nothing without Lightning or W&B, and glibc's mmap threshold fixed so freed batch blocks go back."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.extraction import save_tiny_model

REPO = Path(__file__).resolve().parents[2]


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_matches_lightnings():
    from pytorch_lightning import seed_everything as pl_seed

    from neurolab.tasks.common import seed_everything

    for seed in (0, 42, 2**32 - 1):
        for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
            os.environ.pop(k, None)
        pl_seed(seed, workers=True, verbose=False)
        theirs = (_draws(), os.environ["PL_GLOBAL_SEED"], os.environ["PL_SEED_WORKERS"])
        random.seed(123)  # other states in between
        np.random.seed(123)
        torch.manual_seed(123)
        for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
            os.environ.pop(k)
        assert seed_everything(seed) == seed
        ours = (_draws(), os.environ["PL_GLOBAL_SEED"], os.environ["PL_SEED_WORKERS"])
        assert ours == theirs
    with pytest.raises(ValueError, match="out of bounds"):
        seed_everything(-1)


def test_extract_imports_neither_lightning_nor_wandb(tmp_path):
    """``neurolab extract`` trains nothing: the process never imports Lightning, torchmetrics or W&B
    (Lightning's import alone is a few hundred MB of resident memory and seconds)."""
    bert = save_tiny_model("bert", tmp_path / "bert", hidden=32, layers=2)
    code = ("import sys, json; from neurolab.cli import main; "
            f"rc = main(['extract', 'model.name_or_path={bert}', 'corpus=demo', 'store.dir={tmp_path / 'store'}', "
            f"'hydra.run.dir={tmp_path / 'run'}', 'extract.progress=false']); "
            "print(json.dumps({'rc': rc, 'mods': sorted(m for m in ('pytorch_lightning', 'lightning_fabric', "
            "'torchmetrics', 'wandb') if m in sys.modules)}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, WANDB_MODE="offline"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rc"] in (0, None) and (tmp_path / "store").is_dir()
    assert out["mods"] == []


_MMAP_PROBE = """
import ctypes, json, sys
import numpy as np
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = M
if sys.argv[1] == "fixed":
    from neurolab.heap import fixed_mmap_threshold
    assert fixed_mmap_threshold() == 1 << 20
a = np.ones(8 << 20, dtype=np.uint8)   # mmapped (above every threshold) ...
del a                                  # ... and freed: glibc raises its threshold to 8 MiB
base = libc.mallinfo2().hblkhd
b = np.ones(4 << 20, dtype=np.uint8)   # a batch-sized block
print(json.dumps({"mmapped_delta": libc.mallinfo2().hblkhd - base}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_fixed_mmap_threshold_keeps_batch_blocks_out_of_the_heap():
    """After an 8 MiB block is freed, glibc's dynamic threshold puts a 4 MiB block on the heap (where
    freed space fragments); with the fixed threshold it gets its own mapping, returned when freed."""
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33")
    got = {}
    for mode in ("default", "fixed"):
        r = subprocess.run([sys.executable, "-c", _MMAP_PROBE, mode], cwd=REPO, capture_output=True, text=True,
                           timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_",
                                                                                                      "NEUROLAB_MMAP"))})
        assert r.returncode == 0, r.stderr[-2000:]
        got[mode] = json.loads(r.stdout.strip().splitlines()[-1])["mmapped_delta"]
    assert got["default"] == 0
    assert got["fixed"] >= 4 << 20


def test_fixed_mmap_threshold_can_be_turned_off(monkeypatch):
    from neurolab.heap import MMAP_THRESHOLD_ENV, fixed_mmap_threshold

    monkeypatch.setenv(MMAP_THRESHOLD_ENV, "off")
    assert fixed_mmap_threshold() == 0
    monkeypatch.setenv(MMAP_THRESHOLD_ENV, "2097152")
    assert fixed_mmap_threshold() in (0, 2097152)  # 0 where the C library is not glibc
    assert fixed_mmap_threshold(1 << 20) in (0, 1 << 20)
