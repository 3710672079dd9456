# Type stub of the native module (rust/py/mod.rs). The public API lives in the Python files beside it.
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt
from typing_extensions import final

# Limits of the core (rust/py/mod.rs exports them; python/zipfnce/_validate.py reads them from here).
MAX_RANGE: int
MAX_SAMPLED: int
MAX_UNIGRAM: int
MAX_THREADS: int

@final
class Sampler:
    @staticmethod
    def log_uniform(range_max: int, seed: Optional[int] = None, tf_formula: bool = False) -> Sampler: ...
    @staticmethod
    def uniform(range_max: int, seed: Optional[int] = None) -> Sampler: ...
    @staticmethod
    def zipf(range_max: int, exponent: float, seed: Optional[int] = None) -> Sampler: ...
    @staticmethod
    def unigram(weights: npt.NDArray[np.float64], seed: Optional[int] = None) -> Sampler: ...
    @staticmethod
    def unigram_tf(
        unigrams: npt.NDArray[np.float64],
        distortion: float,
        num_reserved_ids: int,
        num_shards: int,
        shard: int,
        float32: bool,
        seed: Optional[int] = None,
    ) -> Sampler: ...
    @property
    def range_max(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def seeded(self) -> bool: ...
    @property
    def stream_state(self) -> Tuple[int, int, int, bool]: ...
    def spawn(self, n: int) -> List[Sampler]: ...
    def for_worker(self, worker_seed: int) -> Sampler: ...
    def after_fork(self) -> Optional[Sampler]: ...
    def __copy__(self) -> Sampler: ...
    def __deepcopy__(self, memo: Any) -> Sampler: ...
    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]: ...
    def probability(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]: ...
    def expected_count(
        self, ids: npt.NDArray[np.int64], num_sampled: int, num_tries: int
    ) -> npt.NDArray[np.float32]: ...
    def sample(
        self,
        num_sampled: int,
        unique: bool,
        true_classes: Optional[npt.NDArray[np.int64]],
        remove_true: bool,
        seed: Optional[int],
    ) -> Tuple[npt.NDArray[np.int64], Optional[npt.NDArray[np.float32]], npt.NDArray[np.float32], int]: ...
    def sample_per_row(
        self,
        true_classes: npt.NDArray[np.int64],
        num_sampled: int,
        unique: bool,
        remove_true: bool,
        seed: Optional[int],
    ) -> Tuple[
        npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]
    ]: ...

def _restore_sampler(
    kind: str,
    range_max: int,
    exponent: float,
    tf: bool,
    weights: Optional[npt.NDArray[np.float64]],
    total_f32: Optional[float],
    base: int,
    calls: int,
    spawned: int,
    seeded: bool,
) -> Sampler: ...
def parse_vocab(text: str) -> npt.NDArray[np.float64]: ...
def compute_accidental_hits(
    true_classes: npt.NDArray[np.int64], sampled_candidates: npt.NDArray[np.int64], num_true: int
) -> Tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_level() -> str: ...
def available_memory() -> Optional[int]: ...

_F = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]

def sampled_loss(
    nce: bool,
    weights: _F,
    biases: Optional[_F],
    labels: npt.NDArray[np.int64],
    inputs: _F,
    sampled: npt.NDArray[np.int64],
    true_expected: _F,
    sampled_expected: _F,
    remove_accidental_hits: bool,
    subtract_log_q: bool,
    focal_gamma: float,
    want_grad: bool,
    grad_loss: Optional[_F] = None,
    storage: Optional[str] = None,
    num_hard_negatives: Optional[int] = None,
) -> Tuple[_F, ...]: ...

INFO_NCE_MAX_LOGITS_BYTES: int

def info_nce(
    query: npt.NDArray[np.floating],
    keys: npt.NDArray[np.floating],
    negatives: Optional[npt.NDArray[np.floating]],
    temperature: float,
    key_log_q: Optional[npt.NDArray[np.floating]],
    negative_log_q: Optional[npt.NDArray[np.floating]],
    key_ids: Optional[npt.NDArray[np.int64]],
    negative_ids: Optional[npt.NDArray[np.int64]],
    symmetric: bool,
    focal_gamma: float,
    grad_loss: Optional[npt.NDArray[np.floating]],
    want_grad: bool,
    max_logits_bytes: int,
    storage: Optional[str] = None,
) -> Any: ...

FULL_SOFTMAX_MAX_LOGITS_BYTES: int

def full_softmax(
    weights: npt.NDArray[np.floating],
    biases: Optional[npt.NDArray[np.floating]],
    labels: npt.NDArray[np.int64],
    inputs: npt.NDArray[np.floating],
    ignore_index: Optional[int],
    label_smoothing: float,
    grad_loss: Optional[npt.NDArray[np.floating]],
    want_grad: bool,
    max_logits_bytes: int,
) -> Any: ...
def info_nce_hard(
    query: npt.NDArray[np.floating],
    keys: npt.NDArray[np.floating],
    negatives: Optional[npt.NDArray[np.floating]],
    temperature: float,
    key_log_q: Optional[npt.NDArray[np.floating]],
    negative_log_q: Optional[npt.NDArray[np.floating]],
    key_ids: Optional[npt.NDArray[np.int64]],
    negative_ids: Optional[npt.NDArray[np.int64]],
    focal_gamma: float,
    num_hard_negatives: int,
    grad_loss: Optional[npt.NDArray[np.floating]],
    want_grad: bool,
) -> Any: ...

# Retrieval toolbox (rust/py/retrieval.rs).
FREQ_MAX_BUCKETS: int
FREQ_MAX_HASHES: int

@final
class FrequencyEstimator:
    def __new__(cls, num_buckets: int, num_hashes: int, alpha: float, seed: int) -> FrequencyEstimator: ...
    def update(self, ids: npt.NDArray[np.int64]) -> None: ...
    def probability(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]: ...
    @property
    def num_buckets(self) -> int: ...
    @property
    def num_hashes(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def step(self) -> int: ...
    def state(
        self,
    ) -> Tuple[int, npt.NDArray[np.uint64], npt.NDArray[np.float32], npt.NDArray[np.uint32]]: ...
    def set_state(
        self,
        step: int,
        last: npt.NDArray[np.uint64],
        gap: npt.NDArray[np.float32],
        seen: npt.NDArray[np.uint32],
    ) -> None: ...
    def __copy__(self) -> FrequencyEstimator: ...
    def __deepcopy__(self, memo: Any) -> FrequencyEstimator: ...
    def __reduce__(self) -> Any: ...

def _restore_frequency_estimator(
    num_buckets: int,
    num_hashes: int,
    alpha: float,
    seed: int,
    step: int,
    last: npt.NDArray[np.uint64],
    gap: npt.NDArray[np.float32],
    seen: npt.NDArray[np.uint32],
) -> FrequencyEstimator: ...

@final
class LearnedSampler:
    def __new__(cls, range_max: int, seed: Optional[int] = None) -> LearnedSampler: ...
    @property
    def range_max(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def seeded(self) -> bool: ...
    @property
    def stream_state(self) -> Tuple[int, int, int, bool]: ...
    @property
    def total_count(self) -> int: ...
    def update(self, ids: npt.NDArray[np.int64]) -> None: ...
    def counts(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]: ...
    def probability(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]: ...
    def expected_count(
        self, ids: npt.NDArray[np.int64], num_sampled: int, num_tries: int
    ) -> npt.NDArray[np.float32]: ...
    def sample(
        self,
        num_sampled: int,
        unique: bool,
        true_classes: Optional[npt.NDArray[np.int64]],
        remove_true: bool,
        seed: Optional[int],
    ) -> Tuple[Any, ...]: ...
    def sample_per_row(
        self,
        true_classes: npt.NDArray[np.int64],
        num_sampled: int,
        unique: bool,
        remove_true: bool,
        seed: Optional[int],
    ) -> Tuple[Any, ...]: ...
    def spawn(self, n: int) -> List[LearnedSampler]: ...
    def for_worker(self, worker_seed: int) -> LearnedSampler: ...
    def after_fork(self) -> Optional[LearnedSampler]: ...
    def __copy__(self) -> LearnedSampler: ...
    def __deepcopy__(self, memo: Any) -> LearnedSampler: ...
    def __reduce__(self) -> Any: ...

def _restore_learned_sampler(
    range_max: int,
    ids: npt.NDArray[np.int64],
    extras: npt.NDArray[np.uint64],
    base: int,
    calls: int,
    spawned: int,
    seeded: bool,
) -> LearnedSampler: ...
