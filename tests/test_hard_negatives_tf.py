"""Hard-negative mining against TFRS / keras-rs semantics, written with the installed TensorFlow's own ops: the
Retrieval task's steps (scores / temperature, minus log q, accidental hits pushed to a large negative value,
HardNegativeMining's ``top_k(logits + labels * big, min(h + 1, W))`` then a gather, softmax cross-entropy),
values and GradientTape gradients; and the zipfnce.tf adapter's option."""

from __future__ import annotations

import numpy as np
import pytest
import zipfnce as zn

tf = pytest.importorskip("tensorflow")
zntf = pytest.importorskip("zipfnce.tf")

BIG = float(np.finfo(np.float32).max / 100.0)


def _data(b=24, n=10, d=5, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, d))
    k = rng.normal(size=(b, d))
    neg = rng.normal(size=(n, d))
    kq = rng.normal(size=b) - 3
    nq = rng.normal(size=n) - 3
    kid = rng.integers(0, 8, b)  # frequent repeats: accidental hits in most rows
    nid = rng.integers(0, 8, n)
    return q, k, neg, kq, nq, kid, nid


def _tf_pipeline(q, k, neg, kq, nq, kid, nid, h, t):
    """The TFRS Retrieval-task computation with hard-negative mining, in plain TensorFlow ops (float64)."""
    qv, kv, nv = (tf.Variable(a) for a in (q, k, neg))
    b = q.shape[0]
    with tf.GradientTape() as tape:
        cand = tf.concat([kv, nv], 0)
        scores = tf.matmul(qv, cand, transpose_b=True) / t
        scores = scores - tf.constant(np.r_[kq, nq])[None, :]
        w = int(scores.shape[1])
        labels = tf.eye(b, w, dtype=tf.float64)
        ids = tf.constant(np.r_[kid, nid])
        hits = tf.cast(tf.equal(tf.constant(kid)[:, None], ids[None, :]), tf.float64) * (1.0 - labels)
        scores = scores + hits * (-BIG)
        kk = min(h + 1, w)
        _, cols = tf.math.top_k(scores + labels * BIG, k=kk)
        logits = tf.gather(scores, cols, batch_dims=1)
        lab = tf.gather(labels, cols, batch_dims=1)
        loss = tf.nn.softmax_cross_entropy_with_logits(labels=lab, logits=logits)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, [qv, kv, nv])
    return loss.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("h", [1, 3, 12, 33])
def test_matches_tfrs_hard_negative_mining_semantics(h):
    q, k, neg, kq, nq, kid, nid = _data()
    want_loss, want_grads = _tf_pipeline(q, k, neg, kq, nq, kid, nid, h, 0.25)
    got = zn.info_nce_loss_and_grad(
        q, k, negatives=neg, temperature=0.25, key_log_q=kq, negative_log_q=nq, key_ids=kid, negative_ids=nid,
        num_hard_negatives=h,
    )  # fmt: skip
    np.testing.assert_allclose(got.loss, want_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got[1:], want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_tf_adapter_passes_num_hard_negatives():
    q, k, neg, kq, nq, kid, nid = _data()
    kw = dict(temperature=0.25, key_log_q=kq, negative_log_q=nq, key_ids=kid, negative_ids=nid)
    want = zn.info_nce_loss_and_grad(q, k, negatives=neg, num_hard_negatives=4, **kw)
    qv, kv, nv = (tf.Variable(a) for a in (q, k, neg))
    with tf.GradientTape() as tape:
        loss = zntf.info_nce_loss(qv, kv, negatives=nv, num_hard_negatives=4, **kw)
        total = tf.reduce_sum(loss)
    grads = tape.gradient(total, [qv, kv, nv])
    np.testing.assert_allclose(loss.numpy(), want.loss, rtol=1e-12)
    for g, w in zip(grads, want[1:]):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="num_hard_negatives"):
        zntf.info_nce_loss(qv, kv, negatives=nv, num_hard_negatives=34, **kw)
