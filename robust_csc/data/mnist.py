"""MNIST and Fashion-MNIST from their four IDX files, shown to the models as 3x32x32 images.

Where the files are read from (the first folder that holds a split's two files,
each either unpacked or as the published .gz):

* ``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``: torchvision's layout,
  which ``--download`` (torchvision's own download) fills;
* ``<root>/MNIST``, ``<root>/FashionMNIST`` or ``<root>`` itself;
* with no root given: ``./data`` as above, then Debian's package folder
  (``apt-get install dataset-fashion-mnist``; ``dpkg -L`` says where it put
  the files, /usr/share/datasets/fashion-mnist today). Debian has no MNIST package.

How the models see the images: each 28x28 grey image is padded with 2 black
pixels on every side to 32x32 (the background of both data sets is black, so
nothing is invented at the edges and no pixel is resampled) and its grey
channel is repeated 3 times, so the CIFAR-stem models take it as it is. Every
consumer goes through this one view: training, evaluation, the generated
suites and the stored suites that ``robust-csc corrupt`` writes, which are
corrupted with the CIFAR profile in this 32x32 RGB form.

Checks (all before any image is handed out): the IDX magic numbers (2051
images, 2049 labels), big-endian counts that agree between the two files and
with the bytes present, 28x28 images, labels 0..9 and, unless
verify_checksums=False, the published counts (60,000 / 10,000) and the MD5 of
every file's unpacked bytes. A folder of the other data set (Fashion-MNIST
given as MNIST or the reverse) is refused by those MD5s with a line that
names the data set the files belong to.

Why the MD5 of the unpacked bytes and not of the .gz: torchvision lists the
MD5s of the published .gz archives, but Debian's package re-gzips them with
another header (no file name, another time stamp), so its .gz files differ
from the published ones byte for byte while their content is identical (with
the original header put back, Debian's files hash to the published MD5s).
The content MD5s below were checked that way for Fashion-MNIST, and match
those listed for MNIST's unpacked files by several public projects.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
import urllib.error
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from robust_csc.errors import RobustCSCError

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
RAW_SIDE = 28
PAD = 2
IMAGE_SIZE = RAW_SIDE + 2 * PAD  # 32: what the CIFAR stems take
NUM_CLASSES = 10
SPLITS = ("train", "test")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path("data")


@dataclass(frozen=True)
class _Variant:
    key: str  # the name load_dataset takes
    title: str
    torchvision_class: type  # its download and its folder name (root/<class name>/raw)
    counts: dict[str, int]  # published images per split
    md5: dict[str, str]  # unpacked file name -> MD5 of its bytes
    debian_package: str | None
    mean: float  # of the padded 32x32 training images (all three channels alike)
    std: float


_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# The widely used 28x28 MNIST statistics (0.1307, 0.3081), carried over to the
# padded image: 784 of its 1024 pixels keep their values, 240 are 0.
_MNIST_MEAN = 0.1307 * 784 / 1024
_MNIST_STD = ((0.3081**2 + 0.1307**2) * 784 / 1024 - _MNIST_MEAN**2) ** 0.5

VARIANTS = {
    "mnist": _Variant(
        "mnist", "MNIST", datasets.MNIST, {"train": 60000, "test": 10000},
        {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        None, _MNIST_MEAN, _MNIST_STD,
    ),
    "fashion-mnist": _Variant(
        "fashion-mnist", "Fashion-MNIST", datasets.FashionMNIST, {"train": 60000, "test": 10000},
        {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        # Computed over the 60,000 padded training images of the published files.
        DEBIAN_PACKAGE, 0.21900, 0.33181,
    ),
}
MNIST_NAMES = tuple(VARIANTS)
# MD5 of any published file -> (data set title, file name): says whose files a folder holds.
_KNOWN_FILES = {md5: (v.title, name) for v in VARIANTS.values() for name, md5 in v.md5.items()}


def _variant(name: str) -> _Variant:
    key = name.lower()
    if key not in VARIANTS:
        raise RobustCSCError(f"unknown IDX data set {name!r}; use one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def mnist_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of the padded training images, for model normalisation."""
    variant = _variant(name)
    return (variant.mean,) * 3, (variant.std,) * 3


# ---------------------------------------------------------------- finding the files


@lru_cache(maxsize=1)
def debian_folder() -> Path | None:
    """The folder of Debian's Fashion-MNIST package, as `dpkg -L` lists it; None when not installed."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""  # no dpkg (not Debian): the usual place may still hold a copy
    for line in listing.splitlines():
        if line.strip().endswith("/t10k-images-idx3-ubyte.gz"):
            return Path(line.strip()).parent
    return DEBIAN_FOLDER if (DEBIAN_FOLDER / "t10k-images-idx3-ubyte.gz").is_file() else None


def _candidates(variant: _Variant, root: Path | None) -> list[Path]:
    base = root if root is not None else DEFAULT_ROOT
    folder = variant.torchvision_class.__name__  # MNIST, FashionMNIST
    found = [base / folder / "raw", base / folder, base]
    if root is None and variant.debian_package is not None:
        system = debian_folder()
        if system is not None:
            found.append(system)
    return found


def _file_in(folder: Path, name: str) -> Path | None:
    """The unpacked file, else the .gz, else None."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _how_to_get(variant: _Variant, root: Path) -> str:
    debian = f"install Debian's package (apt-get install {variant.debian_package}) or " if variant.debian_package else ""
    return (
        f"{debian}pass --download (torchvision's download into {root}, needs the internet), "
        "or point --data-root to a folder holding the four IDX files"
    )


def find_split_files(name: str, split: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """(images file, labels file) of a split: the first searched folder that holds both (see the module docstring)."""
    variant = _variant(name)
    root = Path(root).expanduser() if root is not None else None
    image_name, label_name = _FILES[split]
    searched = _candidates(variant, root)
    for folder in searched:
        images, labels = _file_in(folder, image_name), _file_in(folder, label_name)
        if images is not None and labels is not None:
            return images, labels
    shown = ", ".join(str(p) for p in dict.fromkeys(searched))
    raise RobustCSCError(
        f"{variant.title} files {image_name}[.gz] and {label_name}[.gz] not found in {shown}; "
        + _how_to_get(variant, root if root is not None else DEFAULT_ROOT)
    )


# ---------------------------------------------------------------- reading IDX files


def _read_bytes(path: Path, title: str) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise RobustCSCError(
            f"{title} file {path} is not a complete gzip file ({type(exc).__name__}); "
            "replace it with the published file or download it again"
        ) from None
    except OSError as exc:
        raise RobustCSCError(
            f"could not read {title} file {path} ({exc.strerror or exc}); fix its permissions or download it again"
        ) from None


def _parse_idx(data: bytes, path: Path, magic: int, title: str) -> tuple[int, np.ndarray]:
    """(count, payload) of an IDX file whose header must start with `magic`; the payload is checked for length."""
    fix = "replace it with the published file or download it again"
    if len(data) < 8:
        raise RobustCSCError(f"{title} file {path} holds {len(data)} bytes, too few for an IDX header; {fix}")
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        kinds = {IMAGE_MAGIC: "an image file", LABEL_MAGIC: "a label file"}
        what = f" ({kinds[found]})" if found in kinds else ""
        raise RobustCSCError(
            f"{title} file {path} has the magic number {found}{what}, not {magic} ({kinds[magic]}); {fix}"
        )
    header = 16 if magic == IMAGE_MAGIC else 8
    if len(data) < header:
        raise RobustCSCError(f"{title} file {path} ends inside its IDX header; {fix}")
    per_item = 1
    if magic == IMAGE_MAGIC:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (RAW_SIDE, RAW_SIDE):
            raise RobustCSCError(
                f"{title} file {path} holds {rows}x{cols} images, not {RAW_SIDE}x{RAW_SIDE}; {fix}"
            )
        per_item = RAW_SIDE * RAW_SIDE
    expected = header + count * per_item
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise RobustCSCError(
            f"{title} file {path} {problem}: its header promises {count} items ({expected} bytes) "
            f"but it holds {len(data)} bytes; {fix}"
        )
    return count, np.frombuffer(data, dtype=np.uint8, offset=header)


def _check_md5(data: bytes, path: Path, variant: _Variant, file_name: str) -> None:
    got = hashlib.md5(data).hexdigest()
    if got == variant.md5[file_name]:
        return
    owner = _KNOWN_FILES.get(got)
    if owner is not None and owner[0] != variant.title:
        other = next(v for v in VARIANTS.values() if v.title == owner[0])
        raise RobustCSCError(
            f"{path} is {owner[0]}'s {owner[1]} (by its published MD5), not {variant.title}'s; "
            f"pass --dataset {other.key} or point --data-root to {variant.title}'s files"
        )
    raise RobustCSCError(
        f"{variant.title} file {path} has MD5 {got} (of its unpacked bytes), not the published "
        f"{variant.md5[file_name]}; replace it with the published file or pass --no-verify-checksums "
        "(verify_checksums=False) for a copy you trust"
    )


@lru_cache(maxsize=8)
def _read_split_cached(
    name: str, split: str, images_path: Path, labels_path: Path, stamp: tuple, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    del stamp  # part of the cache key only: a changed file is read again
    variant = _variant(name)
    title = variant.title
    image_name, label_name = _FILES[split]
    image_bytes = _read_bytes(images_path, title)
    label_bytes = _read_bytes(labels_path, title)
    n_images, pixels = _parse_idx(image_bytes, images_path, IMAGE_MAGIC, title)
    n_labels, labels = _parse_idx(label_bytes, labels_path, LABEL_MAGIC, title)
    published = variant.counts[split]
    if verify:
        for path, count in ((images_path, n_images), (labels_path, n_labels)):
            if count != published:
                raise RobustCSCError(
                    f"{title} file {path} holds {count} items, not the published {published} of the {split} split; "
                    "replace it with the published file or pass --no-verify-checksums (verify_checksums=False) "
                    "for a copy you trust"
                )
    if n_images != n_labels:
        raise RobustCSCError(
            f"{title} files {images_path} and {labels_path} hold {n_images} images but {n_labels} labels; "
            "use the images and labels files of one split"
        )
    if n_labels and int(labels.max()) >= NUM_CLASSES:
        raise RobustCSCError(
            f"{title} labels {labels_path} hold class ids up to {int(labels.max())}, outside 0..{NUM_CLASSES - 1}; "
            "replace the file with the published one"
        )
    if n_images == 0:
        raise RobustCSCError(f"{title} files {images_path} hold no images; replace them with the published files")
    if verify:
        # Last, so a malformed file gets the message that says what is wrong with it.
        _check_md5(image_bytes, images_path, variant, image_name)
        _check_md5(label_bytes, labels_path, variant, label_name)
    padded = np.pad(pixels.reshape(n_images, RAW_SIDE, RAW_SIDE), ((0, 0), (PAD, PAD), (PAD, PAD)))
    padded.flags.writeable = False  # shared between calls
    targets = labels.astype(np.int64)
    targets.flags.writeable = False
    return padded, targets


def read_split(
    name: str, split: str, root: str | Path | None = None, verify_checksums: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 32, 32) padded grey images, int64 (N,) labels) of a split, checked; read-only, cached."""
    if split not in SPLITS:
        raise RobustCSCError(f"{_variant(name).title} has no split {split!r}; use train or test")
    images_path, labels_path = find_split_files(name, split, root)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in (images_path, labels_path))
    return _read_split_cached(
        name.lower(), split, images_path.resolve(), labels_path.resolve(), stamp, bool(verify_checksums)
    )


# ---------------------------------------------------------------- the Dataset


class IdxImages(Dataset):
    """A split as the models see it: items (float (3, 32, 32) in [0, 1], int label).

    pixels: the uint8 (N, 32, 32) padded grey images; targets: int64 labels.
    train_transform turns on the CIFAR augmentation (random crop 32 with
    padding 4, horizontal flip); it suits clothes, and the recipe leaves it
    off for digits, whose shapes a flip would change.
    """

    def __init__(self, name: str, pixels: np.ndarray, targets: np.ndarray, train_transform: bool = False) -> None:
        self.name = name
        self.pixels = pixels
        self.targets = targets
        self.transform = (
            transforms.Compose([transforms.RandomCrop(IMAGE_SIZE, padding=4), transforms.RandomHorizontalFlip()])
            if train_transform
            else None
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        grey = torch.from_numpy(np.array(self.pixels[i], dtype=np.float32)).div_(255.0)
        image = grey.unsqueeze(0).expand(3, IMAGE_SIZE, IMAGE_SIZE)
        image = self.transform(image) if self.transform is not None else image.contiguous()
        return image, int(self.targets[i])

    def uint8_hwc(self, n: int | None = None) -> np.ndarray:
        """The first n images (all when None) as uint8 (n, 32, 32, 3): the pixels the models see, as bytes."""
        grey = self.pixels[: len(self) if n is None else n]
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))


def _download(variant: _Variant, root: Path) -> None:
    """torchvision's download into root/<class name>/raw (it checks the .gz MD5s itself)."""
    try:
        variant.torchvision_class(str(root), train=False, download=True)
    except (RuntimeError, urllib.error.URLError, OSError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RobustCSCError(
            f"could not download {variant.title} into {root} ({reason}); check the network connection"
            + (f", or install Debian's package (apt-get install {variant.debian_package})" if variant.debian_package else "")
        ) from None


def load_mnist(
    name: str,
    split: str,
    root: str | Path | None = None,
    train_transform: bool = False,
    download: bool = False,
    verify_checksums: bool = True,
) -> IdxImages:
    """MNIST ("mnist") or Fashion-MNIST ("fashion-mnist"): items (float (3, 32, 32) in [0, 1], int label).

    root: a folder to read (see the module docstring); None searches ./data,
    then Debian's package folder. download: when the files are not found,
    fetch them with torchvision into root (./data when None) first.
    verify_checksums=False accepts files of any count whose format is right
    (hand-made or re-encoded copies); the format checks still run.
    """
    variant = _variant(name)
    if split not in SPLITS:
        raise RobustCSCError(f"{variant.title} has no split {split!r}; use train or test")
    if download:
        try:
            find_split_files(variant.key, split, root)
        except RobustCSCError:
            _download(variant, Path(root).expanduser() if root is not None else DEFAULT_ROOT)
    pixels, targets = read_split(variant.key, split, root, verify_checksums)
    return IdxImages(variant.key, pixels, targets, train_transform=train_transform)


__all__ = [
    "DEBIAN_PACKAGE",
    "IMAGE_SIZE",
    "IdxImages",
    "MNIST_NAMES",
    "VARIANTS",
    "debian_folder",
    "find_split_files",
    "load_mnist",
    "mnist_stats",
    "read_split",
]
