"""Hostile and random inputs to every public function of docs/API.md (issue 7).

Each registered function (tests/hardening/) gets two property tests, both run in a worker process so that
an abort, a segfault or a hang fails the example that caused it rather than the whole run:

- valid arguments in every dtype and memory layout: the result satisfies the function's checked properties
  (shapes, dtypes, ids in range, uniqueness, expected counts by docs/API.md's formulas, probabilities by their
  formulas, seeded calls reproducible and independent of the arrays' layout);
- one argument made hostile (empty, NaN/inf, negative or huge ids, sizes near 2^63, wrong dtypes, ragged
  lists, non-contiguous, Fortran-order, read-only, big-endian, unaligned...): a correct result, or a
  ValueError/TypeError whose message starts with the name of that argument (or of one it constrains).

Every registered function must exist in `zipfnce`: a renamed or missing one fails here, never skips.
"""

import os
import re

import hardening as H
import numpy as np
import pytest
import zipfnce as zn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROFILE = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)
VALID_EXAMPLES = int(os.environ.get("ZIPFNCE_HARDENING_VALID", "60"))
HOSTILE_EXAMPLES = int(os.environ.get("ZIPFNCE_HARDENING_HOSTILE", "150"))

ENTRIES = sorted(H.REGISTRY)


@pytest.fixture(scope="module")
def worker():
    w = H.Worker()
    yield w
    w.close()


def _entry(name):
    return H.REGISTRY[name]


@pytest.mark.parametrize("name", ENTRIES)
def test_valid_arguments_give_correct_results(worker, name):
    entry = _entry(name)
    statuses = []

    @settings(PROFILE, max_examples=VALID_EXAMPLES)
    @given(entry.valid())
    def prop(kind_args):
        recipe = H.assemble(kind_args, name)
        outcome = worker.run(recipe)
        statuses.append(outcome["status"])
        problem = H.judge(recipe, outcome)
        assert problem is None, f"{recipe}\n{problem}"

    prop()
    # Valid arguments may still be refused (unique sampling of more classes than remain, say), but most
    # must succeed, or the checks above would be checking nothing.
    judged = [x for x in statuses if x != "skipped"]
    assert judged and judged.count("ok") >= 0.7 * len(judged), statuses


@pytest.mark.parametrize("name", ENTRIES)
def test_hostile_arguments_are_named_errors_or_correct_results(worker, name):
    entry = _entry(name)
    hostile = entry.hostile()
    statuses = []

    @settings(PROFILE, max_examples=HOSTILE_EXAMPLES)
    @given(st.data())
    def prop(data):
        kind, args = data.draw(entry.valid(), label="valid arguments")
        targets = sorted(k for k in hostile if k in args and k != "self")
        if kind == "fixed_unigram_candidate_sampler":
            targets.append("vocab_file")
        arg = data.draw(st.sampled_from(targets), label="hostile argument")
        base_args = dict(args)
        args = dict(args)
        bad = data.draw(hostile[arg], label=arg)
        if isinstance(bad, H.Mutate):  # a variant of the valid argument
            bad = H.Mutate(bad.how, args[arg])
        args[arg] = bad
        recipe = H.assemble((kind, args), name, hostile=arg)
        outcome = worker.run(recipe)
        statuses.append(outcome["status"])
        problem = H.judge(recipe, outcome)
        if problem is not None and outcome["status"] == "raised":
            # The error may also be one that the unmodified arguments give (a random valid-looking call can
            # be impossible: unique sampling from a range of 1 with its class removed, say).
            base = worker.run(H.assemble((kind, base_args), name))
            if base["status"] == "raised" and H.error_names(base["message"]) == H.error_names(
                outcome["message"]
            ):
                problem = None
        assert problem is None, f"{recipe}\n{problem}"

    prop()
    judged = [x for x in statuses if x != "skipped"]
    assert judged and judged.count("raised") >= 0.3 * len(judged), "the hostile values are not hostile"


def test_every_public_function_is_registered():
    """A public name of zipfnce that no registry entry covers fails here: register it in tests/hardening/."""
    covered = {
        "CandidateSample": None,
        # Result types: their fields are checked by the entries of the functions that return them.
        "LossAndGrad": "sampled_softmax_loss_and_grad",
        "SparseGrad": "nce_loss_and_grad",
        "LogUniformSampler": "Sampler.__init__",
        "UniformSampler": "Sampler.__init__",
        "UnigramSampler": "Sampler.__init__",
        "ZipfSampler": "Sampler.__init__",
        "log_uniform_candidate_sampler": "dropins",
        "uniform_candidate_sampler": "dropins",
        "fixed_unigram_candidate_sampler": "dropins",
        "all_candidate_sampler": "dropins",
        "compute_accidental_hits": "compute_accidental_hits",
        "set_num_threads": "set_num_threads",
        "get_num_threads": "set_num_threads",
        "simd_level": None,  # no arguments
        "info_nce_loss_and_grad": "info_nce_loss",
        "InfoNCEGrad": None,
        "full_softmax_loss_and_grad": "full_softmax_loss",
        "FullSoftmaxGrad": None,
        "MixedNegatives": "mixed_negatives",
    }
    missing = [n for n in zn.__all__ if n not in covered and n not in H.REGISTRY]
    assert not missing, f"public functions without a hardening entry: {missing}"
    for entry in covered.values():
        assert entry is None or entry in H.REGISTRY


# ----------------------------------------------------------------------------------------------------------
# Regressions: each of these failed before the fix that came with it.
# ----------------------------------------------------------------------------------------------------------

s = zn.LogUniformSampler(100, seed=0)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: s.probability([[1, 2], [3]]), "ids"),  # numpy's own ValueError named nothing
        (lambda: s.sample(3, true_classes=[[1], [2, 3]]), "true_classes"),
        (lambda: zn.compute_accidental_hits([[1]], [[1], [2, 3]], 1), "sampled_candidates"),
        (lambda: zn.UnigramSampler([[1.0], [2.0, 3.0]]), "unigrams"),
    ],
)
def test_ragged_lists_are_named(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: zn.ZipfSampler(10, 10**400), "exponent"),  # was OverflowError
        (lambda: zn.UnigramSampler([1.0, 2.0], distortion=-(10**400)), "distortion"),
        (
            lambda: zn.fixed_unigram_candidate_sampler(
                [[0]], 1, 1, True, 2, unigrams=[1, 2], distortion=10**309
            ),
            "distortion",
        ),
    ],
)
def test_integers_beyond_float_range_are_value_errors(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


def test_unaligned_arrays_give_the_aligned_results():
    tc = np.array([[3, 5], [7, 9]], dtype=np.int64)
    ids = np.arange(20, dtype=np.int64)
    w = np.linspace(0.5, 3.0, 20)
    cands = np.array([5, 1, 9, 9], dtype=np.int64)
    pairs = [
        (lambda t, i, ww, c: s.probability(i), ids, tc, w, cands),
        (lambda t, i, ww, c: s.expected_count(i, 10, 30), ids, tc, w, cands),
        (lambda t, i, ww, c: tuple(s.sample(10, true_classes=t, seed=4)), ids, tc, w, cands),
        (lambda t, i, ww, c: tuple(s.sample_per_row(t, 4, seed=4)), ids, tc, w, cands),
        (lambda t, i, ww, c: zn.UnigramSampler(ww).probability(np.arange(20)), ids, tc, w, cands),
        (lambda t, i, ww, c: zn.compute_accidental_hits(t, c, 2), ids, tc, w, cands),
    ]
    for f, i, t, ww, c in pairs:
        want = f(t, i, ww, c)
        got = f(_unaligned(t), _unaligned(i), _unaligned(ww), _unaligned(c))
        H._same(want if isinstance(want, tuple) else want, got)


def test_the_native_layer_refuses_unaligned_arrays():
    """`_core` builds ndarray views over numpy's buffers; over a misaligned pointer that is undefined
    behaviour, so it must refuse them (the Python layer hands it aligned copies)."""
    from zipfnce import _core

    core = _core.Sampler.log_uniform(100, 1)
    bad = _unaligned(np.arange(6, dtype=np.int64))
    with pytest.raises(ValueError, match="^ids:.*aligned"):
        core.probability(bad)
    with pytest.raises(ValueError, match="^ids:.*aligned"):
        core.expected_count(bad, 3, 3)
    with pytest.raises(ValueError, match="^true_classes:.*aligned"):
        core.sample(3, True, bad.reshape(3, 2), False, 1)
    with pytest.raises(ValueError, match="^true_classes:.*aligned"):
        core.sample_per_row(bad.reshape(3, 2), 3, True, False, 1)
    with pytest.raises(ValueError, match="^sampled_candidates:.*aligned"):
        _core.compute_accidental_hits(np.zeros((1, 1), np.int64), bad, 1)
    with pytest.raises(ValueError, match="^unigrams:.*aligned"):
        _core.Sampler.unigram(_unaligned(np.ones(4)), 1)


def test_unreadable_vocab_files_are_named(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(b"caf\xe9,3\n")
    with pytest.raises(ValueError, match="^vocab_file:"):
        zn.UnigramSampler(vocab_file=f)
    with pytest.raises(ValueError, match="^vocab_file:"):
        zn.UnigramSampler(vocab_file="a\x00b")
    with pytest.raises(TypeError, match="^vocab_file:"):
        zn.UnigramSampler(vocab_file=np.array(["a", "b"]))


@pytest.mark.parametrize("case", range(H.HOPELESS_CASES))
def test_hopeless_unique_requests_fail_fast(worker, case):
    """Positive weights whose probabilities vanish in float64, a Zipf law whose 20th class has P ~ 1e-65,
    all the mass removed: unique sampling used to run its full 2^31 draws first (45 s to over 5 minutes
    on the CI machine). Now it notices that the missing classes are out of reach."""
    kind, message = worker.exec("hopeless_sample", timeout=30, case=case)
    assert kind == "ValueError" and message.startswith("num_sampled: gave up after"), (kind, message)
    draws = int(re.search(r"after (\d+) draws", message).group(1))
    assert draws < 2**24, message


def test_huge_and_odd_scalars():
    # Seeds are the integers of [0, 2^64): -1 is refused, not taken as 2^64 - 1.
    with pytest.raises(ValueError, match="^seed:"):
        s.sample(5, seed=-1)
    np.testing.assert_array_equal(s.sample(5, seed=np.uint64(9)).ids, s.sample(5, seed=9).ids)
    # NumPy integers and 0/1 flags are accepted, bools are not counts.
    assert s.sample(np.int8(3), unique=np.bool_(False)).ids.shape == (3,)
    with pytest.raises(TypeError, match="^num_sampled:"):
        s.sample(True)
    # num_tries up to 2^63 - 1: every count saturates at 1.
    np.testing.assert_array_equal(s.expected_count([0, 50, 99], 3, 2**63 - 1), np.ones(3, np.float32))


# ----------------------------------------------------------------------------------------------------------
# Regressions of the losses (docs/API.md: Sampled softmax and NCE)
# ----------------------------------------------------------------------------------------------------------

LOSSES = [zn.sampled_softmax_loss, zn.nce_loss, zn.sampled_softmax_loss_and_grad, zn.nce_loss_and_grad]


def _loss_problem(dtype=np.float64):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((30, 4)).astype(dtype)
    b = rng.standard_normal(30).astype(dtype)
    x = rng.standard_normal((5, 4)).astype(dtype)
    lab = rng.integers(0, 30, size=(5, 2))
    sv = zn.LogUniformSampler(30, seed=0).sample(6, true_classes=lab, seed=2)
    return w, b, lab, x, sv


def _loss_parts(out):
    return tuple(out) if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("f", LOSSES)
@pytest.mark.parametrize("arg", ["weights", "biases", "inputs", "true_expected", "grad_loss"])
def test_ragged_loss_arguments_are_named(f, arg):
    w, b, lab, x, sv = _loss_problem()
    kw = dict(
        weights=w,
        biases=b,
        labels=lab,
        inputs=x,
        num_sampled=6,
        num_classes=30,
        num_true=2,
        sampled_values=sv,
    )
    ragged = [[1.0, 2.0], [3.0]]
    name = arg
    if arg == "true_expected":
        kw["sampled_values"], name = (sv.ids, ragged, sv.sampled_expected_count), "sampled_values"
    elif arg == "grad_loss":
        if "grad" not in f.__name__:
            return
        kw["grad_loss"] = ragged
    else:
        kw[arg] = ragged
    with pytest.raises(ValueError, match=f"^{name}:"):  # numpy's own message named nothing
        f(**kw)


@pytest.mark.parametrize("f", LOSSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unaligned_and_byte_swapped_loss_arguments_give_the_same_results(f, dtype):
    w, b, lab, x, sv = _loss_problem(dtype)
    want = f(w, b, lab, x, 6, 30, 2, sv)
    te, se = sv.true_expected_count.astype(dtype), sv.sampled_expected_count.astype(dtype)
    for change in (_unaligned, lambda a: a.astype(a.dtype.newbyteorder(">"))):
        sv2 = (change(sv.ids), change(te), change(se))
        got = f(change(w), change(b), change(lab), change(x), 6, 30, 2, sv2)
        for g, e in zip(_loss_parts(got), _loss_parts(want)):
            H._same(g, e)  # byte-swapped weights were a TypeError ("got dtype >f8")


def test_the_loss_binding_refuses_unaligned_arrays():
    from zipfnce import _core

    w, b, lab, x, sv = _loss_problem()
    te, se = sv.true_expected_count.astype(np.float64), sv.sampled_expected_count.astype(np.float64)
    ok = dict(w=w, b=b, lab=lab, x=x, ids=sv.ids, te=te, se=se, gl=np.ones(5))
    for name, key in [
        ("weights", "w"),
        ("biases", "b"),
        ("labels", "lab"),
        ("inputs", "x"),
        ("sampled_values", "ids"),
        ("sampled_values", "te"),
        ("sampled_values", "se"),
        ("grad_loss", "gl"),
    ]:
        a = dict(ok, **{key: _unaligned(ok[key])})
        with pytest.raises(ValueError, match=f"^{name}:.*aligned"):
            _core.sampled_loss(
                False,
                a["w"],
                a["b"],
                a["lab"],
                a["x"],
                a["ids"],
                a["te"],
                a["se"],
                True,
                True,
                0.0,
                True,
                a["gl"],
            )


@pytest.mark.parametrize("f", LOSSES)
def test_labels_outside_the_default_samplers_range_are_named(f):
    w, b, lab, x, _ = _loss_problem()
    with pytest.raises(ValueError, match="^labels:.*num_classes"):  # blamed "true_classes", not an argument
        f(w, b, lab, x, 3, 10, 2, seed=1)


@pytest.mark.parametrize("f", LOSSES)
@pytest.mark.parametrize("per_row", [False, True])
def test_candidates_that_are_all_accidental_hits_drop_out(f, per_row):
    """One candidate, equal to every row's label: softmax over the true column alone. The shared path gave
    e^(-inf + inf) = NaN for the block and reported an overflow of `inputs`."""
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((3, 2)), rng.standard_normal((4, 2))
    ids = np.ones((4, 1) if per_row else 1, np.int64)
    out = f(
        w,
        None,
        [1] * 4,
        x,
        1,
        3,
        sampled_values=(ids, np.full(4, 0.5), np.full(ids.shape, 0.5)),
        remove_accidental_hits=True,
    )
    loss = out[0] if isinstance(out, tuple) else out
    z = x @ w[1] - np.log(0.5)
    want = 0.0 * z if "softmax" in f.__name__ else np.logaddexp(0, -z)  # NCE: the true column's term
    np.testing.assert_allclose(loss, want, atol=1e-12)
    if isinstance(out, tuple):
        assert np.all(np.isfinite(out.grad_inputs))
