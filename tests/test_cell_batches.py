"""The harness's batch reader: whole batches per item, one slice per batch for stored cells, never crossing a cell."""

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from robust_csc.data.corrupted import ArrayCell, load_cifar_c, pixels_to_batch, write_cifar_c
from robust_csc.evaluation.batches import CellBatchReads, cell_batch_loader


class Items(torch.utils.data.Dataset):
    """A cell without read_batch: item j of cell c is (a constant image, label c, index j)."""

    def __init__(self, cell: int, size: int) -> None:
        self.cell, self.size = cell, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, j: int):
        return torch.full((3, 2, 2), float(self.cell)), self.cell, j


def test_spans_cover_each_cell_once_in_order_and_never_cross_one():
    sizes = [7, 0, 3, 6, 1]
    reads = CellBatchReads([Items(c, n) for c, n in enumerate(sizes)], 3)
    assert reads.counts == [3, 0, 1, 2, 1] and len(reads) == sum(reads.counts)
    seen = []
    for k in range(len(reads)):
        images, labels, indices = reads[k]
        assert len(set(labels.tolist())) == 1 and 1 <= len(labels) <= 3  # one cell per batch
        assert torch.equal(images[:, 0, 0, 0], labels.float())
        seen.extend((int(c), int(j)) for c, j in zip(labels, indices))
    assert seen == [(c, j) for c, n in enumerate(sizes) for j in range(n)]


def test_pixels_to_batch_equals_converting_each_image_alone():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    batch = pixels_to_batch(pixels)
    assert batch.shape == (9, 3, 32, 32) and batch.dtype == torch.float32 and batch.is_contiguous()
    for i in range(9):  # torchvision's ToTensor is the reference
        from torchvision.transforms.functional import to_tensor

        assert torch.equal(batch[i], to_tensor(pixels[i]))


def test_stored_cells_read_as_slices_give_what_item_by_item_collation_gives(tmp_path):
    n = 11
    rng = np.random.default_rng(1)
    images = {c: rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8) for c in ("fog", "contrast")}
    labels = rng.integers(0, 10, size=n)
    folder = write_cifar_c(tmp_path / "C", "cifar10-c", images, labels)
    suite = load_cifar_c(folder, images_per_severity=n)
    cells = [suite.dataset(c, s) for c in suite.corruptions for s in (1, 4)]
    cells.append(ArrayCell(images["fog"][:n], labels))
    for workers in (0, 2):
        loader, counts = cell_batch_loader(cells, 4, num_workers=workers, pin_memory=False)
        batches = list(loader)
        assert counts == [3] * len(cells) and len(batches) == 3 * len(cells)
        reference = DataLoader(torch.utils.data.ConcatDataset(cells), batch_size=None)
        items = list(reference)
        k = 0
        for cell, count in zip(cells, counts):
            for b in range(count):
                want = default_collate([cell[j] for j in range(4 * b, min(4 * b + 4, n))])
                got = batches[k]
                assert all(torch.equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want))
                k += 1
        assert len(items) == len(cells) * n
