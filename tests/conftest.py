import os

# Keep TensorFlow quiet and on the CPU when parity tests import it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def spy_sampled_loss(monkeypatch, record):
    """Route the native sampled-loss call through ``record(name, weights)``, ``name`` being the public NumPy
    function that call serves (``sampled_softmax_loss``, ``nce_loss_and_grad``, ...): every front end reaches
    the core through it, once per native computation."""
    import zipfnce as zn

    orig = zn._core.sampled_loss

    def spy(
        nce, weights, biases, labels, inputs, sampled, te, se, hits, log_q, gamma, want_grad, grad_loss=None,
        **storage,
    ):  # fmt: skip
        record(("nce_loss" if nce else "sampled_softmax_loss") + ("_and_grad" if want_grad else ""), weights)
        return orig(
            nce, weights, biases, labels, inputs, sampled, te, se, hits, log_q, gamma, want_grad, grad_loss,
            **storage,
        )  # fmt: skip

    monkeypatch.setattr(zn._core, "sampled_loss", spy)
