"""CIFAR-10 and CIFAR-100 in torchvision's standard folder layout."""

import os
import pickle
from pathlib import Path

from torchvision import datasets, transforms

from robust_csc.errors import RobustCSCError


class _ExistenceCheckMixin:
    """Checks only that the CIFAR files exist, skipping torchvision's md5 checks.

    torchvision compares every file with the md5 of the published archive, so any
    copy that is not byte-identical (the small files the tests write, a re-pickled
    copy) is refused. Callers opt into this with verify_checksums=False.
    """

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(folder, name)) for name in names)

    def _load_meta(self) -> None:
        # Same as torchvision's, minus the md5 check.
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _UncheckedCIFAR10(_ExistenceCheckMixin, datasets.CIFAR10):
    pass


class _UncheckedCIFAR100(_ExistenceCheckMixin, datasets.CIFAR100):
    pass


# name -> (display name, checked class, unchecked class)
_VARIANTS = {
    "cifar10": ("CIFAR-10", datasets.CIFAR10, _UncheckedCIFAR10),
    "cifar100": ("CIFAR-100", datasets.CIFAR100, _UncheckedCIFAR100),
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
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as exc:
        # Files exist but are not the published pickles (only reachable with verify_checksums=False).
        raise RobustCSCError(
            f"{title} files in {folder} are corrupt ({type(exc).__name__}); "
            "replace them with the extracted archive or download them again with --download"
        ) from exc
