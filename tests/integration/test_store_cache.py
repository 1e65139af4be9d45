"""One store per corpus: the same corpus file under two config names is one store, a store holding more
sites serves a request for fewer, store names say what they hold, `neurolab store list` lists them."""
from __future__ import annotations

import subprocess
import sys

import pytest

from neurolab.config import compose
from tests.helpers.extraction import save_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_model("bert", tmp_path_factory.mktemp("bert"), hidden=32, layers=2)


def _extract(bert, root, run_dir, *over):
    from neurolab.extraction.build import extract_store

    st: dict = {}
    cfg = compose("extract", [f"model.name_or_path={bert}", f"paths.store_root={root}", "extract.progress=false",
                              "logger=none", *over], run_dir=run_dir)
    return extract_store(cfg, stats=st), st


def test_one_store_per_corpus_and_superset_sites(bert, demo_conllu, tmp_path):
    root = tmp_path / "stores"
    by_name, st1 = _extract(bert, root, tmp_path / "r1", "corpus=demo")
    by_path, st2 = _extract(bert, root, tmp_path / "r2", f"corpus.path={demo_conllu}")
    assert by_path.path == by_name.path and st1.get("reused", 0) == 0 and st2["reused"] == 1
    assert len([p for p in root.iterdir() if p.is_dir()]) == 1
    name = by_name.path.name
    assert "-demo-all_layers-mean-" in name, name  # model, corpus (its file), sites, aggregation, hash
    # one layer of the all-layer store: nothing extracted, the wider store serves it
    one, st3 = _extract(bert, root, tmp_path / "r3", "corpus=demo", "sites=layers.1")
    assert one.path == by_name.path and st3.get("superset") == 1
    assert len([p for p in root.iterdir() if p.is_dir()]) == 1
    # another aggregation is another store
    other, st4 = _extract(bert, root, tmp_path / "r4", "corpus=demo", "extract.aggregation=first")
    assert other.path != by_name.path and st4.get("reused", 0) == 0 and "-first-" in other.path.name
    out = subprocess.run([sys.executable, "-m", "neurolab.cli", "store", "list", str(root)], capture_output=True,
                         text=True, check=True).stdout
    assert by_name.path.name in out and other.path.name in out and "2 stores" in out and " MB" in out


def test_per_layer_experiment_reads_the_all_layer_store(bert, demo_conllu, tmp_path):
    """The layer-wise jobs of a sweep probe the all-layer store instead of extracting each layer."""
    from neurolab.tasks.probe import probe

    root = tmp_path / "stores"
    _extract(bert, root, tmp_path / "all", "corpus=demo")
    for site in ("embeddings", "layers.1"):
        m = probe(compose("probe", [f"model.name_or_path={bert}", f"paths.store_root={root}", "corpus=demo",
                                    f"sites={site}", "logger=none", "trainer.max_epochs=1", "evaluation=[]",
                                    "trainer.enable_progress_bar=false", "extract.progress=false"],
                          run_dir=tmp_path / site))
        assert "test/acc" in m
    assert len([p for p in root.iterdir() if p.is_dir()]) == 1
