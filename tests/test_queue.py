"""zipfnce.torch.NegativeQueue: FIFO order and capacity, detached copies, ids and log-q passed to the InfoNCE
loss (accidental hits masked by id), and clear errors. CPU tensors (this machine has no GPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
znt = pytest.importorskip("zipfnce.torch")

import zipfnce as zn  # noqa: E402


def test_fifo_keeps_the_last_capacity_entries_oldest_first():
    qu = znt.NegativeQueue(5, 2, dtype=torch.float64)
    assert len(qu) == 0 and qu.negatives is None and qu.kwargs()["negatives"] is None
    for step in range(4):
        keys = torch.full((2, 2), float(step))
        qu.enqueue(keys, torch.tensor([10 * step, 10 * step + 1]), torch.tensor([-1.0 * step, -2.0 * step]))
    assert len(qu) == 5
    assert qu.negatives.dtype == torch.float64 and qu.negatives.shape == (5, 2)
    np.testing.assert_array_equal(qu.negatives[:, 0].numpy(), [1, 2, 2, 3, 3])
    np.testing.assert_array_equal(qu.negative_ids.numpy(), [11, 20, 21, 30, 31])
    np.testing.assert_array_equal(qu.negative_log_q.numpy(), [-2, -2, -4, -3, -6])
    # A batch larger than the queue leaves its last `capacity` rows.
    qu.enqueue(torch.arange(14.0).reshape(7, 2), torch.arange(7), torch.zeros(7))
    np.testing.assert_array_equal(qu.negative_ids.numpy(), [2, 3, 4, 5, 6])
    qu.clear()
    assert len(qu) == 0 and qu.negative_log_q is None


def test_entries_are_detached_and_earlier_views_stay_valid():
    qu = znt.NegativeQueue(4, 3)
    k = torch.randn(2, 3, requires_grad=True)
    qu.enqueue(k * 2, [1, 2])
    assert not qu.negatives.requires_grad
    before = qu.negatives
    snapshot = before.clone()
    qu.enqueue(torch.randn(3, 3), [3, 4, 5])
    assert torch.equal(before, snapshot)  # enqueue builds new tensors
    assert qu.negative_log_q is None


def test_the_loss_with_queued_negatives_equals_numpy_with_the_same_arrays():
    rng = np.random.default_rng(0)
    qu = znt.NegativeQueue(16, 4, dtype=torch.float64)
    old_k, old_ids = rng.normal(size=(12, 4)), rng.integers(0, 6, 12)
    old_lq = rng.normal(size=12) - 2
    qu.enqueue(torch.tensor(old_k), torch.tensor(old_ids), torch.tensor(old_lq))
    q = torch.tensor(rng.normal(size=(5, 4)), requires_grad=True)
    k = torch.tensor(rng.normal(size=(5, 4)), requires_grad=True)
    ids = torch.tensor([0, 1, 2, 3, 4])
    loss = znt.info_nce_loss(q, k, key_ids=ids, reduction="sum", **qu.kwargs())
    loss.backward()
    want = zn.info_nce_loss_and_grad(
        q.detach().numpy(), k.detach().numpy(), negatives=old_k, key_ids=ids.numpy(), negative_ids=old_ids,
        negative_log_q=old_lq,
    )  # fmt: skip
    np.testing.assert_allclose(loss.item(), want.loss.sum(), rtol=1e-12)
    np.testing.assert_allclose(q.grad.numpy(), want.grad_query, rtol=1e-10)
    # The row whose positive has id 0 gets no gradient from queued entries with id 0 (masked).
    one = zn.info_nce_loss_and_grad(
        q.detach().numpy(), k.detach().numpy(), negatives=old_k, key_ids=ids.numpy(), negative_ids=old_ids,
        negative_log_q=old_lq, grad_loss=np.eye(5)[0],
    )  # fmt: skip
    assert np.all(one.grad_negatives[old_ids == 0] == 0)
    assert np.any(one.grad_negatives[old_ids != 0] != 0)


@pytest.mark.parametrize(
    "make, exc, arg",
    [
        (lambda: znt.NegativeQueue(0, 4), ValueError, "capacity"),
        (lambda: znt.NegativeQueue(4, 0), ValueError, "dim"),
        (lambda: znt.NegativeQueue(4.5, 4), TypeError, "capacity"),
        (lambda: znt.NegativeQueue(4, 4, dtype=torch.int32), TypeError, "dtype"),
    ],
)
def test_bad_construction(make, exc, arg):
    with pytest.raises(exc, match=arg):
        make()


def test_bad_enqueue_names_the_argument():
    qu = znt.NegativeQueue(8, 4)
    with pytest.raises(ValueError, match=r"keys: must have shape \[n, 4\]"):
        qu.enqueue(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError, match="keys"):
        qu.enqueue(torch.zeros(4), [0])
    with pytest.raises(TypeError, match="keys"):
        qu.enqueue(torch.zeros(2, 4, dtype=torch.int64), [0, 1])
    with pytest.raises(ValueError, match="ids"):
        qu.enqueue(torch.zeros(2, 4), [0, 1, 2])
    with pytest.raises(TypeError, match="ids"):
        qu.enqueue(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="log_q"):
        qu.enqueue(torch.zeros(2, 4), [0, 1], torch.zeros(3))
    with pytest.raises(ValueError, match="log_q"):
        qu.enqueue(torch.zeros(2, 4), [0, 1], torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="keys"):
        qu.enqueue(torch.tensor([[float("inf")] * 4]), [0])
    assert len(qu) == 0  # nothing was added by the failed calls
    qu.enqueue(torch.zeros(2, 4), [0, 1], torch.zeros(2))
    with pytest.raises(ValueError, match="log_q: give it on every enqueue"):
        qu.enqueue(torch.zeros(2, 4), [0, 1])
