"""Property: no reader returns results from a damaged store without saying so.

Hypothesis draws single-byte corruptions (any file of a small store: manifest, shard records,
index, activations; any offset; any new byte value). After each one, opening and reading the store,
the data module's reader, and the ``probe`` and ``rank`` verbs either refuse with a
:class:`~neurolab.errors.NeurolabError` or return exactly what the clean store gives (a corruption
that changes nothing read, e.g. a space in the manifest turned into a tab).

Two situations: a store read for the first time (no verification marker), and a store verified
earlier (its marker vouches for every file) that was damaged afterwards.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolab.config import compose
from neurolab.errors import NeurolabError
from neurolab.store import ActivationStore
from tests.helpers.trust import probe_overrides, tagged_store, verb_overrides

FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _files(store: Path) -> list[str]:
    out = ["manifest.json"]
    for d in sorted((store / "shards").iterdir()):
        out += [f"shards/{d.name}/{f.name}" for f in sorted(d.iterdir())]
    return out


def _age(path: Path, seconds: float = 120.0) -> None:
    t = time.time() - seconds
    for f in Path(path).rglob("*"):
        if f.is_file():
            os.utime(f, (t, t))


def _read_all(path: Path):
    """What the verbs read of a store: rows through the store and through the data module's reader."""
    from neurolab.data.reader import RowReader

    s = ActivationStore.open(path)
    x = s.read(slice(None))
    picked = s.read(np.array([7, 1, 30, 2]))
    via_reader = RowReader(s, s.sites).read_rows(np.arange(s.num_tokens))
    return (x, picked, via_reader, np.asarray(s.sentence_ids).copy(), np.asarray(s.word_ids).copy(), s.sites,
            dict(s.neurons_per_site))


def _same(a, b) -> bool:
    for u, v in zip(a, b):
        if isinstance(u, np.ndarray):
            if u.shape != v.shape or not np.array_equal(u, v, equal_nan=True):
                return False
        elif u != v:
            return False
    return True


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    conllu, store = tagged_store(tmp_path_factory.mktemp("clean"), num_sentences=40, shard_size=80)
    _age(store)
    return conllu, store, _read_all(store), _files(store)


corruption = st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**9),
                       st.integers(min_value=1, max_value=255))


def _corrupt(store: Path, files: list[str], pick: tuple[int, int, int]) -> tuple[Path, int, int]:
    which, offset, xor = pick
    f = store / files[which % len(files)]
    data = bytearray(f.read_bytes())
    at = offset % len(data)
    old = data[at]
    data[at] ^= xor
    f.write_bytes(bytes(data))
    return f, at, old


@FAST
@given(pick=corruption)
def test_a_damaged_store_is_refused_or_reads_the_same(clean, pick):
    _, store, reference, files = clean
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "store"
        shutil.copytree(store, d)
        _corrupt(d, files, pick)
        try:
            got = _read_all(d)
        except NeurolabError:
            return
        assert _same(got, reference), f"damaged store read without a word: {files[pick[0] % len(files)]}"


@pytest.fixture(scope="module")
def verified(tmp_path_factory, clean):
    """A copy of the clean store whose every file is vouched for by its verification marker."""
    d = tmp_path_factory.mktemp("verified") / "store"
    shutil.copytree(clean[1], d)
    _age(d)
    rep = ActivationStore.open(d).verification
    assert rep.files_hashed > 0
    return d


@FAST
@given(pick=corruption)
def test_damage_after_verification_is_found(clean, verified, pick):
    _, _, reference, files = clean
    _age(verified)  # old files again (a benign example may have rewritten the marker with new times)
    assert ActivationStore.open(verified).verification.files_hashed >= 0
    f, at, old = _corrupt(verified, files, pick)
    try:
        try:
            got = _read_all(verified)
        except NeurolabError:
            return
        assert _same(got, reference), f"damage after verification read without a word: {f}"
    finally:
        data = bytearray(f.read_bytes())
        data[at] = old
        f.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def verb_reference(clean, tmp_path_factory):
    from neurolab.tasks.probe import probe
    from neurolab.tasks.rank import rank

    conllu, store, _, _ = clean
    run = tmp_path_factory.mktemp("ref")
    mp = probe(compose("probe", probe_overrides(store, conllu), run_dir=run / "probe"))
    mr = rank(compose("rank", verb_overrides(store, conllu, "method=probeless"), run_dir=run / "rank"))
    return _verb_view(mp, run / "probe"), _verb_view(mr, run / "rank")


def _verb_view(metrics: dict, run: Path):
    import json

    ranking = json.loads((run / "ranking.json").read_text())
    return ({k: v for k, v in metrics.items() if not k.startswith("time/")},
            [(n["site"], n["unit"], round(n["score"], 6)) for n in ranking["neurons"]])


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pick=corruption)
def test_probe_and_rank_refuse_a_damaged_store_or_give_the_clean_results(clean, verb_reference, pick, one_thread):
    from neurolab.tasks.probe import probe
    from neurolab.tasks.rank import rank

    conllu, store, _, files = clean
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "store"
        shutil.copytree(store, d)
        _corrupt(d, files, pick)
        for fn, verb, overrides, ref in (
                (probe, "probe", probe_overrides(d, conllu), verb_reference[0]),
                (rank, "rank", verb_overrides(d, conllu, "method=probeless"), verb_reference[1])):
            try:
                m = fn(compose(verb, overrides, run_dir=Path(tmp) / verb))
            except NeurolabError:
                continue
            assert _verb_view(m, Path(tmp) / verb) == ref, f"{verb} gave other results from a damaged store"
