"""Entries: the exact full softmax (docs/API.md: Full softmax)."""

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
from .strategies import FLOAT_DTYPES, INT_DTYPES, hostile_float, hostile_ids, int_values, layouts

# full_softmax_loss and full_softmax_loss_and_grad share one entry (the kind says which).


def _full_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    a = dict(args)
    return getattr(zn, kind)(a.pop("weights"), a.pop("biases", None), a.pop("labels"), a.pop("inputs"), **a)


@st.composite if st is not None else (lambda f: f)
def _full_valid(draw):
    kind = draw(st.sampled_from(["full_softmax_loss", "full_softmax_loss_and_grad"]))
    v, d, b = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 5))

    def floats(dtype):
        return st.floats(-3.0, 3.0, width=int(np.dtype(dtype).itemsize * 8))

    def arr(shape, values, dtype):
        n = int(np.prod(shape))
        return Arr(tuple(draw(st.lists(values, min_size=n, max_size=n))), dtype, shape, draw(layouts()))

    wd = draw(st.sampled_from(["float32", "float64"]))
    args: Dict[str, Any] = {"weights": arr((v, d), floats(wd), wd)}
    if draw(st.booleans()):
        bd = draw(st.sampled_from(FLOAT_DTYPES))
        args["biases"] = arr((v,), floats(bd), bd)
    k = draw(st.sampled_from([None, 1, 2]))
    ld = draw(st.sampled_from([t for t in INT_DTYPES if np.iinfo(t).max >= v - 1]))
    args["labels"] = arr((b,) if k is None else (b, k), int_values(ld, 0, v - 1), ld)
    xd = draw(st.sampled_from(FLOAT_DTYPES))
    args["inputs"] = arr((b, d), floats(xd), xd)
    if draw(st.booleans()):
        args["label_smoothing"] = draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):
        args["ignore_index"] = draw(st.integers(-3, v))  # may equal a real label: those rows are ignored
    if draw(st.booleans()):
        args["max_logits_bytes"] = draw(st.sampled_from([0, 1 << 20]))
    if kind == "full_softmax_loss_and_grad":
        g = draw(st.sampled_from(["none", "scalar", "rows"]))
        if g == "scalar":
            args["grad_loss"] = draw(st.floats(-2, 2))
        elif g == "rows":
            args["grad_loss"] = arr((b,), st.floats(-2, 2), "float64")
    return kind, args


def full_reference(args: Dict[str, Any]) -> np.ndarray:
    """docs/API.md's full-softmax loss in float64 NumPy (gradients: test_full_softmax.py, against torch)."""
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    w, x = f(args["weights"]), f(args["inputs"])
    z = x @ w.T + (0.0 if args.get("biases") is None else f(args["biases"]))
    lab = np.asarray(args["labels"]).astype(np.int64).reshape(x.shape[0], -1)
    eps = args.get("label_smoothing", 0.0)
    m = z.max(axis=1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    loss = -(1 - eps) * np.take_along_axis(logp, lab, 1).mean(axis=1) - eps * logp.mean(axis=1)
    ig = args.get("ignore_index")
    if ig is not None:
        loss[(lab == ig).all(axis=1)] = 0.0
    return np.maximum(loss, 0.0)


def check_full(recipe, args, out, again):
    dtype = np.float32 if np.asarray(args["weights"]).dtype.itemsize == 4 else np.float64
    v, d = np.asarray(args["weights"]).shape
    b = np.asarray(args["inputs"]).shape[0]
    loss = out if recipe.kind == "full_softmax_loss" else out.loss
    assert loss.dtype == dtype and loss.shape == (b,)
    assert np.isfinite(loss).all() and (loss >= 0).all()
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(loss, full_reference(args), rtol=tol, atol=tol)
    if recipe.kind == "full_softmax_loss_and_grad":
        assert out.grad_inputs.shape == (b, d) and out.grad_weights.shape == (v, d)
        assert (out.grad_biases is None) == (args.get("biases") is None)
        for a in out[1:]:
            assert a is None or (a.dtype == dtype and np.isfinite(a).all())
    # Weights given as a nested list are float64 while their canonical array may be float32.
    wr = dict(recipe.args)["weights"]
    _same(out, again(not (isinstance(wr, Arr) and {"list", "tuple"} & set(wr.layout))))


_FULL_SIZED = frozenset({"weights", "biases", "labels", "inputs", "grad_loss"})

register(
    Entry(
        name="full_softmax_loss",
        call=_full_call,
        valid=lambda: _full_valid(),
        hostile=lambda: {
            "weights": hostile_ids(100, ndims=(0, 1, 2, 3)),
            "biases": hostile_ids(100, ndims=(0, 1, 2)),
            "labels": hostile_ids(6, ndims=(0, 1, 2, 3)),
            "inputs": hostile_ids(100, ndims=(0, 1, 2, 3)),
            "label_smoothing": hostile_float(),
        },
        check=check_full,
        # Sizes are checked against each other, and finite values can still overflow the logits (reported on
        # inputs): an error may name the argument that disagrees with the bad one.
        blame={a: _FULL_SIZED for a in _FULL_SIZED},
        names=frozenset(
            {
                "weights",
                "biases",
                "labels",
                "inputs",
                "ignore_index",
                "label_smoothing",
                "grad_loss",
                "max_logits_bytes",
            }
        ),
    )
)
