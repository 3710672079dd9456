"""Samplers called as a training loop calls them (issue 18): kept output buffers and the fast path of
``sample`` must never change a result or let one call's output overwrite another's."""

import gc

import numpy as np
import pytest
import zipfnce as zn

V = 10**6


def _copy(r):
    return tuple(None if x is None else np.array(x, copy=True) for x in r[:3]) + (r[3],)


def _same(a, b):
    for x, y in zip(a[:3], b[:3]):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)
    assert a[3] == b[3] if np.isscalar(a[3]) else np.array_equal(a[3], b[3])


def test_live_outputs_are_never_reused():
    # Large outputs go back to a pool when their arrays die; while an array (or a view of it) lives, later
    # calls of the same size must write elsewhere.
    s = zn.LogUniformSampler(V, seed=3)
    tc = np.arange(2048, dtype=np.int64).reshape(1024, 2)
    first = s.sample(100_000, unique=False, true_classes=tc)
    kept = _copy(first)
    view = s.sample(50_000, unique=False).ids[10:20]
    view_copy = view.copy()
    for _ in range(6):
        s.sample(100_000, unique=False, true_classes=tc)  # dies at once: its buffers go back
        s.sample(50_000, unique=False)
        gc.collect()
    _same(first, kept)
    np.testing.assert_array_equal(view, view_copy)
    # And writing into an output does not disturb later calls.
    first.ids[:] = -1
    del first
    again = zn.LogUniformSampler(V, seed=3).sample(100_000, unique=False, true_classes=tc)
    _same(again, kept)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_sampled=200_000, unique=False),
        dict(num_sampled=70_000, unique=False, true_classes=np.arange(4096).reshape(4096, 1)),
        dict(num_sampled=9000, unique=True, true_classes=np.arange(1024).reshape(1024, 1)),
        dict(num_sampled=9000, unique=True, true_classes=np.arange(1024).reshape(1024, 1), remove_true=True),
    ],
)
def test_seeded_results_do_not_depend_on_recycled_buffers(kwargs):
    # The same seeded call gives the same arrays whether its outputs are fresh or recycled (stale contents),
    # with calls of other sizes in between.
    fresh = zn.LogUniformSampler(V).sample(seed=11, **kwargs)
    s = zn.LogUniformSampler(V)
    for k in range(5):
        s.sample(kwargs["num_sampled"] // (k + 1), unique=False, seed=k)
        _same(s.sample(seed=11, **kwargs), fresh)


def test_per_row_outputs_are_recycled_safely():
    tc = np.arange(512, dtype=np.int64).reshape(256, 2)
    fresh = zn.LogUniformSampler(V).sample_per_row(tc, 100, seed=5)
    s = zn.LogUniformSampler(V)
    for _ in range(4):
        _same(s.sample_per_row(tc, 100, seed=5), fresh)
        s.sample_per_row(tc, 100, unique=False, seed=6)


@pytest.mark.parametrize(
    "tc",
    [
        np.arange(64, dtype=np.int64).reshape(32, 2),
        np.arange(64, dtype=np.int32).reshape(32, 2),
        np.arange(64, dtype=np.int64).reshape(32, 2)[:, ::-1],  # a strided view
        np.arange(32, dtype=np.int64),  # [B] means num_true = 1
        list(range(32)),
        None,
    ],
)
def test_fast_path_gives_what_the_conversions_give(tc):
    # Plain arguments skip the Python conversions; anything else takes them. Both must agree.
    ref = np.asarray(tc, dtype=np.int64) if tc is not None else None
    if ref is not None and ref.ndim == 1:
        ref = ref.reshape(-1, 1)
    for unique in (True, False):
        a = zn.LogUniformSampler(V, seed=7).sample(3000, unique=unique, true_classes=tc)
        b = zn.LogUniformSampler(V, seed=7).sample(
            np.int64(3000), unique=np.bool_(unique), true_classes=None if ref is None else ref.copy()
        )
        _same(a, b)
        assert isinstance(a, zn.CandidateSample) and a.ids.dtype == np.int64


def test_fast_path_still_refuses_bad_arguments():
    s = zn.LogUniformSampler(1000, seed=1)
    tc = np.zeros((4, 1), dtype=np.int64)
    with pytest.raises(ValueError, match="num_sampled"):
        s.sample(-1, true_classes=tc)
    with pytest.raises(TypeError, match="unique"):
        s.sample(10, unique="yes", true_classes=tc)
    with pytest.raises(TypeError, match="true_classes"):
        s.sample(10, true_classes=np.zeros((4, 1)))
    with pytest.raises(ValueError, match="true_classes"):
        s.sample(10, true_classes=np.full((4, 1), 1000, dtype=np.int64))
    with pytest.raises(ValueError, match="true_classes"):
        s.sample(10, true_classes=np.zeros((4, 0), dtype=np.int64))
    with pytest.raises(ValueError, match="remove_true"):
        s.sample(10, remove_true=True)
