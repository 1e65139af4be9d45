"""ProbeBank: K probes in one pass equal K probes trained alone (same seed, init and batches)."""
from __future__ import annotations

import numpy as np
import pytest

from neurolab.errors import ConfigError
from neurolab.probes import ProbeSpec, fit_probe, fit_probe_bank, rank_from_weights
from neurolab.probes.bank import layer_grid
from tests.helpers.probes import PLANTED, planted_datamodule, planted_index, probe_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

OV = ("probe.module.optimizer.lr=0.02", "trainer.max_epochs=6", "probe.early_stopping.patience=1")


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    return planted_datamodule(tmp_path_factory.mktemp("bank"), num_sentences=120)


def test_bank_equals_separate_probes(dm, tmp_path):
    cfg = probe_cfg(tmp_path, *OV)
    specs = layer_grid(dm, [(1e-3, 1e-3), (0.0, 0.0)], sites=["embeddings", "layers.1"], all_sites=True)
    specs.append(ProbeSpec("nsq", None, 0.0, 3e-2, l2_squared=False))
    assert len(specs) == 7
    bank, metrics = fit_probe_bank(dm, cfg, specs)
    for k, s in enumerate(specs):
        reg = {"name": "custom", "lambda_l1": s.lambda_l1, "lambda_l2": s.lambda_l2, "l2_squared": s.l2_squared}
        alone, m = fit_probe(dm, cfg, columns=s.neurons, regularization=reg, save=False)
        np.testing.assert_allclose(bank.weight_matrix(k), alone.weight_matrix, atol=2e-5, err_msg=s.name)
        np.testing.assert_allclose(bank.bias(k), alone.linear.bias.detach().numpy(), atol=2e-5)
        assert metrics[s.name]["probe/best_epoch"] == m["probe/best_epoch"], s.name
        for key in ("val/acc", "test/acc", "test/f1_macro", "test/acc/NOUN"):
            assert metrics[s.name][key] == pytest.approx(m[key], abs=1e-6), (s.name, key)
        assert metrics[s.name]["test/loss"] == pytest.approx(m["test/loss"], rel=1e-4)
    # the all-site probe ranks the planted neurons first
    k = [s.name for s in specs].index("all|l1=0.001|l2=0.001")
    r = rank_from_weights(bank.weight_matrix(k), dm)
    assert set(r.indices[:4].tolist()) == {planted_index(*v) for v in PLANTED.values()}


def test_bank_of_two_concepts_equals_separate(tmp_path):
    from neurolab.corpus import split_sentences
    from neurolab.corpus.concepts import ColumnConcept
    from neurolab.data import ActivationDataModule
    from tests.helpers.probes import planted_corpus, planted_store

    corpus = planted_corpus(120)
    store = planted_store(corpus, tmp_path / "store")
    dms = []
    for concept in (ColumnConcept("upos"), ColumnConcept("upos", value="NOUN")):
        d = ActivationDataModule(store, corpus, split_sentences(len(corpus)), concept)
        d.setup()
        dms.append(d)
    cfg = probe_cfg(tmp_path, *OV)
    specs = [ProbeSpec("upos", None, 1e-3, 0.0, head=0), ProbeSpec("noun", None, 1e-3, 0.0, head=1)]
    bank, metrics = fit_probe_bank(dms, cfg, specs)
    assert bank.weight_matrix(0).shape == (4, 24) and bank.weight_matrix(1).shape == (2, 24)
    for k, d in enumerate(dms):
        alone, m = fit_probe(d, cfg, regularization={"name": "l1", "lambda_l1": 1e-3}, save=False)
        np.testing.assert_allclose(bank.weight_matrix(k), alone.weight_matrix, atol=2e-5)
        assert metrics[specs[k].name]["test/acc"] == pytest.approx(m["test/acc"], abs=1e-6)
    with pytest.raises(ConfigError, match="head"):
        fit_probe_bank(dms[0], cfg, [ProbeSpec("x", None, head=1)])
    with pytest.raises(ConfigError, match="unique"):
        fit_probe_bank(dms[0], cfg, [ProbeSpec("x"), ProbeSpec("x")])


