"""Real data: EWT dev, all-MiniLM-L6-v2, all 7 hidden-state sites, UPOS, default split (slow)."""
from __future__ import annotations

import pytest

from tests.helpers.probes import ewt_datamodule

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def ewt_dm(ewt_dev, minilm_dir, ewt_store, tmp_path_factory):
    return ewt_datamodule(ewt_dev, minilm_dir, ewt_store, tmp_path_factory.mktemp("ewt_probe"))


def test_all_neuron_accuracy_and_identical_rerun(ewt_dm, tmp_path):
    from tests.helpers.probes import fit_method

    dm, cfg = ewt_dm
    assert dm.num_features == 2688 and dm.num_classes == 17
    r1, m1 = fit_method(dm, cfg)[:2]
    assert m1["test/acc"] >= 0.94, m1
    r2, m2 = fit_method(dm, cfg)[:2]
    r1.to_json(tmp_path / "a.json")
    r2.to_json(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert m2["test/acc"] == m1["test/acc"]
    assert len(r1) == 2688 and r1.sites[0] == "embeddings"
