"""HTML views: content, colours (in a real headless Chromium), and pages written from a store + corpus."""
from __future__ import annotations

import re

import numpy as np
import pytest

from neurolab.corpus import read_conllu
from neurolab.data import ChunkSource, row_labels
from neurolab.methods import APRanker
from neurolab.store import write_store
from neurolab.viz.html import NEGATIVE_RGB, POSITIVE_RGB, activation_color, neuron_page, sentence_html, write_pages
from tests.helpers.browser import CHROMIUM
from tests.helpers.browser import chromium as _chromium



def test_diverging_scale():
    assert activation_color(0.0, 2.0) == "rgb(255,255,255)"
    assert activation_color(2.0, 2.0) == "rgb(%d,%d,%d)" % POSITIVE_RGB
    assert activation_color(-5.0, 2.0) == "rgb(%d,%d,%d)" % NEGATIVE_RGB
    assert activation_color(1.0, 2.0) == "rgb(234,147,148)"  # halfway to (214, 39, 40)
    assert activation_color(float("nan"), 1.0) == "rgb(255,255,255)"


def test_sentence_html_escapes_and_shows_values():
    h = sentence_html(["a<b", "cat", "x"], [0.5, -1.0, float("nan")], highlight=1)
    assert "a&lt;b" in h and "<b" not in h.replace("<b>", "")
    assert 'title="cat: -1' in h and 'title="x: n/a' in h
    assert h.count('class="w top"') == 1


def test_sentence_window():
    words = [f"w{i}" for i in range(30)]
    h = sentence_html(words, np.arange(30.0), highlight=15, window=2)
    shown = re.findall(r">(w\d+)</span>", h)
    assert shown == ["w13", "w14", "w15", "w16", "w17"] and h.count("…") == 2


def _corpus_store(tmp_path, demo_conllu, planted=("layers.0", 3)):
    corpus = read_conllu(demo_conllu)
    sent = np.concatenate([np.full(len(s), i) for i, s in enumerate(corpus.sentences)])
    word = np.concatenate([np.arange(len(s)) for s in corpus.sentences])
    upos = np.concatenate([s.annotations["upos"] for s in corpus.sentences])
    rng = np.random.default_rng(0)
    acts = {s: rng.normal(size=(len(sent), 8)).astype(np.float32) for s in ("embeddings", "layers.0")}
    acts[planted[0]][:, planted[1]] = 4.0 * (upos == "NOUN") + 0.2 * rng.normal(size=len(sent))
    store = write_store(tmp_path / "store", acts, sent, word, {"model": "toy"}, shard_size=101)
    return corpus, store


def test_write_pages_from_store_and_corpus(tmp_path, demo_conllu):
    corpus, store = _corpus_store(tmp_path, demo_conllu)
    labels = row_labels(store, [["NOUN" if u == "NOUN" else "rest" for u in s.annotations["upos"]] for s in corpus])
    r = APRanker(positive="NOUN").fit(ChunkSource.from_store(store, labels), concept="upos=NOUN")
    assert r.ranking_.names[0] == "layers.0:3"
    from neurolab.methods.concept_search import describe_neurons

    reports = describe_neurons(r.ranking_, store, corpus, top_neurons=3, k=10, columns=["upos", "deprel"])
    assert [rep.name for rep in reports] == r.ranking_.names[:3]
    out = write_pages(tmp_path / "run", r.ranking_, reports, site_counts=r.ranking_.by_site("10%"))
    assert out["index"].exists() and len(out["neurons"]) == 3
    top = out["descriptions"]["layers.0:3"]
    assert top[0]["column"] == "upos" and top[0]["value"] == "NOUN" and top[0]["precision"] == 1.0
    page = out["neurons"]["layers.0:3"].read_text()
    assert "upos" in page and "NOUN" in page and "http://" not in page and "https://" not in page
    index = out["index"].read_text()
    assert 'href="neuron_layers.0_3.html"' in index and "data:image/png;base64," in index


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_neuron_page_in_headless_chromium(tmp_path):
    from neurolab.methods.concept_search import Context

    words = ["The", "quick", "fox", "jumped", "over", "dogs"]
    acts = [0.1, -3.0, 3.0, 0.0, -1.5, 1.5]
    ctx = [Context(row=2, sentence=0, word=2, value=3.0, words=words, activations=acts)]
    page = tmp_path / "neuron.html"
    page.write_text(neuron_page("layers.2:7", ctx, score=0.9, concept="NOUN", method="ap", back=None))
    png = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={png}", "--window-size=1000,700", page.as_uri()], tmp_path)
    assert png.exists(), res.stderr[-2000:]
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path).stdout
    for w in words + ["layers.2:7", "Top activating words"]:
        assert w in dom
    assert 'title="fox: 3 · layers.2:7"' in dom
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    rgb = (img[..., :3] * 255).round().astype(int) if img.dtype != np.uint8 else img[..., :3].astype(int)

    def share(color, tol=6):
        return float(np.mean(np.all(np.abs(rgb - np.array(color)) <= tol, axis=-1)))

    # the saturated words are painted in the two end colours of the scale, mid values in between
    assert share(POSITIVE_RGB) > 1e-4, "no full-scale red word in the screenshot"
    assert share(NEGATIVE_RGB) > 1e-4, "no full-scale blue word in the screenshot"
    half_red = tuple(int(x) for x in re.findall(r"\d+", activation_color(1.5, 3.0)))
    assert share(half_red) > 1e-4
    assert share((255, 255, 255)) > 0.5  # a white page around them
