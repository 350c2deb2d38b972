"""CIFAR-10 and CIFAR-100 in torchvision's standard folder layout."""

import os
from pathlib import Path

import numpy as np
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset

from robust_csc.errors import RobustCSCError
from robust_csc.safe_pickle import load_numpy_pickle


class _SafeLoadMixin:
    """torchvision's CIFAR reading, with the batches unpickled by robust_csc.safe_pickle.

    torchvision reads the batches with plain pickle.load, which runs any code a
    file names; a folder whose files fail the md5 check (verify_checksums=False)
    or an md5 collision would run it. This __init__ is torchvision's, step for
    step, with load_numpy_pickle in place of pickle.load and the batches'
    layout checked.
    """

    def __init__(self, root, train: bool = True, transform=None, target_transform=None, download: bool = False) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        data, self.targets = [], []
        for file_name, _ in self.train_list if train else self.test_list:
            entry = self._read(file_name)
            labels = entry.get("labels", entry.get("fine_labels"))
            rows = entry.get("data")
            if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
                raise self._layout(file_name, "its data is not a uint8 array of 3072-byte rows")
            if not isinstance(labels, list) or len(labels) != len(rows) or not all(type(v) is int for v in labels):
                raise self._layout(file_name, "its labels are not one integer per image")
            data.append(rows)
            self.targets.extend(labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        self._load_meta()

    def _read(self, file_name: str) -> dict:
        path = os.path.join(self.root, self.base_folder, file_name)
        entry = load_numpy_pickle(
            path, what=f"CIFAR file {path}", fix="replace the folder with the extracted archive or download it again"
        )
        if not isinstance(entry, dict):
            raise self._layout(file_name, "it holds no dict")
        return entry

    def _layout(self, file_name: str, problem: str) -> RobustCSCError:
        path = os.path.join(self.root, self.base_folder, file_name)
        return RobustCSCError(
            f"CIFAR file {path} is not a CIFAR batch ({problem}); replace the folder with the extracted archive"
        )

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if self.verify_checksums and not check_integrity(path, self.meta["md5"]):
            raise RuntimeError("Dataset metadata file not found or corrupted. You can use download=True to download it")
        names = self._read(self.meta["filename"]).get(self.meta["key"])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise self._layout(self.meta["filename"], f"its {self.meta['key']} are not a list of names")
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _ExistenceCheckMixin:
    """Checks only that the CIFAR files exist, skipping torchvision's md5 checks.

    torchvision compares every file with the md5 of the published archive, so any
    copy that is not byte-identical (the small files the tests write, a re-pickled
    copy) is refused. Callers opt into this with verify_checksums=False.
    """

    verify_checksums = False

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(folder, name)) for name in names)


class _CheckedCIFAR10(_SafeLoadMixin, datasets.CIFAR10):
    verify_checksums = True


class _CheckedCIFAR100(_SafeLoadMixin, datasets.CIFAR100):
    verify_checksums = True


class _UncheckedCIFAR10(_ExistenceCheckMixin, _SafeLoadMixin, datasets.CIFAR10):
    pass


class _UncheckedCIFAR100(_ExistenceCheckMixin, _SafeLoadMixin, datasets.CIFAR100):
    pass


# name -> (display name, checked class, unchecked class)
_VARIANTS = {
    "cifar10": ("CIFAR-10", _CheckedCIFAR10, _UncheckedCIFAR10),
    "cifar100": ("CIFAR-100", _CheckedCIFAR100, _UncheckedCIFAR100),
}


def cifar_transform(train: bool) -> transforms.Compose:
    """The SDNet recipe's augmentation for training; plain conversion otherwise."""
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose([*steps, transforms.ToTensor()])


def load_cifar(
    name: str,
    root: str | Path,
    train: bool,
    train_transform: bool = False,
    download: bool = False,
    verify_checksums: bool = True,
) -> datasets.CIFAR10:
    """CIFAR "cifar10" or "cifar100" from `root/<base folder>`; images (3, 32, 32) in [0, 1]."""
    title, checked, unchecked = _VARIANTS[name]
    folder = Path(root) / checked.base_folder
    if not download and not folder.is_dir():
        raise RobustCSCError(
            f"{title} folder {folder} not found; pass --download (download=True) "
            "or put the extracted archive there"
        )
    cls = checked if verify_checksums else unchecked
    try:
        return cls(str(root), train=train, transform=cifar_transform(train_transform), download=download)
    except RuntimeError as exc:
        # torchvision's "Dataset not found or corrupted": missing files or an md5 mismatch.
        raise RobustCSCError(
            f"{title} files in {folder} are missing or fail their checksums; download them again "
            "with --download into an empty folder, or pass verify_checksums=False for a copy you trust"
        ) from exc
    except OSError as exc:
        if download:  # urllib errors are OSErrors
            raise RobustCSCError(
                f"could not download {title} into {folder} ({exc}); check the network connection "
                "or put the extracted archive there"
            ) from exc
        raise RobustCSCError(
            f"could not read {title} files in {folder} ({exc}); fix their permissions or download them again"
        ) from exc
    except (EOFError, KeyError, ValueError, TypeError) as exc:
        # Files exist but are not the published pickles (only reachable with verify_checksums=False).
        raise RobustCSCError(
            f"{title} files in {folder} are corrupt ({type(exc).__name__}); "
            "replace them with the extracted archive or download them again with --download"
        ) from exc
