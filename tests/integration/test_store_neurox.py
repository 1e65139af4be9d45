"""Import files written by the real NeuroX 1.0.9 (its own venv) and export files its loader reads.

Skipped when the NeuroX environment is absent (``NEUROX_VENV``, default ``/tmp/neurox-venv``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurolab.store import ActivationStore
from neurolab.store.importers import export_neurox_hdf5, import_neurox_hdf5, import_neurox_json, read_sentence_file

pytestmark = pytest.mark.slow

VENV = Path(os.environ.get("NEUROX_VENV", "/tmp/neurox-venv"))
NUM_SENTENCES = 12


def _neurox_python() -> str:
    py = VENV / "bin" / "python"
    if not py.exists():
        pytest.skip(f"NeuroX environment not found at {VENV}")
    r = subprocess.run([str(py), "-c", "import neurox"], capture_output=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"{py} cannot import neurox")
    return str(py)


EXTRACT = """
import sys
import numpy as np
np.int = int; np.float = float  # NeuroX 1.0.9 uses aliases that numpy removed
from neurox.data.extraction import transformers_extractor as te
model, sents, out = sys.argv[1:4]
te.extract_representations(model, sents, out + "/acts.hdf5", aggregation="average", output_type="hdf5")
te.extract_representations(model, sents, out + "/acts.json", aggregation="average", output_type="json")
te.extract_representations(model, sents, out + "/dec.hdf5", aggregation="first", output_type="hdf5",
                           decompose_layers=True, filter_layers="0,6")
"""

LOAD = """
import sys
import numpy as np
np.int = int; np.float = float
from neurox.data import loader
acts, num_layers = loader.load_activations(sys.argv[1])
np.save(sys.argv[2], np.concatenate(acts).astype(np.float32))
print(num_layers)
"""


@pytest.fixture(scope="module")
def neurox_files(tmp_path_factory, minilm_dir, demo_conllu):
    py = _neurox_python()
    d = tmp_path_factory.mktemp("neurox")
    lines = (Path(demo_conllu).parent / "sentences.txt").read_text(encoding="utf-8").splitlines()[:NUM_SENTENCES]
    sentences = d / "sentences.txt"
    sentences.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = subprocess.run([py, "-c", EXTRACT, str(minilm_dir), str(sentences), str(d)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    return d, sentences


@pytest.fixture(scope="module")
def reference(neurox_files, minilm_dir):
    """hidden_states of transformers, averaged over each word's subwords by hand: [layers][rows, 384]."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    _, sentences = neurox_files
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    per_layer: list[list[np.ndarray]] = [[] for _ in range(model.config.num_hidden_layers + 1)]
    firsts: list[list[np.ndarray]] = [[] for _ in range(model.config.num_hidden_layers + 1)]
    for words in read_sentence_file(sentences):
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        wid = np.array([-1 if w is None else w for w in enc.word_ids()])
        for l, h in enumerate(hs):
            h = h[0].numpy()
            per_layer[l].append(np.stack([h[wid == w].mean(0) for w in range(len(words))]))
            firsts[l].append(np.stack([h[np.flatnonzero(wid == w)[0]] for w in range(len(words))]))
    return [np.concatenate(x) for x in per_layer], [np.concatenate(x) for x in firsts]


def test_import_real_hdf5_equals_transformers(neurox_files, reference, tmp_path):
    d, sentences = neurox_files
    s = import_neurox_hdf5(d / "acts.hdf5", sentences, tmp_path / "st", dtype="fp32", model="all-MiniLM-L6-v2")
    assert s.sites == ["embeddings"] + [f"layers.{i}" for i in range(6)]
    words = read_sentence_file(sentences)
    assert s.num_tokens == sum(map(len, words)) and s.num_sentences == NUM_SENTENCES
    mean = reference[0]
    np.testing.assert_allclose(s.read(slice(None), ["embeddings"]), mean[0], atol=1e-4, rtol=1e-4)
    for i in range(6):
        np.testing.assert_allclose(s.read(slice(None), [f"layers.{i}"]), mean[i + 1], atol=1e-4, rtol=1e-4)
    assert s.verify() == []


def test_import_real_json_equals_hdf5(neurox_files, tmp_path):
    d, sentences = neurox_files
    h = import_neurox_hdf5(d / "acts.hdf5", sentences, tmp_path / "h", dtype="fp32")
    j = import_neurox_json(d / "acts.json", sentences, tmp_path / "j", dtype="fp32")
    assert j.sites == h.sites
    np.testing.assert_allclose(j.read(slice(None)), h.read(slice(None)), atol=1e-7, rtol=0)


def test_import_real_decomposed_layers_first_subword(neurox_files, reference, tmp_path):
    d, sentences = neurox_files
    files = [d / "dec-layer0.hdf5", d / "dec-layer6.hdf5"]
    s = import_neurox_hdf5(files, sentences, tmp_path / "st")
    assert s.sites == ["embeddings", "layers.5"] and s.dtype == "fp16"
    first = reference[1]
    np.testing.assert_allclose(s.read(slice(None), ["embeddings"]), first[0], atol=5e-3, rtol=2e-3)
    np.testing.assert_allclose(s.read(slice(None), ["layers.5"]), first[6], atol=5e-3, rtol=2e-3)


def test_export_is_read_by_neurox_loader(neurox_files, tmp_path):
    d, sentences = neurox_files
    s = import_neurox_hdf5(d / "acts.hdf5", sentences, tmp_path / "st", dtype="fp32")
    out = export_neurox_hdf5(s, tmp_path / "exported.hdf5", sites=["layers.5", "embeddings"], sentences=sentences)
    r = subprocess.run([_neurox_python(), "-c", LOAD, str(out), str(tmp_path / "loaded.npy")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "2"
    np.testing.assert_array_equal(np.load(tmp_path / "loaded.npy"), s.read(slice(None), ["layers.5", "embeddings"]))


def test_cli_import_real_file(neurox_files, tmp_path):
    d, sentences = neurox_files
    r = subprocess.run([sys.executable, "-m", "neurolab.cli", "store", "import", str(d / "acts.hdf5"), "--format",
                        "neurox-hdf5", "--sentences", str(sentences), "--out", str(tmp_path / "st")],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    assert ActivationStore.open(tmp_path / "st", verify=True).dtype == "fp16"
