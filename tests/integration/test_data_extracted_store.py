"""The DataModule over a store made by real extraction (fingerprinted), word and sentence level."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.data import build_datamodule
from neurolab.errors import NeurolabError


@pytest.mark.slow
def test_datamodule_over_extracted_demo_store(tmp_path, minilm_dir):
    from neurolab.tasks.extract import extract_store

    over = [f"model.name_or_path={minilm_dir}", f"store.dir={tmp_path / 'store'}", "sites=layers.0-1",
            "extract.sentence_rows=mean", "extract.progress=false"]
    cfg = compose("probe", over + ["data.memory_budget_mb=0"], run_dir=tmp_path / "run")
    store = extract_store(cfg)
    assert store.identity.get("corpus_fingerprint")
    dm = build_datamodule(cfg, store=store)
    dm.setup()
    assert dm.sites == ["layers.0", "layers.1"] and dm.num_features == 768
    assert dm.stats["missing_rows"] == 0
    X, y = dm.arrays("test")
    raw = store.read(dm.row_ids("test"), dm.sites)
    np.testing.assert_allclose(X, (raw - dm.mean_) / dm.std_, rtol=1e-4, atol=1e-4)
    # sentence level: the extraction's sentence rows are used
    cfg_s = compose("probe", over + ["concept=sentence.length"], run_dir=tmp_path / "run")
    dms = build_datamodule(cfg_s, store=store)
    dms.setup()
    assert str(dms.store.path).endswith("sentences")
    assert sum(len(dms.row_ids(s)) for s in ("train", "dev", "test")) + sum(
        dms.stats.get(f"unseen/{s}", 0) for s in ("dev", "test")) == dms.stats["sentences"]
    # another corpus with this store: refused, naming both
    cfg_bad = compose("probe", over + ["corpus=ewt_dev"], run_dir=tmp_path / "run")
    try:
        with pytest.raises(NeurolabError, match="another corpus"):
            build_datamodule(cfg_bad, store=store).setup()
    except FileNotFoundError:
        pytest.skip("EWT not available")
