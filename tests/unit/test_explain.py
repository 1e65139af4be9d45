"""`neurolab explain neuron=SITE:UNIT` on a tiny random BERT and a store of a small corpus whose words
hold HTML: explain.json's contract keys, one self-contained explain.html with the words escaped, the
generated inputs checked against the exhaustive optimum, and the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.config import compose
from neurolab.errors import ConfigError
from tests.helpers.browser import CHROMIUM, chromium
from tests.helpers.extraction import save_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["the", "<b>cat</b>", "sat", "on", "AT&T", "mat", "a", "dog", "<script>x</script>", "ran"]


def _conllu(path, n=30):
    rng = np.random.default_rng(0)
    lines = []
    for s in range(n):
        ws = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=int(rng.integers(3, 8)))]
        lines.append(f"# sent_id = s{s}")
        for i, w in enumerate(ws, 1):
            lines.append(f"{i}\t{w}\t{w}\t{'NOUN' if 'cat' in w or w in ('mat', 'dog') else 'X'}\t_\t_\t0\t_\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from neurolab.tasks.extract import extract_store

    root = tmp_path_factory.mktemp("explain")
    model_dir = save_tiny_model("bert", root / "bert", hidden=32, layers=2)
    corpus = _conllu(root / "c.conllu")
    common = [f"model.name_or_path={model_dir}", f"corpus.path={corpus}", f"store.dir={root / 'store'}",
              "extract.progress=false", "extract.dtype=fp32", "extract.device=cpu"]
    extract_store(compose("extract", common + ["sites=all_layers"], run_dir=root / "ex"))
    return root, common


QUICK = ["explain.generate.steps=30", "explain.generate.restarts=4", "explain.generate.warm_start=64"]


def test_explain_writes_the_contract(setup):
    from neurolab.tasks.explain import explain

    root, common = setup
    run = root / "run1"
    m = explain(compose("explain", common + QUICK + ["neuron=layers.1:3"], run_dir=run))
    info = json.loads((run / "explain.json").read_text(encoding="utf-8"))
    assert info["neuron"] == "layers.1:3"
    assert len(info["top_contexts"]) == 20 and all("words" in c for c in info["top_contexts"])
    assert info["generated"] and all({"text", "activation"} <= set(g) for g in info["generated"])
    acts = [g["activation"] for g in info["generated"]]
    assert acts == sorted(acts, reverse=True)
    for key in ("corpus_best", "exhaustive_best"):
        assert {"text", "activation"} <= set(info[key])
    # the exhaustive pass is the optimum over single tokens: nothing generated or in the corpus beats it
    assert info["exhaustive_best"]["activation"] >= acts[0] - 1e-6
    assert info["exhaustive_best"]["activation"] >= info["corpus_best"]["activation"] - 1e-6
    assert m["explain/exhaustive_best"] == pytest.approx(info["exhaustive_best"]["activation"])
    page = (run / "explain.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page.lower() and "<b>cat" not in page
    assert "&lt;b&gt;cat&lt;/b&gt;" in page and "AT&amp;T" in page
    assert "src=\"http" not in page and "href=\"http" not in page  # self-contained
    assert info["generated"][0]["text"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_explain_page_in_headless_chromium(setup, tmp_path):
    """The page as a browser builds it: the generated inputs and the top contexts are on it, corpus words
    holding markup are text (no <b> or <script> element comes from them), and it renders offline."""
    from neurolab.tasks.explain import explain

    root, common = setup
    run = root / "run_browser"
    explain(compose("explain", common + QUICK + ["neuron=layers.1:5"], run_dir=run))
    info = json.loads((run / "explain.json").read_text(encoding="utf-8"))
    page = (run / "explain.html").as_uri()
    dom = chromium(["--dump-dom", page], tmp_path).stdout
    assert "Neuron layers.1:5" in dom and "Top corpus contexts" in dom and "Inputs it wants" in dom
    gen = info["generated"][0]["text"]
    assert gen.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dom
    assert "&lt;b&gt;cat&lt;/b&gt;" in dom or "&lt;script&gt;" in dom or "AT&amp;T" in dom  # corpus words, as text
    assert "<script" not in dom.lower() and "<b>cat" not in dom
    png = tmp_path / "shot.png"
    res = chromium([f"--screenshot={png}", "--window-size=1000,900", page], tmp_path)
    assert png.exists(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    assert float(np.mean(img.max(axis=-1) - img.min(axis=-1) > 0.1)) > 1e-4  # coloured words were drawn


def test_explain_longer_inputs_and_mlp_site(setup):
    from neurolab.tasks.explain import explain

    root, common = setup
    run = root / "run2"
    explain(compose("explain", common + QUICK + ["neuron=layers.0.mlp:7", "explain.generate.length=3"], run_dir=run))
    info = json.loads((run / "explain.json").read_text(encoding="utf-8"))
    assert info["exhaustive_best"] is None and info["top_contexts"] == []  # (the store holds no mlp site)
    assert info["corpus_best"] is not None and len(info["corpus_best"]["tokens"]) == 3
    assert all(len(g["tokens"]) == 3 for g in info["generated"])


def test_explain_errors(setup):
    from neurolab.tasks.explain import explain

    root, common = setup
    with pytest.raises(ConfigError, match=r"'layers\.9' is not a site of model .*its sites: embeddings, layers\.0"):
        explain(compose("explain", common + QUICK + ["neuron=layers.9:1"], run_dir=root / "bad1"))
    with pytest.raises(ConfigError, match="out of range"):
        explain(compose("explain", common + QUICK + ["neuron=layers.1:999"], run_dir=root / "bad2"))
    with pytest.raises(ConfigError, match="SITE:UNIT"):
        explain(compose("explain", common + QUICK + ["neuron=layers.1"], run_dir=root / "bad3"))
    with pytest.raises(ConfigError, match="exceeds the model's limit"):
        explain(compose("explain", common + QUICK + ["neuron=layers.1:1", "explain.generate.length=1000"],
                        run_dir=root / "bad4"))


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_generation_runs_on_other_architectures(kind, one_thread):
    from neurolab.causal.generation import exhaustive_best, generate_inputs
    from tests.helpers.causal import tiny_lm

    model, tok = tiny_lm(kind, head=False)
    site = "layers.1" if kind == "gpt2" else "encoder.layers.1"
    (gen,) = generate_inputs(model, tok, [(site, 2)], length=2, steps=10, restarts=2, warm_start=16)
    assert gen and all(len(g.tokens) == 2 for g in gen)
    special = set(tok.all_special_ids)
    assert not any(t in special for g in gen for t in g.tokens)
    best = exhaustive_best(model, tok, (site, 2))
    (gen1,) = generate_inputs(model, tok, [(site, 2)], length=1, steps=10, restarts=2, warm_start=16)
    assert best[0].activation >= gen1[0].activation - 1e-6


def test_one_neuron_check_for_explain_and_generation(setup):
    """explain and the generation functions refuse a bad neuron through the same check (same words)."""
    from neurolab.causal.generation import best_ngrams, check_neurons, exhaustive_best, generate_inputs
    from neurolab.models.loading import load_model
    from neurolab.tasks.explain import explain

    root, common = setup
    model, tok = load_model({"name_or_path": common[0].split("=", 1)[1]})
    msgs = {}
    for bad in (("layers.9", 1), ("layers.1", 999)):
        with pytest.raises(ConfigError) as direct:
            check_neurons(model, [bad])
        for fn in (lambda: generate_inputs(model, tok, [bad], length=1, steps=1),
                   lambda: exhaustive_best(model, tok, bad), lambda: best_ngrams(model, tok, bad, [["a"]], 1)):
            with pytest.raises(ConfigError) as e:
                fn()
            assert str(e.value) == str(direct.value)
        with pytest.raises(ConfigError) as e:
            explain(compose("explain", common + QUICK + [f"neuron={bad[0]}:{bad[1]}"], run_dir=root / "bad_same"))
        msgs[bad] = str(e.value)
        with pytest.raises(ConfigError) as named:
            check_neurons(model, [bad], model_name=common[0].split("=", 1)[1])
        assert msgs[bad] == str(named.value)
    assert "its sites: embeddings, layers.0" in msgs[("layers.9", 1)] and "out of range" in msgs[("layers.1", 999)]
