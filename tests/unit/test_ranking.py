"""NeuronRanking: ordering, selections, per-site counts, JSON round trip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from neurolab.ranking import NeuronRanking, resolve_count

SITES = ["embeddings", "layers.0", "layers.1"]
NPS = {"embeddings": 3, "layers.0": 4, "layers.1": 2}


def test_from_scores_orders_with_index_tiebreak_and_nan_last():
    s = np.array([0.5, np.nan, 0.9, 0.5, 0.1, 0.9, 0.0, 0.2, 0.5])
    r = NeuronRanking.from_scores(s, sites=SITES, neurons_per_site=NPS, concept="c", method="m")
    ref = sorted(range(len(s)), key=lambda j: (np.isnan(s[j]), -np.nan_to_num(s[j], nan=0), j))
    assert r.indices.tolist() == ref
    assert r.names[:2] == ["embeddings:2", "layers.0:2"]
    low = NeuronRanking.from_scores(s, sites=SITES, neurons_per_site=NPS, higher_is_better=False)
    assert low.indices[:2].tolist() == [6, 4]
    with pytest.raises(ValueError, match="scores"):
        NeuronRanking.from_scores(s[:3], sites=SITES, neurons_per_site=NPS)


def test_counts_and_selections():
    assert resolve_count("1%", 2688) == 26 and resolve_count("5%", 2688) == 134 and resolve_count("10%", 2688) == 268
    assert resolve_count(5, 3) == 3 and resolve_count(0.5, 10) == 5 and resolve_count("0.5%", 10) == 1
    with pytest.raises(ValueError):
        resolve_count(1.5, 10)
    with pytest.raises(ValueError):
        resolve_count(-1, 10)
    r = NeuronRanking.from_order([5, 0, 7], sites=SITES, neurons_per_site=NPS)
    assert r.total == 9 and len(r) == 3
    assert r.full_order().tolist() == [5, 0, 7, 1, 2, 3, 4, 6, 8]
    assert r.top(4).tolist() == [5, 0, 7, 1]
    assert r.bottom(2).tolist() == [8, 6]
    a, b = r.random(4, seed=3), r.random(4, seed=3)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 4 and np.all(np.diff(a) > 0)
    assert r.by_site() == {"embeddings": 1, "layers.0": 1, "layers.1": 1}
    assert r.by_site(5) == {"embeddings": 3, "layers.0": 1, "layers.1": 1}
    assert r.names_of([8, 3]) == ["layers.1:1", "layers.0:0"]
    with pytest.raises(ValueError):
        NeuronRanking.from_order([1, 1], sites=SITES, neurons_per_site=NPS)
    with pytest.raises(ValueError):
        NeuronRanking.from_order([9], sites=SITES, neurons_per_site=NPS)


def test_json_round_trip_is_byte_stable(tmp_path):
    r = NeuronRanking.from_scores(np.linspace(0, 1, 9), sites=SITES, neurons_per_site=NPS, concept="NOUN",
                                  method="linear", model="m", extra={"cutoffs": np.array([1, 2]), "x": np.float32(0.5)})
    p = r.to_json(tmp_path / "r.json")
    d = json.loads(p.read_text())
    assert set(d) >= {"concept", "method", "model", "sites", "neurons"}
    assert d["neurons"][0] == {"site": "layers.1", "unit": 1, "index": 8, "score": 1.0}
    back = NeuronRanking.from_json(p)
    back.to_json(tmp_path / "s.json")
    assert (tmp_path / "s.json").read_bytes() == p.read_bytes()
    assert back.indices.tolist() == r.indices.tolist() and back.neurons_per_site == NPS
    assert r.to_rows()[0][:2] == [0, "layers.1:1"]


def test_dataframe_view():
    pytest.importorskip("pandas")
    r = NeuronRanking.from_order([8, 0], sites=SITES, neurons_per_site=NPS)
    df = r.to_dataframe()
    assert list(df["index"]) == [8, 0] and df["name"][0] == "layers.1:1"


def test_from_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        NeuronRanking.from_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        NeuronRanking.from_json(bad)
    bad.write_text('{"sites": []}')
    with pytest.raises(ValueError, match="neurons"):
        NeuronRanking.from_json(bad)
    # written elsewhere without neurons_per_site: inferred from the units
    (tmp_path / "o.json").write_text(json.dumps({"sites": ["a"], "neurons": [{"site": "a", "unit": 2, "index": 2,
                                                                              "score": None}]}))
    r = NeuronRanking.from_json(tmp_path / "o.json")
    assert r.neurons_per_site == {"a": 3} and np.isnan(r.scores[0])
