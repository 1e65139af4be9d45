"""Stages that may hold rows decide against data.memory_budget_mb and give the same results either way."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.probes import PLANTED, planted_datamodule, planted_index, probe_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("max_rows", [100_000, 150])
def test_gaussian_selection_same_whether_rows_held_or_streamed(tmp_path, max_rows):
    """The selection split (and the report split) are read whole or as a seeded sample of
    ``max_rows``, the same rows whether the data module holds them or streams them."""
    from neurolab.methods import RunContext
    from neurolab.data.memory import HELD
    from neurolab.probes.gaussian import GaussianMethod

    cfg = probe_cfg(tmp_path, "probe=gaussian")
    out = []
    # held residuals with the rows in memory; streamed rows with the residuals recomputed per block
    for sub, budget, hold in (("a", 2048, None), ("b", 0, 0)):
        dm = planted_datamodule(tmp_path / sub, num_sentences=300, memory_budget_mb=budget)
        assert dm.in_memory == (budget > 0)
        m = GaussianMethod(k=5, max_rows=max_rows, hold_residuals_mb=hold).fit(dm, RunContext(cfg=cfg, seed=1))
        out.append(m)
        n = len(dm.row_ids("val"))
        expect = n if max_rows >= n else None
        assert HELD["gaussian selection"] > 0
        if expect is None:
            assert n > max_rows and HELD["gaussian selection"] < n * dm.num_features * 12
    a, b = out
    assert a.ranking_.indices[:5].tolist() == b.ranking_.indices[:5].tolist()
    assert {planted_index(*v) for v in PLANTED.values()} <= set(a.ranking_.indices[:5].tolist())
    np.testing.assert_allclose(a.ranking_.scores[:5], b.ranking_.scores[:5], rtol=1e-4)


def test_gaussian_selection_rows_bounded_by_its_budget():
    """max_rows=auto: the [C, F, rows] residuals of the selection stay within select_budget_mb."""
    from neurolab.probes.gaussian import GaussianMethod

    m = GaussianMethod()
    assert m.row_limit(17, 1536) == 512 * 2**20 // (17 * 1536 * 4)
    assert m.row_limit(17, 1536, "float64") == 512 * 2**20 // (17 * 1536 * 8)
    assert GaussianMethod(max_rows=300).row_limit(17, 1536) == 300
    assert GaussianMethod(select_budget_mb=1).row_limit(2, 10) == 2**20 // 80


def test_conllu_reader_shares_equal_values(demo_conllu):
    """One object per distinct string / FEATS mapping: equal values are the same object, and the
    parsed corpus holds what the file says (checked against a plain line-by-line read)."""
    from neurolab.corpus.conllu_reader import read_conllu

    corpus = read_conllu(demo_conllu)
    words = [w for s in corpus.sentences for w in s.words]
    upos = [u for s in corpus.sentences for u in s.annotations["upos"]]
    feats = [f for s in corpus.sentences for f in s.annotations["feats"]]
    assert len({id(u) for u in upos}) == len(set(upos))
    assert len({id(f) for f in feats}) == len({tuple(sorted(f.items())) for f in feats})
    plain = []
    for line in demo_conllu.read_text(encoding="utf-8").splitlines():
        cells = line.split("\t")
        if len(cells) == 10 and cells[0].isdigit():
            plain.append((cells[1], cells[3], {} if cells[5] == "_" else dict(p.split("=", 1) for p in cells[5].split("|"))))
    assert [(w, u, f) for w, u, f in zip(words, upos, feats)] == plain
