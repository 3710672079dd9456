"""Entries: sampled softmax and NCE losses and their gradients (docs/API.md: Sampled softmax and NCE)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

try:  # hypothesis is only needed where strategies are drawn (the parent), not in the worker
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from .checks import _as_int, _same
from .recipes import FLOAT_MUTATIONS, ID_MUTATIONS, RAW, Arr, Drawn, Mutate, Raw, Triple
from .reference import _ids_array
from .registry import Entry, register
from .strategies import flags, hostile_flag, hostile_float, hostile_ids, hostile_int, hostile_seed, layouts

LOSS_FUNCTIONS = ["sampled_softmax_loss", "nce_loss", "sampled_softmax_loss_and_grad", "nce_loss_and_grad"]
LOSS_ARGS = (
    "weights",
    "biases",
    "labels",
    "inputs",
    "num_sampled",
    "num_classes",
    "num_true",
    "sampled_values",
    "remove_accidental_hits",
    "seed",
    "subtract_log_q",
    "focal_gamma",
    "grad_loss",
)


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def loss_reference(
    nce: bool, w, bias, labels, x, ids, te, se, hits: bool, log_q: bool, gamma: float
) -> np.ndarray:
    """docs/API.md's formula, row by row in float64 (all arguments float64 / int64 NumPy arrays, labels [B, T])."""
    bsz, nt = labels.shape
    y = 1.0 / nt
    out = np.zeros(bsz)
    for r in range(bsz):
        cand = ids if ids.ndim == 1 else ids[r]
        q = se if se.ndim == 1 else se[r]
        t = labels[r]
        zt = w[t] @ x[r] + (0.0 if bias is None else bias[t]) - (np.log(te[r]) if log_q else 0.0)
        zs = w[cand] @ x[r] + (0.0 if bias is None else bias[cand]) - (np.log(q) if log_q else 0.0)
        if hits:
            zs = zs[~np.isin(cand, t)]
        if not nce:
            z = np.concatenate([zt, zs])
            m = z.max()
            logp = zt - (m + np.log(np.exp(z - m).sum()))
            out[r] = -(y * (-np.expm1(logp)) ** gamma * logp).sum()
        else:
            # -[y (1-s)^g ln s + (1-y) s^g ln(1-s)], s = sigmoid(z), ln s = -softplus(-z),
            # ln(1-s) = -softplus(z)
            def ce(z, yy):
                s = np.exp(-_softplus(-z))
                return yy * (1.0 - s) ** gamma * _softplus(-z) + (1.0 - yy) * s**gamma * _softplus(z)

            out[r] = ce(zt, y).sum() + ce(zs, 0.0).sum()
    return out


def _loss_problem(args: Dict[str, Any], dt: Any) -> Optional[Dict[str, Any]]:
    """The call's data in float64, candidates included (drawn again for the default sampler, which needs a
    seed); None when the candidates cannot be known (an unseeded default draw)."""
    nt = _as_int(args.get("num_true", 1))
    lab = _ids_array(args["labels"]).reshape(-1, nt)
    ns = _as_int(args["num_sampled"])
    sv = args.get("sampled_values")
    if sv is None:
        if args.get("seed") is None:
            return None
        import zipfnce as zn

        ids, te, se = zn.log_uniform_candidate_sampler(
            lab, nt, ns, True, _as_int(args["num_classes"]), seed=args["seed"]
        )
    else:
        ids, te, se = sv[0], sv[1], sv[2]
    ids = _ids_array(ids)
    te = np.ones(lab.shape) if te is None else np.asarray(te, dtype=np.float64).reshape(lab.shape)
    b = args.get("biases")

    def f64(a):  # rounded to the call's float type first, as the library does
        with np.errstate(over="ignore"):
            return np.asarray(a, dtype=dt).astype(np.float64)

    return {
        "w": f64(args["weights"]),
        "bias": None if b is None else f64(b),
        "labels": lab,
        "x": f64(args["inputs"]),
        "ids": ids,
        "te": te,
        "se": np.asarray(se, dtype=np.float64),
        "hits": bool(args["remove_accidental_hits"]),
        "log_q": bool(args.get("subtract_log_q", True)),
        "gamma": float(args.get("focal_gamma", 0.0)),
    }


def _call_f64(fn: str, args: Dict[str, Any], dt: Any, **over: Any) -> Any:
    """``fn`` on the call's arguments with every float array rounded to the call's dtype ``dt`` (as the
    library does), then widened to float64 (C order), some of them replaced."""
    import zipfnce as zn

    a = dict(args)
    for k in ("weights", "biases", "inputs"):
        if a.get(k) is not None:
            with np.errstate(over="ignore"):
                a[k] = np.array(a[k], dtype=dt).astype(np.float64)
    a.update(over)
    return getattr(zn, fn)(**a)


def check_loss(recipe, args, out, again):
    import zipfnce as zn

    fn = recipe.kind
    nce = fn.startswith("nce")
    grad = fn.endswith("_and_grad")
    w = np.asarray(args["weights"])
    dt = np.dtype(w.dtype.newbyteorder("="))
    nt = _as_int(args.get("num_true", 1))
    lab = _ids_array(args["labels"]).reshape(-1, nt)
    bsz, d = lab.shape[0], w.shape[1]
    loss = out.loss if grad else out
    assert isinstance(loss, np.ndarray), type(loss)
    assert loss.shape == (bsz,) and loss.dtype == dt, (loss.shape, loss.dtype)
    assert np.all(np.isfinite(loss)), loss
    assert np.all(loss >= 0), loss  # every term is a cross-entropy with labels in [0, 1]
    if grad:
        assert isinstance(out, zn.LossAndGrad)
        gx, gw, gb = out.grad_inputs, out.grad_weights, out.grad_biases
        assert isinstance(gw, zn.SparseGrad)
        assert gx.shape == (bsz, d) and gx.dtype == dt and np.all(np.isfinite(gx))
        idx = gw.indices
        assert idx.dtype == np.int64 and idx.ndim == 1 and np.all(np.diff(idx) > 0), idx  # sorted, unique
        assert gw.values.shape == (idx.size, d) and gw.values.dtype == dt and np.all(np.isfinite(gw.values))
        if args.get("biases") is None:
            assert gb is None
        else:
            assert isinstance(gb, zn.SparseGrad)
            np.testing.assert_array_equal(gb.indices, idx)
            assert gb.values.shape == (idx.size,) and gb.values.dtype == dt
        # The loss of the fused pass is the forward-only loss.
        fwd = (
            getattr(zn, fn[: -len("_and_grad")])(**{k: v for k, v in args.items() if k != "grad_loss"})
            if args.get("sampled_values") is not None or args.get("seed") is not None
            else None
        )
        if fwd is not None:
            np.testing.assert_allclose(fwd, loss, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-6)
    prob = _loss_problem(args, dt)
    if prob is None:  # an unseeded default draw: only the properties above can be checked
        return
    used = np.unique(np.concatenate([prob["labels"].ravel(), prob["ids"].ravel()]))
    if grad:
        assert set(idx.tolist()) <= set(used.tolist()), "a gradient row of a class the call did not use"
    ref = loss_reference(
        nce,
        prob["w"],
        prob["bias"],
        prob["labels"],
        prob["x"],
        prob["ids"],
        prob["te"],
        prob["se"],
        prob["hits"],
        prob["log_q"],
        prob["gamma"],
    )
    tol = 1e-9 if dt == np.float64 else 2e-4
    np.testing.assert_allclose(loss, ref, rtol=tol, atol=tol * (1 + np.abs(ref).max()))
    # Layout does not matter: the same call on C-ordered, aligned, native copies gives the same bits.
    canon = again(True)
    if np.asarray(canon.loss if grad else canon).dtype == dt:
        _same(tuple(out) if grad else out, tuple(canon) if grad else canon)
    if not grad:
        return
    # Finite differences of sum_b c_b loss_b, in float64, on a few coordinates of inputs, weights, biases.
    c = args.get("grad_loss")
    c = np.ones(bsz) if c is None else np.broadcast_to(np.asarray(c, dtype=np.float64), (bsz,))
    base = _call_f64(fn, args, dt)
    if dt == np.float64:
        np.testing.assert_allclose(base.grad_inputs, gx, rtol=1e-12, atol=1e-12)
    else:  # the float32 gradients are the float64 ones to float32 accuracy
        scale = 1 + np.abs(base.grad_inputs).max()
        np.testing.assert_allclose(gx, base.grad_inputs, rtol=1e-3, atol=1e-3 * scale)
        np.testing.assert_array_equal(gw.indices, base.grad_weights.indices)
        scale = 1 + np.abs(base.grad_weights.values).max(initial=0)
        np.testing.assert_allclose(gw.values, base.grad_weights.values, rtol=1e-3, atol=1e-3 * scale)
    big = max(
        np.abs(np.asarray(args[k], dtype=np.float64)).max(initial=0)
        for k in ("weights", "inputs", "biases")
        if args.get(k) is not None
    )
    if big > 1e3:  # (hostile magnitudes: a difference step of 1e-6 would vanish, or leave the smooth regime)
        return
    fwd_fn = fn[: -len("_and_grad")]
    fargs = {k: v for k, v in args.items() if k != "grad_loss"}
    h = 1e-6

    def objective(**over):
        return float(np.dot(c, _call_f64(fwd_fn, fargs, dt, **over)))

    def fd(name, index):
        arr = np.array(args[name], dtype=dt).astype(np.float64)
        hi, lo = arr.copy(), arr.copy()
        hi[index] += h
        lo[index] -= h
        return (objective(**{name: hi}) - objective(**{name: lo})) / (2 * h)

    def near(got, want, what):
        assert abs(got - want) <= 1e-5 * (1 + abs(want)), f"{what}: gradient {got}, finite difference {want}"

    j = d - 1
    near(base.grad_inputs[0, j], fd("inputs", (0, j)), f"inputs[0, {j}]")
    gwi = dict(zip(base.grad_weights.indices.tolist(), range(base.grad_weights.indices.size)))
    for cls in sorted({int(prob["labels"][0, 0]), int(prob["ids"].ravel()[0])}):
        want = fd("weights", (cls, 0))
        got = base.grad_weights.values[gwi[cls], 0] if cls in gwi else 0.0
        near(got, want, f"weights[{cls}, 0]")
        if args.get("biases") is not None:
            got = base.grad_biases.values[gwi[cls]] if cls in gwi else 0.0
            near(got, fd("biases", cls), f"biases[{cls}]")


def _float_arr(shape, dtypes=("float32", "float64"), lo=-2.0, hi=2.0, lay=None):
    n = math.prod(shape)
    return st.tuples(
        st.sampled_from(dtypes),
        st.lists(st.floats(lo, hi, width=32), min_size=n, max_size=n),
        lay if lay is not None else layouts(),
    ).map(lambda t: Arr(tuple(t[1]), t[0], shape, t[2]))


def _loss_valid(fn: str):
    grad = fn.endswith("_and_grad")

    @st.composite
    def strat(draw):
        v = draw(st.integers(1, 40))
        d = draw(st.integers(1, 6))
        bsz = draw(st.integers(1, 5))
        nt = draw(st.integers(1, 3))
        wdt = draw(st.sampled_from(["float32", "float64"]))
        weights = draw(_float_arr((v, d), dtypes=(wdt,)))
        biases = draw(st.one_of(st.none(), _float_arr((v,), dtypes=("float16", "float32", "float64"))))
        lab_shape = (bsz,) if nt == 1 and draw(st.booleans()) else (bsz, nt)
        lab_vals = tuple(draw(st.lists(st.integers(0, v - 1), min_size=bsz * nt, max_size=bsz * nt)))
        labels = Arr(
            lab_vals,
            draw(st.sampled_from(["int64", "int32", "uint8", "uint64"])) if v <= 255 else "int64",
            lab_shape,
            draw(layouts()),
        )
        inputs = draw(_float_arr((bsz, d), dtypes=("float16", "float32", "float64")))
        log_q = draw(flags())
        how = draw(st.sampled_from(["default", "triple", "shared", "per_row"]))
        seed = draw(
            st.one_of(st.integers(0, 2**64 - 1), st.just(None) if how != "default" else st.integers(0, 9))
        )
        nc = v
        if how == "default":
            nc = draw(st.integers(max(lab_vals) + 1, v))  # the default sampler's range holds the labels
            ns = draw(st.integers(1, nc))
            sv = None
            if draw(st.integers(0, 9)) == 0:
                seed = None  # unseeded: only the properties are checked
        elif how == "triple":
            per_row = draw(st.booleans())
            ns = draw(st.integers(1, 8))
            shape = (bsz, ns) if per_row else (ns,)
            n = math.prod(shape)
            ids = Arr(
                tuple(draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n))),
                draw(st.sampled_from(["int64", "int32"])),
                shape,
                draw(layouts()),
            )
            pos = st.floats(float(np.float32(1e-3)), 4.0, width=32)
            te = (
                None
                if not log_q and draw(st.booleans())
                else Arr(
                    tuple(draw(st.lists(pos, min_size=bsz * nt, max_size=bsz * nt))),
                    "float32",
                    (bsz, nt),
                    draw(layouts()),
                )
            )
            se = Arr(
                tuple(draw(st.lists(pos, min_size=n, max_size=n))),
                draw(st.sampled_from(["float32", "float64"])),
                shape,
                draw(layouts()),
            )
            sv = Triple(ids, te, se, as_list=draw(st.integers(0, 5)) == 0)
        else:
            unique = draw(flags()) if v > 1 else False
            ns = draw(st.integers(1, min(v, 8) if unique else 12))
            tc = Arr(lab_vals, "int64", (bsz, nt))
            sv = Drawn(v, ns, tc, how == "per_row", bool(unique), draw(st.integers(0, 2**32)))
        args = {
            "weights": weights,
            "biases": biases,
            "labels": labels,
            "inputs": inputs,
            "num_sampled": ns,
            "num_classes": nc,
            "num_true": nt,
            "sampled_values": sv,
            "remove_accidental_hits": draw(flags()),
            "seed": seed,
            "subtract_log_q": log_q,
            "focal_gamma": draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 0])),
        }
        if grad:
            args["grad_loss"] = draw(
                st.one_of(st.none(), st.sampled_from([2.0, -1.0, 0, 3]), _float_arr((bsz,)))
            )
        return fn, args

    return strat()


def _loss_hostile(grad: bool):
    def floats(extra=()):
        return st.one_of(
            st.sampled_from(FLOAT_MUTATIONS + list(extra)).map(Mutate), st.sampled_from(sorted(RAW)).map(Raw)
        )

    d = {
        "weights": floats(),
        "biases": floats(),
        "labels": st.one_of(st.sampled_from(ID_MUTATIONS).map(Mutate), hostile_ids(1000)),
        "inputs": floats(),
        "num_sampled": st.one_of(hostile_int(), st.sampled_from([0, 2**36, 2**36 + 1, 10**6])),
        "num_classes": st.one_of(hostile_int(), st.sampled_from([0, 10**6, 2**62])),
        "num_true": st.one_of(hostile_int(), st.sampled_from([0, 4, 100])),
        "sampled_values": st.one_of(
            st.sampled_from(
                ["ids:" + m for m in ID_MUTATIONS]
                + ["te:" + m for m in FLOAT_MUTATIONS]
                + ["se:" + m for m in FLOAT_MUTATIONS]
                + ["short"]
            ).map(Mutate),
            st.sampled_from(sorted(RAW)).map(Raw),
        ),
        "remove_accidental_hits": hostile_flag(),
        "subtract_log_q": hostile_flag(),
        "seed": hostile_seed(),
        "focal_gamma": st.one_of(hostile_float(), st.sampled_from([-0.5, 1e-300, 50.0])),
    }
    if grad:
        d["grad_loss"] = floats()
    return d


_LOSS_BLAME = {
    "weights": frozenset({"inputs", "biases", "labels", "sampled_values", "num_classes"}),
    "biases": frozenset({"weights"}),
    "labels": frozenset({"num_true", "inputs", "sampled_values", "grad_loss"}),
    "inputs": frozenset({"weights", "labels"}),
    "num_sampled": frozenset({"sampled_values", "num_classes"}),
    "num_classes": frozenset({"num_sampled", "weights"}),
    "num_true": frozenset({"labels", "sampled_values"}),
    "sampled_values": frozenset({"num_sampled", "labels"}),
}


def _loss_call(kind: str, args: Dict[str, Any]) -> Any:
    import zipfnce as zn

    return getattr(zn, kind)(**args)


for _fn in LOSS_FUNCTIONS:
    register(
        Entry(
            name=_fn,
            call=_loss_call,
            valid=(lambda f: lambda: _loss_valid(f))(_fn),
            hostile=(lambda g: lambda: _loss_hostile(g))(_fn.endswith("_and_grad")),
            check=check_loss,
            blame=_LOSS_BLAME,
            names=frozenset(LOSS_ARGS if _fn.endswith("_and_grad") else LOSS_ARGS[:-1]),
        )
    )
del _fn
