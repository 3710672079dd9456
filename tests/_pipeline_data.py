"""Objects that DataLoader workers unpickle under the spawn and forkserver start methods: they must live in
an importable module, not in a test function. Nothing here imports torch."""

from __future__ import annotations

from typing import Any


class CandidateDataset:
    """A map-style dataset whose items are negatives drawn by a sampler it holds (as a training data set
    would draw them per example), tagged with the id of the worker that drew them."""

    def __init__(self, sampler: Any, n: int = 8, per_item: int = 16) -> None:
        self.sampler, self.n, self.per_item = sampler, n, per_item

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        return (-1 if info is None else info.id), self.sampler.sample(self.per_item, unique=False).ids


def run_loader(sampler: Any, method: str, torch_seed: int, workers: int = 2, n: int = 8) -> dict:
    """Each worker's draws, in order: {worker id: [ids of item 0, ids of item 1, ...]}."""
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(torch_seed)
    loader = DataLoader(
        CandidateDataset(sampler, n), batch_size=None, num_workers=workers, multiprocessing_context=method
    )
    out: dict = {}
    for wid, ids in loader:
        out.setdefault(int(wid), []).append(ids.numpy().copy())
    return out
