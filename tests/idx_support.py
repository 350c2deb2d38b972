"""IDX files written in the exact published format (big-endian header, unsigned bytes, optionally gzipped)."""

import gzip
import struct
from pathlib import Path

import numpy as np

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_images(images: np.ndarray, magic: int = 2051, count: int | None = None) -> bytes:
    n, rows, cols = images.shape
    header = struct.pack(">IIII", magic, n if count is None else count, rows, cols)
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, magic: int = 2049, count: int | None = None) -> bytes:
    return struct.pack(">II", magic, len(labels) if count is None else count) + labels.astype(np.uint8).tobytes()


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> Path:
    """Write a split's two files into folder (as .gz unless gz=False); returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = NAMES[split]
    for name, data in ((image_name, idx_images(images)), (label_name, idx_labels(labels))):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / name).write_bytes(data)
    return folder


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random 28x28 images with a dark border like the real ones, and labels 0..9 (each class when n >= 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def write_fake_dataset(root: Path, folder_name: str = "FashionMNIST", n_train: int = 30, n_test: int = 20,
                       seed: int = 0) -> tuple[Path, dict]:
    """Both splits in torchvision's layout root/<folder_name>/raw; returns (raw folder, {split: (images, labels)})."""
    raw = root / folder_name / "raw"
    splits = {"train": fake_split(n_train, seed), "test": fake_split(n_test, seed + 1)}
    for split, (images, labels) in splits.items():
        write_split(raw, split, images, labels)
    return raw, splits
