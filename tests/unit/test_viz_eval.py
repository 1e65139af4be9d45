"""plots.py and report.py: files are written, bars count what the ranking says."""
from __future__ import annotations

import numpy as np

from neurolab.ranking import NeuronRanking
from neurolab.viz.plots import curve_points, plot_accuracy_curve, plot_site_distribution
from neurolab.viz.report import write_report


def _ranking():
    scores = np.arange(30, dtype=float)[::-1]  # neuron 0 best ... 29 worst
    return NeuronRanking.from_scores(scores, sites=["embeddings", "layers.0", "layers.1"],
                                     neurons_per_site={"embeddings": 10, "layers.0": 10, "layers.1": 10},
                                     concept="upos", method="demo")


def test_site_distribution_plot(tmp_path):
    r = _ranking()
    assert r.by_site("50%") == {"embeddings": 10, "layers.0": 5, "layers.1": 0}
    p = plot_site_distribution(r.by_site("50%"), tmp_path / "sites.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_curve_and_report(tmp_path):
    m = {"test/acc": 0.9, "top/acc@1%": 0.7, "top/acc@10%": 0.88, "top/acc@5%": 0.8, "random/acc@1%": 0.4,
         "random/acc_std@1%": 0.02, "random/acc@5%": 0.6, "random/acc_std@5%": 0.01, "random/acc@10%": 0.8,
         "random/acc_std@10%": 0.01, "bottom/acc@1%": 0.3, "x/top/acc@1%": 0.1}
    pts = curve_points(m)
    assert [lab for lab, _ in pts["top"]] == ["1%", "5%", "10%"]
    assert curve_points(m, prefix="x/") == {"top": [("1%", 0.1)]}
    img = plot_accuracy_curve(m, tmp_path / "acc.png")
    html = write_report(tmp_path / "report.html", m, {"demo": _ranking()}, [img], title="t <&>")
    text = html.read_text()
    assert "t &lt;&amp;&gt;" in text and "data:image/png;base64," in text and "embeddings:0" in text
