"""The batches of a list of cells, cell after cell, from one DataLoader whose items are whole batches.

A cell that can hand out a slice of its images at once (``read_batch(lo, hi)``:
the stored suites, whose pixels sit in one uint8 array or memory map) gives
each batch as one slice and one conversion. Any other cell is read image by
image and collated, as a DataLoader would. Batches never cross a cell.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate


class CellBatchReads(Dataset):
    """Item k: the k-th batch of the cells, in order (a Dataset of batches, for a DataLoader with batch_size=None)."""

    def __init__(self, datas: Sequence[Dataset], batch_size: int) -> None:
        self.datas = list(datas)
        self.spans = [
            (i, lo, min(lo + batch_size, len(data)))
            for i, data in enumerate(self.datas)
            for lo in range(0, len(data), batch_size)
        ]
        self.counts = [-(-len(data) // batch_size) for data in self.datas]  # batches per cell

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, k: int) -> Any:
        i, lo, hi = self.spans[k]
        data = self.datas[i]
        read = getattr(data, "read_batch", None)
        if read is not None:
            return read(lo, hi)
        return default_collate([data[j] for j in range(lo, hi)])


def cell_batch_loader(
    datas: Sequence[Dataset], batch_size: int, num_workers: int, pin_memory: bool
) -> tuple[DataLoader, list[int]]:
    """(a DataLoader over every batch of the cells in order, the number of batches of each cell)."""
    reads = CellBatchReads(datas, batch_size)
    # batch_size=None: each item is already a batch; workers read ahead across cell boundaries.
    loader = DataLoader(reads, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory)
    return loader, reads.counts


__all__ = ["CellBatchReads", "cell_batch_loader"]
