"""zipfnce: fast candidate sampling and sampled losses for huge output vocabularies.

``import zipfnce as zn``. Samplers (log-uniform, uniform, unigram, Zipf) with unique sampling and
expected-count correction, shared or per-row; TensorFlow drop-ins for its candidate samplers. The work runs
in a Rust core on the library's own threads, with the GIL released; results never depend on the number of
threads.
"""

from __future__ import annotations

from . import _core
from ._dropins import (
    all_candidate_sampler,
    compute_accidental_hits,
    fixed_unigram_candidate_sampler,
    log_uniform_candidate_sampler,
    uniform_candidate_sampler,
)
from ._freq import FrequencyEstimator
from ._full import FullSoftmaxGrad, full_softmax_loss, full_softmax_loss_and_grad
from ._infonce import InfoNCEGrad, info_nce_loss, info_nce_loss_and_grad
from ._losses import (
    LossAndGrad,
    SparseGrad,
    nce_loss,
    nce_loss_and_grad,
    sampled_softmax_loss,
    sampled_softmax_loss_and_grad,
)
from ._retrieval import MixedNegatives, mixed_negatives
from ._samplers import (
    CandidateSample,
    LearnedUnigramSampler,
    LogUniformSampler,
    UniformSampler,
    UnigramSampler,
    ZipfSampler,
)
from ._validate import MAX_THREADS, as_int

__version__ = "0.1.0"

__all__ = [
    "CandidateSample",
    "LogUniformSampler",
    "UniformSampler",
    "UnigramSampler",
    "ZipfSampler",
    "LearnedUnigramSampler",
    "log_uniform_candidate_sampler",
    "uniform_candidate_sampler",
    "fixed_unigram_candidate_sampler",
    "all_candidate_sampler",
    "compute_accidental_hits",
    "sampled_softmax_loss",
    "nce_loss",
    "sampled_softmax_loss_and_grad",
    "nce_loss_and_grad",
    "LossAndGrad",
    "SparseGrad",
    "InfoNCEGrad",
    "info_nce_loss",
    "info_nce_loss_and_grad",
    "FullSoftmaxGrad",
    "full_softmax_loss",
    "full_softmax_loss_and_grad",
    "MixedNegatives",
    "mixed_negatives",
    "FrequencyEstimator",
    "set_num_threads",
    "get_num_threads",
    "simd_level",
]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the library's parallel work (default: ``ZIPFNCE_NUM_THREADS``, else all cores)."""
    _core.set_num_threads(as_int(n, "n", lo=1, hi=MAX_THREADS))


def get_num_threads() -> int:
    """The number of threads the library's parallel work uses."""
    return int(_core.get_num_threads())


def simd_level() -> str:
    """The SIMD level of the native kernels in this process: ``"avx512"`` (AVX-512 F/DQ/VL with AVX2 and
    FMA), ``"avx2"`` (AVX2 and FMA) or ``"baseline"`` (the portable kernels: SSE2 on x86-64, NEON on
    aarch64, as the compiler vectorises them).

    It is the widest level the CPU has, narrowed by the environment variable ``ZIPFNCE_SIMD``
    (``avx2`` or ``baseline``), read once when the first kernel runs. Every level gives bit-identical
    results; only the speed differs."""
    return str(_core.simd_level())
