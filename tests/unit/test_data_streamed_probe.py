"""Streamed probe training: one batch size for both data paths, chunk-aligned epoch plans, and the
torch normalisation of held rows.

References: the optimiser step count ``epochs * ceil(n / batch)`` (closed form), the chunk ids of
the plan's rows, and numpy's normalisation of a float32 copy (``_Norm.apply``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurolab.data.streaming import _held_tensor, _Norm
from neurolab.data.plan import chunk_ids, make_plan
from neurolab.probes import fit_probe
from tests.helpers.probes import planted_datamodule, probe_cfg


class _Steps:
    """Counts training batches and their sizes (a Lightning callback)."""

    def __init__(self):
        import pytorch_lightning as pl

        outer = self

        class CB(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                outer.sizes.append(len(batch[1]))

        self.sizes: list[int] = []
        self.cb = CB()


@pytest.mark.parametrize("budget", [0, 2048])
def test_streamed_and_in_memory_probes_use_probe_batch_size(tmp_path, monkeypatch, budget):
    dm = planted_datamodule(tmp_path, num_sentences=120, memory_budget_mb=budget, batch_size=512)
    assert dm.in_memory == (budget > 0)
    steps = _Steps()
    import neurolab.probes.training as linear

    orig = linear.trainer_from_cfg

    def with_counter(cfg, *, callbacks=(), **kw):
        return orig(cfg, callbacks=[*callbacks, steps.cb], **kw)

    monkeypatch.setattr(linear, "trainer_from_cfg", with_counter)
    cfg = probe_cfg(tmp_path, "probe.batch_size=24", "trainer.max_epochs=3", "probe.early_stopping.enabled=false",
                    "probe.checkpoint=false")
    _, met = fit_probe(dm, cfg, save=False)
    n = len(dm.row_ids("train"))
    assert n > 100  # several batches of 24, far fewer than data.batch_size=512
    # every epoch: ceil(n / 24) steps of probe.batch_size rows (not data.batch_size), whichever path
    assert len(steps.sizes) == 3 * math.ceil(n / 24)
    assert max(steps.sizes) == 24 and sum(steps.sizes) == 3 * n
    assert met["test/acc"] > 0.5  # the planted units are found after a few epochs (chance: ~0.25)


def test_short_last_chunk_comes_last_and_batches_stay_in_chunks():
    n, rows, B = 173, 40, 8  # chunks of 40, 40, 40, 40, 13; 40 = 5 batches of 8
    ch = chunk_ids(n, rows)
    orders = []
    for epoch in range(6):
        p = make_plan(ch, B, shuffle=True, seed=1, epoch=epoch)
        assert sorted(p.order.tolist()) == list(range(n))
        assert set(ch[p.order[-13:]].tolist()) == {4}  # the 13-row remainder is visited last
        for b in range(p.num_batches):  # no batch straddles two chunks: one contiguous read per unit
            assert len(set(ch[p.order[p.batches[b]:p.batches[b + 1]]].tolist())) == 1
        assert p.num_units == 5
        orders.append(ch[p.order[::rows]][:4].tolist())
    assert len({tuple(o) for o in orders}) > 1  # the full chunks are still shuffled from epoch to epoch
    # equal chunks (nothing short): any chunk may come last
    lasts = {int(chunk_ids(160, rows)[make_plan(chunk_ids(160, rows), B, shuffle=True, seed=1, epoch=e).order[-1]])
             for e in range(12)}
    assert len(lasts) > 1


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("divide", [True, False])
def test_torch_normalisation_matches_numpy(dtype, divide):
    rng = np.random.default_rng(0)
    x32 = (rng.normal(size=(50, 33)) * 3 + 1).astype(np.float32)
    if dtype == "fp16":
        held = x32.astype(np.float16)
    elif dtype == "bf16":
        held = (x32.view(np.uint32) >> 16).astype(np.uint16)  # bf16 bit patterns (truncated)
    else:
        held = x32
    mean = rng.normal(size=33).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=33).astype(np.float32)
    norm = _Norm(dtype, mean, std, divide=divide)
    got = norm.apply_torch(_held_tensor(held))
    assert got.dtype == torch.float32
    ref = norm.apply(held)  # numpy: converting copy, then subtract and divide / multiply
    np.testing.assert_array_equal(got.numpy(), ref)
    # and against a float64 computation of the same values
    f = held.astype(np.float32) if dtype != "bf16" else (held.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(got.numpy(), (f.astype(np.float64) - mean) / std, rtol=1e-5, atol=1e-5)
    raw = norm.apply_torch(_held_tensor(held), normalize=False)
    np.testing.assert_array_equal(raw.numpy(), f)


def _reference_split(dm, split):
    """float64 ``(x - mean) / std`` of ``split``'s raw rows (numpy), and its labels."""
    X = np.concatenate([x for x, _ in dm.iter_chunks(split, normalize=False)]).astype(np.float64)
    y = np.concatenate([y for _, y in dm.iter_chunks(split, normalize=False)])
    return (X - dm.mean_) / dm.std_, y


def test_eval_batches_are_the_split_in_order_through_reused_buffers(tmp_path):
    dm = planted_datamodule(tmp_path, num_sentences=120, memory_budget_mb=0, batch_size=512, chunk_rows=64)
    ref, yref = _reference_split(dm, "test")
    xs, ys, ptrs = [], [], set()
    for x, y in dm.eval_batches("test", 8):
        assert x.dtype == torch.float32 and len(x) <= 8
        ptrs.add(x.data_ptr())
        xs.append(x.numpy().copy())  # copied: the batch itself is lent, not given
        ys.append(y.numpy())
    assert len(xs) >= math.ceil(len(yref) / 8) > 4
    np.testing.assert_allclose(np.concatenate(xs), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate(ys), yref)
    # every batch lives in a buffer of the loaders' ring: no new tensor per batch
    ring = {t.untyped_storage().data_ptr() for t, _ in dm._ring.bufs}
    assert ptrs <= ring and len(ring) <= 2


def test_streamed_probe_metrics_match_sklearn_on_its_weights(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score

    dm = planted_datamodule(tmp_path, num_sentences=150, memory_budget_mb=0, batch_size=512)
    cfg = probe_cfg(tmp_path, "trainer.max_epochs=4", "probe.batch_size=32", "probe.checkpoint=false")
    module, met = fit_probe(dm, cfg, save=False)
    W, b = module.weight_matrix, module.linear.bias.detach().double().numpy()
    for split in ("val", "test"):
        X, y = _reference_split(dm, split)
        pred = (X @ W.T + b).argmax(1)
        assert met[f"{split}/n"] == len(y)
        # float64 reference logits against the probe's float32 ones: a near-tie may flip one row
        assert met[f"{split}/acc"] == pytest.approx(accuracy_score(y, pred), abs=1.0 / len(y) + 1e-9)
        labels = np.arange(dm.num_classes)
        assert met[f"{split}/f1_macro"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro",
                                                                  zero_division=0), abs=0.02)
