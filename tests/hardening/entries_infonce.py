"""Entries: InfoNCE (docs/API.md: InfoNCE)."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .checks import _same
from .recipes import Arr
from .registry import Entry, register
from .strategies import (
    FLOAT_DTYPES,
    INT_DTYPES,
    hostile_flag,
    hostile_float,
    hostile_ids,
    int_values,
    layouts,
)

# InfoNCE (docs/API.md: InfoNCE): info_nce_loss and info_nce_loss_and_grad share one entry (the kind says which).


def _infonce_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    a = dict(args)
    return getattr(zn, kind)(a.pop("query"), a.pop("keys"), **a)


def _small_floats(dtype: str, lo: float = -3.0, hi: float = 3.0):
    return st.floats(lo, hi, width=int(np.dtype(dtype).itemsize * 8))


@st.composite if st is not None else (lambda f: f)
def _infonce_valid(draw):
    kind = draw(st.sampled_from(["info_nce_loss", "info_nce_loss_and_grad"]))
    b, d = draw(st.integers(1, 5)), draw(st.integers(1, 4))

    def mat(rows, dtype):
        vals = tuple(draw(st.lists(_small_floats(dtype), min_size=rows * d, max_size=rows * d)))
        # An empty nested list has no second dimension: keep empty matrices as arrays.
        lay = draw(layouts()) if rows else ()
        return Arr(vals, dtype, (rows, d), lay)

    def vec(n, values, dtype):
        return Arr(
            tuple(draw(st.lists(values, min_size=n, max_size=n))), dtype, (n,), draw(layouts()) if n else ()
        )

    args: Dict[str, Any] = {
        "query": mat(b, draw(st.sampled_from(["float32", "float64"]))),
        "keys": mat(b, draw(st.sampled_from(FLOAT_DTYPES))),
    }
    n = draw(st.one_of(st.none(), st.integers(0, 3)))
    if n is not None:
        args["negatives"] = mat(n, draw(st.sampled_from(FLOAT_DTYPES)))
    args["temperature"] = draw(st.floats(0.05, 5.0))
    if draw(st.booleans()):
        args["key_log_q"] = vec(b, st.floats(-8, 0), "float64")
    if n is not None and draw(st.booleans()):
        args["negative_log_q"] = vec(n, st.floats(-8, 0), "float32")
    if draw(st.booleans()):
        dt = draw(st.sampled_from(INT_DTYPES))
        args["key_ids"] = vec(b, int_values(dt, 0, 3), dt)
        if n is not None and draw(st.booleans()):
            args["negative_ids"] = vec(n, int_values(dt, 0, 3), dt)
    args["symmetric"] = draw(st.booleans())
    args["focal_gamma"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    if kind == "info_nce_loss_and_grad":
        g = draw(st.sampled_from(["none", "scalar", "rows"]))
        if g == "scalar":
            args["grad_loss"] = draw(st.floats(-2, 2))
        elif g == "rows":
            args["grad_loss"] = vec(b, st.floats(-2, 2), "float64")
    return kind, args


def infonce_reference(args: Dict[str, Any]) -> np.ndarray:
    """docs/API.md's InfoNCE loss in float64 NumPy (the gradients are checked against autograd in
    test_infonce.py)."""
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    q, k = f(args["query"]), f(args["keys"])
    b = q.shape[0]
    z = q @ k.T / args["temperature"]
    if args.get("key_log_q") is not None:
        z = z - f(args["key_log_q"])[None, :]
    mask = np.zeros(z.shape, dtype=bool)
    kid = None if args.get("key_ids") is None else np.asarray(args["key_ids"]).astype(np.int64)
    if kid is not None:
        mask = (kid[None, :] == kid[:, None]) & ~np.eye(b, dtype=bool)
    if args.get("negatives") is not None:
        n = f(args["negatives"]).reshape(-1, q.shape[1])
        zn_ = q @ n.T / args["temperature"]
        if args.get("negative_log_q") is not None:
            zn_ = zn_ - f(args["negative_log_q"])[None, :]
        nmask = np.zeros(zn_.shape, dtype=bool)
        if args.get("negative_ids") is not None:
            nmask = np.asarray(args["negative_ids"]).astype(np.int64)[None, :] == kid[:, None]
        z, mask = np.concatenate([z, zn_], axis=1), np.concatenate([mask, nmask], axis=1)
    z = np.where(mask, -np.inf, z)
    g = args.get("focal_gamma", 0.0)

    def focal(logits):
        m = logits.max(axis=1, keepdims=True)
        logp = np.diag(logits)[:, None] - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        logp = np.minimum(logp[:, 0], 0.0)
        return -logp if g == 0 else -((-np.expm1(logp)) ** g) * logp

    loss = focal(z)
    if args.get("symmetric"):
        loss = (loss + focal(z[:, :b].T)) / 2
    return loss


def check_infonce(recipe, args, out, again):
    dtype = np.float32 if np.asarray(args["query"]).dtype.itemsize == 4 else np.float64
    q = np.asarray(args["query"])
    b, d = q.shape
    loss = out if recipe.kind == "info_nce_loss" else out.loss
    assert loss.dtype == dtype and loss.shape == (b,)
    assert np.isfinite(loss).all() and (loss >= 0).all()
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(loss, infonce_reference(args), rtol=tol, atol=tol)
    if recipe.kind == "info_nce_loss_and_grad":
        assert out.grad_query.shape == (b, d) and out.grad_keys.shape == (b, d)
        if args.get("negatives") is None:
            assert out.grad_negatives is None
        else:
            assert out.grad_negatives.shape == (np.asarray(args["negatives"]).reshape(-1, d).shape[0], d)
        for a in out[1:]:
            assert a is None or (a.dtype == dtype and np.isfinite(a).all())
    # A query given as a nested list is float64 while its canonical array may be float32: the dtype of query
    # decides, so compare with the canonical layout only when that keeps the dtype.
    qr = dict(recipe.args)["query"]
    _same(out, again(not (isinstance(qr, Arr) and {"list", "tuple"} & set(qr.layout))))


_INFONCE_SIZED = frozenset(
    {"keys", "negatives", "key_log_q", "negative_log_q", "key_ids", "negative_ids", "grad_loss", "query"}
)

register(
    Entry(
        name="info_nce_loss",
        call=_infonce_call,
        valid=lambda: _infonce_valid(),
        hostile=lambda: {
            "query": hostile_ids(100, ndims=(0, 1, 2, 3)),
            "keys": hostile_ids(100, ndims=(0, 1, 2, 3)),
            "negatives": hostile_ids(100, ndims=(0, 1, 2, 3)),
            "temperature": hostile_float(),
            "key_log_q": hostile_ids(100, ndims=(0, 1, 2)),
            "negative_log_q": hostile_ids(100, ndims=(0, 1, 2)),
            "key_ids": hostile_ids(100, ndims=(0, 1, 2)),
            "negative_ids": hostile_ids(100, ndims=(0, 1, 2)),
            "symmetric": hostile_flag(),
            "focal_gamma": hostile_float(),
        },
        check=check_infonce,
        # Sizes are checked against each other, and finite embeddings can still overflow the logits (reported
        # on query): an error may name the argument that disagrees with the bad one.
        blame={a: _INFONCE_SIZED for a in _INFONCE_SIZED},
        names=frozenset(
            {
                "query",
                "keys",
                "negatives",
                "temperature",
                "key_log_q",
                "negative_log_q",
                "key_ids",
                "negative_ids",
                "symmetric",
                "focal_gamma",
                "grad_loss",
                "max_logits_bytes",
            }
        ),
    )
)
