"""zn.FrequencyEstimator: accuracy on a Zipf stream against the exact P(id in batch), the update rule,
threads, pickling, state transfer, several ranks (real torch.distributed gloo processes) and bad input."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import zipfnce as zn


def zipf_stream(num_ids: int, exponent: float, batch: int, steps: int, seed: int):
    p = (np.arange(1, num_ids + 1, dtype=np.float64)) ** -exponent
    p /= p.sum()
    rng = np.random.default_rng(seed)
    return p, rng.choice(num_ids, size=(steps, batch), p=p)


def median_rel_errors(est: zn.FrequencyEstimator, p: np.ndarray, batch: int):
    """Median |Q_hat / Q - 1| over rank bands, Q = 1 - (1 - p)^B the exact P(id appears in a batch)."""
    q = -np.expm1(batch * np.log1p(-p))
    ids = np.arange(len(p))
    rel = np.abs(est.probability(ids) / q - 1)
    return {
        band: float(np.median(rel[lo:hi]))
        for band, (lo, hi) in {
            "top200": (0, 200),
            "200-2000": (200, 2000),
            "2000-20000": (2000, 20000),
        }.items()
    }


def test_zipf_stream_accuracy():
    # The goal: Zipf(1.1) over 20k ids, B = 256, 3000 batches: median relative error <= 10 % over
    # the 200 most frequent ids. The stream is fixed (seeded), so the figures are too.
    p, stream = zipf_stream(20_000, 1.1, 256, 3000, seed=1)
    est = zn.FrequencyEstimator()
    for ids in stream:
        est.update(ids)
    err = median_rel_errors(est, p, 256)
    print("median relative error by rank band:", err)
    assert err["top200"] <= 0.10, err
    # Further down the tail an id is seen a handful of times in 3000 steps: the error is that of a mean of
    # few geometric gaps (about 1 / sqrt(sightings)); it must still be an estimate, not noise.
    assert err["200-2000"] <= 0.15, err
    assert err["2000-20000"] <= 0.5, err


def test_update_rule_and_repeats_count_once():
    est = zn.FrequencyEstimator(4096, num_hashes=3, alpha=0.1)
    for t in range(1, 201):
        batch = [5] * 7  # repeated: counts once per batch
        if t % 4 == 0:
            batch += [6, 6]
        est.update(np.array(batch))
    pr = est.probability([5, 6, 7])
    assert pr[0] == 1.0
    assert pr[1] == pytest.approx(0.25, rel=1e-6)
    assert pr[2] == 1 / 201  # never seen: 1 / (t + 1)
    assert est.step == 200
    np.testing.assert_allclose(est.log_q([5, 6]), np.log([1.0, 0.25]), rtol=1e-6)
    assert est.log_q([5]).dtype == np.float32 and est.log_q([5], np.float64).dtype == np.float64
    assert est.probability(np.zeros((2, 3), np.int64)).shape == (2, 3)


def test_first_gaps_are_averaged_then_the_moving_average_follows_a_drift():
    # Period 2 for 400 steps, then period 5: with alpha = 0.05 the estimate moves to 1/5 within ~100
    # sightings (memory ~ 1 / alpha), as the moving average should.
    est = zn.FrequencyEstimator(1024, alpha=0.05)
    t = 0
    for t in range(1, 401):
        est.update([1] if t % 2 == 0 else [])
    assert est.probability([1])[0] == pytest.approx(0.5)
    for t in range(401, 401 + 5 * 150):
        est.update([1] if t % 5 == 0 else [])
    assert est.probability([1])[0] == pytest.approx(0.2, rel=0.01)


def test_threads_lose_no_update():
    est = zn.FrequencyEstimator(1 << 16, num_hashes=2)
    per_thread, nthreads = 300, 8

    def work(i: int) -> None:
        for _ in range(per_thread):
            est.update(np.array([1000, 2000 + i, 1000]))
            est.probability(np.arange(50))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert est.step == per_thread * nthreads
    assert est.probability([1000])[0] == 1.0  # in every batch
    st = est.state_dict()
    # Each thread's own id was seen in exactly its 300 batches (no update lost or torn), in every hash:
    # id 1000's cells in all 2400, each thread's id's cells in 300 (the ids share no cell at this size).
    for h in range(est.num_hashes):
        assert (st["seen"][h] == per_thread).sum() == nthreads
    assert int(st["seen"].sum()) == est.num_hashes * (per_thread * nthreads + per_thread * nthreads)


def test_identical_streams_give_identical_states_and_pickles_carry_them():
    p, stream = zipf_stream(5000, 1.0, 64, 200, seed=3)
    a = zn.FrequencyEstimator(1 << 12, num_hashes=3, alpha=0.02, seed=7)
    b = zn.FrequencyEstimator(1 << 12, num_hashes=3, alpha=0.02, seed=7)
    for ids in stream:
        a.update(ids)
        b.update(ids)
    sa, sb = a.state_dict(), b.state_dict()
    for k in ("last", "gap", "seen"):
        np.testing.assert_array_equal(sa[k], sb[k])
    ids = np.arange(5000)
    for c in (pickle.loads(pickle.dumps(a)), copy.copy(a), copy.deepcopy(a)):
        np.testing.assert_array_equal(c.probability(ids), a.probability(ids))
        assert c.step == a.step and c.seed == 7
    c = copy.copy(a)
    c.update([1])
    assert c.step == a.step + 1, "a copy is independent"
    # state_dict / load_state_dict: the resynchronisation path (broadcast from one rank).
    fresh = zn.FrequencyEstimator(1 << 12, num_hashes=3, alpha=0.02, seed=7)
    fresh.load_state_dict(sa)
    np.testing.assert_array_equal(fresh.probability(ids), a.probability(ids))
    other_seed = zn.FrequencyEstimator(1 << 12, num_hashes=3, alpha=0.02, seed=8)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(sa)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="num_buckets"):
        zn.FrequencyEstimator(0)
    with pytest.raises(ValueError, match="num_buckets"):
        zn.FrequencyEstimator(2**33)
    with pytest.raises(TypeError, match="num_buckets"):
        zn.FrequencyEstimator(1.5)
    with pytest.raises(ValueError, match="num_hashes"):
        zn.FrequencyEstimator(8, num_hashes=0)
    with pytest.raises(ValueError, match="num_hashes"):
        zn.FrequencyEstimator(8, num_hashes=17)
    for alpha in (0.0, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            zn.FrequencyEstimator(8, alpha=alpha)
    with pytest.raises(ValueError, match="seed"):
        zn.FrequencyEstimator(8, seed=-1)
    est = zn.FrequencyEstimator(64)
    with pytest.raises(ValueError, match="ids"):
        est.update([3, -1])
    assert est.step == 0, "a rejected update changes nothing"
    with pytest.raises(ValueError, match="ids"):
        est.probability([-5])
    with pytest.raises(TypeError, match="ids"):
        est.update([1.0, float("nan")])
    with pytest.raises(TypeError, match="ids"):
        est.probability(np.array([0.5]))
    with pytest.raises(ValueError, match="ids"):
        est.update(np.array([2**63], dtype=np.uint64))
    with pytest.raises(TypeError, match="dtype"):
        est.log_q([1], np.int32)
    st = est.state_dict()
    st["gap"] = st["gap"].copy()
    st["seen"] = st["seen"].copy()
    st["last"] = st["last"].copy()
    st["step"], st["seen"][0, 0], st["last"][0, 0], st["gap"][0, 0] = 1, 1, 1, np.nan
    with pytest.raises(ValueError, match="gap"):
        est.load_state_dict(st)
    st["gap"] = st["gap"][:, :3]
    with pytest.raises(ValueError, match="gap"):
        est.load_state_dict(st)
    est.update(np.array([], dtype=np.int64))  # an empty batch is a step with nothing in it
    assert est.step == 1


_RANK_SCRIPT = textwrap.dedent(
    """
    import sys, hashlib
    import numpy as np
    import torch, torch.distributed as dist
    import zipfnce as zn
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    est = zn.FrequencyEstimator(1 << 14, num_hashes=2, alpha=0.02)
    rng = np.random.default_rng(100 + rank)  # each rank its own local batches
    p = np.arange(1, 3001, dtype=np.float64) ** -1.1
    p /= p.sum()
    for step in range(200):
        local = torch.from_numpy(rng.choice(3000, size=32, p=p))
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        est.update(torch.cat(gathered).numpy())
        lq = est.log_q(local.numpy())  # this rank's key_log_q
    st = est.state_dict()
    h = hashlib.sha256(b"".join(st[k].tobytes() for k in ("last", "gap", "seen"))).hexdigest()
    digests = [None] * world
    dist.all_gather_object(digests, h)
    np.save(out, est.probability(np.arange(3000)))
    dist.destroy_process_group()
    assert len(set(digests)) == 1, digests
    print("OK", h)
    """
)


def test_ranks_that_update_with_the_gathered_ids_hold_identical_state(tmp_path):
    pytest.importorskip("torch")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    world = 2
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world), str(port), str(tmp_path / f"p{r}.npy")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        for r in range(world)
    ]
    outs = [pr.communicate(timeout=240)[0] for pr in procs]
    for pr, out in zip(procs, outs):
        assert pr.returncode == 0, out
        assert "OK" in out, out
    p0, p1 = (np.load(tmp_path / f"p{r}.npy") for r in range(world))
    np.testing.assert_array_equal(p0, p1)
