"""BatchRing: a batch buffer is lent out again only when nothing refers to its memory."""
import numpy as np
import torch

from neurolab.data.buffers import BatchRing
from neurolab.data.batches import TensorBatches


def test_ring_reuses_only_released_buffers():
    ring = BatchRing(size=2)
    a = ring.empty(8, 4)
    a_ptr = a.data_ptr()
    b = ring.empty(8, 4)
    assert b.data_ptr() != a_ptr  # a is still held
    del a
    c = ring.empty(8, 4)
    assert c.data_ptr() == a_ptr  # released: reused
    # a view, a numpy array or a tensor saved for backward keeps the buffer busy
    view = c[:2]
    del c
    d = ring.empty(8, 4)
    assert d.data_ptr() != a_ptr
    del d, b
    arr = view.numpy()
    del view
    e = ring.empty(8, 4)
    assert e.data_ptr() != a_ptr
    del arr, e
    w = torch.zeros(4, 3, requires_grad=True)
    x = ring.empty(8, 4)
    assert x.data_ptr() == a_ptr
    x.fill_(1.0)
    out = (x @ w).sum()  # autograd keeps x for the weight gradient
    del x
    assert ring.empty(8, 4).data_ptr() != a_ptr
    out.backward()
    del out
    assert ring.empty(8, 4).data_ptr() == a_ptr


def test_ring_all_busy_allocates_and_shapes():
    ring = BatchRing(size=2)
    held = [ring.empty(5, 3) for _ in range(4)]  # more than the ring holds: new tensors
    assert len({t.data_ptr() for t in held}) == 4
    assert all(t.shape == (5, 3) and t.dtype == torch.float32 for t in held)
    kept = {t.data_ptr() for t in held[:2]}  # the ring's two
    del held
    fewer = ring.empty(4, 3)  # buffers of 5 rows are free again: reused for fewer rows
    assert fewer.shape == (4, 3) and fewer.data_ptr() in kept
    del fewer
    ring = BatchRing(size=2)
    short = ring.empty(2, 3, reserve=6)  # a short batch first: the buffer has room for a full one
    p = short.data_ptr()
    del short
    full = ring.empty(6, 3, reserve=6)
    assert full.data_ptr() == p and full.shape == (6, 3)
    other = ring.empty(6, 7)  # another column count: not served from a 3-column buffer
    assert other.shape == (6, 7)


def test_kept_batches_are_not_overwritten():
    """A consumer that keeps every batch sees exactly the normalised rows (nothing aliased)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(103, 6)).astype(np.float16))
    y = torch.arange(103)
    mean, std = torch.full((6,), 0.25), torch.full((6,), 2.0)
    batches = list(TensorBatches(x, y, 16, shuffle=True, seed=3, norm=(mean, std)))
    ref = (x.double().numpy() - 0.25) / 2.0
    for xb, yb, _ in batches:
        np.testing.assert_allclose(xb.numpy(), ref[yb.numpy()], rtol=1e-6, atol=1e-6)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(103))
