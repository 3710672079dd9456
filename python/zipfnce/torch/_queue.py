"""A FIFO queue of negatives from earlier batches (MoCo's queue, pytorch-metric-learning's ``CrossBatchMemory``,
Merlin's ``CachedCrossBatchSampler``), to pass to the InfoNCE loss as extra negatives."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from zipfnce._validate import as_int

__all__ = ["NegativeQueue"]


class NegativeQueue:
    """The last ``capacity`` keys of earlier batches, detached, with their ids and log-q, oldest first.

    ``NegativeQueue(capacity, dim, *, dtype=torch.float32, device=None)``. After each step,
    ``queue.enqueue(keys, ids, log_q)`` appends the batch's keys (``[n, dim]``, detached and converted to the
    queue's dtype and device), their item ids (int ``[n]``) and, optionally, their log sampling probabilities
    (``[n]``; give them on every call or on none); the oldest entries beyond ``capacity`` drop out. Before
    the next step, pass the queue to the loss::

        loss = znt.info_nce_loss(q, k, key_ids=ids, **queue.kwargs())   # negatives, negative_ids, negative_log_q

    The ids mask a queued key equal to a row's own positive (an accidental hit). Queued keys come from an
    older encoder and carry no gradient. A log-q stored with a key is the correction it had when it was
    enqueued (``log P_B`` from a frequency estimate, for example); the queue adds none of its own, since its
    entries are the earlier batches' keys and follow the same law as in-batch keys.

    The properties return tensors that later calls do not modify (``enqueue`` builds new ones: one copy of
    the queue per step), so they are safe to keep for a backward pass.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> None:
        self._capacity = as_int(capacity, "capacity", lo=1)
        self._dim = as_int(dim, "dim", lo=1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
        self._dtype = dtype
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self._keys = torch.empty((0, self._dim), dtype=dtype, device=self._device)
        self._ids = torch.empty((0,), dtype=torch.int64, device=self._device)
        self._log_q: Optional[torch.Tensor] = None
        self._has_log_q: Optional[bool] = None  # fixed by the first enqueue

    @property
    def capacity(self) -> int:
        """The most entries the queue holds."""
        return self._capacity

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self._dim

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return (
            f"NegativeQueue(capacity={self._capacity}, dim={self._dim}, dtype={self._dtype}, len={len(self)})"
        )

    def enqueue(self, keys: Any, ids: Any, log_q: Any = None) -> None:
        """Append a batch's keys ``[n, dim]``, ids ``[n]`` and optional log-q ``[n]``, dropping the oldest
        entries beyond ``capacity`` (with ``n > capacity`` only the batch's last ``capacity`` stay)."""
        k = torch.as_tensor(keys)
        if k.ndim != 2 or k.shape[1] != self._dim:
            raise ValueError(
                f"keys: must have shape [n, {self._dim}] (the queue's dim), got {tuple(k.shape)}"
            )
        if not k.dtype.is_floating_point:
            raise TypeError(f"keys: expected a floating-point tensor, got {k.dtype}")
        n = k.shape[0]
        i = torch.as_tensor(ids)
        if i.dtype.is_floating_point or i.dtype.is_complex or i.dtype == torch.bool:
            raise TypeError(f"ids: expected integer ids, got {i.dtype}")
        if tuple(i.shape) != (n,):
            raise ValueError(f"ids: must have shape ({n},) (one per key), got {tuple(i.shape)}")
        has = log_q is not None
        if self._has_log_q is not None and has != self._has_log_q:
            raise ValueError(
                "log_q: give it on every enqueue or on none (the queue "
                + ("holds" if self._has_log_q else "has no")
                + " log-q for its entries)"
            )
        lq = None
        if has:
            lq = torch.as_tensor(log_q)
            if not lq.dtype.is_floating_point:
                lq = lq.to(self._dtype)
            if tuple(lq.shape) != (n,):
                raise ValueError(f"log_q: must have shape ({n},) (one per key), got {tuple(lq.shape)}")
            if not bool(torch.isfinite(lq).all()):
                raise ValueError("log_q: must be finite")
        kd = k.detach().to(device=self._device, dtype=self._dtype)
        if not bool(torch.isfinite(kd).all()):
            raise ValueError("keys: must be finite")
        keep = self._capacity
        self._keys = torch.cat([self._keys, kd])[-keep:].contiguous()
        self._ids = torch.cat([self._ids, i.detach().to(device=self._device, dtype=torch.int64)])[-keep:]
        if lq is not None:
            old = (
                self._log_q
                if self._log_q is not None
                else torch.empty(0, dtype=self._dtype, device=self._device)
            )
            self._log_q = torch.cat([old, lq.detach().to(device=self._device, dtype=self._dtype)])[-keep:]
        self._has_log_q = has

    def clear(self) -> None:
        """Empty the queue (capacity, dim and dtype stay; log-q may be given or not again)."""
        self._keys = self._keys[:0]
        self._ids = self._ids[:0]
        self._log_q = None
        self._has_log_q = None

    @property
    def negatives(self) -> Optional[torch.Tensor]:
        """The queued keys ``[len, dim]``, oldest first (None while empty)."""
        return self._keys if len(self) else None

    @property
    def negative_ids(self) -> Optional[torch.Tensor]:
        """Their ids, int64 ``[len]`` (None while empty)."""
        return self._ids if len(self) else None

    @property
    def negative_log_q(self) -> Optional[torch.Tensor]:
        """Their log-q ``[len]`` (None while empty or when the queue holds none)."""
        return self._log_q if len(self) and self._log_q is not None else None

    def kwargs(self) -> Dict[str, Any]:
        """``negatives``, ``negative_ids`` and ``negative_log_q`` for the InfoNCE loss (all None while empty)."""
        return {
            "negatives": self.negatives,
            "negative_ids": self.negative_ids,
            "negative_log_q": self.negative_log_q,
        }
