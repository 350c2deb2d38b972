"""Corruption benchmarks in their published layouts: CIFAR-10-C, CIFAR-100-C and ImageNet-C.

Every cell (corruption, severity) of a suite is a torch Dataset whose items are

    (image, label, index)

image: float32 tensor (3, H, W) in [0, 1], not normalised (like every loader in
robust_csc.data); label: int class id; index: int, the position of the image in
the clean test set (CIFAR: 0..9999 in test-set order; ImageNet-C: the position
in the sorted (wnid, file name) list, which is torchvision ImageFolder's order of
the clean validation folder). The same index names the same underlying test
image in every cell, so callers can seed per image or split by index.

CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019): one file per
corruption, `<corruption>.npy`, uint8 of shape (5 * 10000, 32, 32, 3),
severity-major (rows [(s-1)*10000, s*10000) hold severity s in test-set order),
plus `labels.npy`: the 10000 test labels repeated 5 times. The files are
memory-mapped, never read whole into memory. The per-severity count is fixed
at 10000 by the published format; `images_per_severity` exists so that tests
and small hand-made suites can use the exact layout with fewer rows.

ImageNet-C: `<root>/<corruption>/<severity>/<wnid>/<file>.JPEG`, 224x224 after
the centre crop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import calculate_md5, extract_archive

from robust_csc.corruptions.names import ALL, COMMON, EXTRA
from robust_csc.data.images import read_rgb
from robust_csc.errors import RobustCSCError
from robust_csc.scratch import build_folder
from robust_csc.validation import regular_file

# One list of names for the whole project: robust_csc.corruptions.names.
COMMON_CORRUPTIONS: tuple[str, ...] = COMMON
EXTRA_CORRUPTIONS: tuple[str, ...] = EXTRA
ALL_CORRUPTIONS: tuple[str, ...] = ALL
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

CIFAR_C_NAMES: tuple[str, ...] = ("cifar10-c", "cifar100-c")
CIFAR_C_IMAGES_PER_SEVERITY = 10000  # the published format
_CIFAR_IMAGE_SHAPE = (32, 32, 3)


@dataclass(frozen=True)
class _CifarCVariant:
    title: str  # also the folder name inside the archive
    num_classes: int
    zenodo_record: str
    archive: str
    md5: str  # of the archive, as listed on the Zenodo record


_CIFAR_C = {
    "cifar10-c": _CifarCVariant("CIFAR-10-C", 10, "2535967", "CIFAR-10-C.tar", "56bf5dcef84df0e2308c6dcbcbbd8499"),
    "cifar100-c": _CifarCVariant(
        "CIFAR-100-C", 100, "3555552", "CIFAR-100-C.tar", "11f0ed0f1191edbf9fa23466ae6021d3"
    ),
}


@dataclass(frozen=True)
class CorruptionCell:
    """One (corruption, severity) cell of a benchmark."""

    corruption: str
    severity: int


class CorruptionSuite:
    """The selected cells of a corruption benchmark and a Dataset for each.

    name: "cifar10-c", "cifar100-c" or "imagenet-c"; num_classes; corruptions and
    severities: the selection, in Hendrycks' order and ascending severity;
    images_per_cell: the number of items in every cell's Dataset.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        corruptions: Iterable[str],
        severities: Iterable[int],
        images_per_cell: int,
        make_dataset: Callable[[str, int], Dataset],
    ) -> None:
        self.name = name
        self.num_classes = num_classes
        self.corruptions = tuple(corruptions)
        self.severities = tuple(severities)
        self.images_per_cell = images_per_cell
        self._make_dataset = make_dataset

    def cells(self) -> list[CorruptionCell]:
        """Every selected cell: corruptions in Hendrycks' order, then severity 1 -> 5."""
        return [CorruptionCell(c, s) for c in self.corruptions for s in self.severities]

    def dataset(self, corruption: str, severity: int) -> Dataset:
        """The cell's Dataset; items are (image float CHW in [0, 1], int label, int test-set index)."""
        if corruption not in self.corruptions:
            raise RobustCSCError(
                f"corruption {corruption!r} is not in the loaded {self.name} suite; "
                f"use one of {', '.join(self.corruptions)} or load it with that corruption selected"
            )
        if severity not in self.severities:
            raise RobustCSCError(
                f"severity {severity!r} is not in the loaded {self.name} suite; "
                f"use one of {', '.join(map(str, self.severities))} or load it with that severity selected"
            )
        return self._make_dataset(corruption, severity)

    def __len__(self) -> int:
        return len(self.corruptions) * len(self.severities)

    def __repr__(self) -> str:
        return (
            f"CorruptionSuite({self.name!r}, {len(self.corruptions)} corruptions x "
            f"{len(self.severities)} severities, {self.images_per_cell} images per cell)"
        )


# ---------------------------------------------------------------- selection


def _brief(exc: BaseException) -> str:
    """An exception's text as one clause, for embedding in a one-sentence message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rstrip(".").replace(". ", "; ")


def _select_corruptions(corruptions: Iterable[str] | str | None, available: Iterable[str]) -> tuple[str, ...]:
    """Requested corruptions in Hendrycks' order; None means every known one in `available`."""
    if corruptions is None:
        present = set(available)
        return tuple(c for c in ALL_CORRUPTIONS if c in present)
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    requested = list(corruptions)
    unknown = [c for c in requested if c not in ALL_CORRUPTIONS]
    if unknown:
        raise RobustCSCError(
            f"unknown corruption {', '.join(map(repr, unknown))}; use names from {', '.join(ALL_CORRUPTIONS)}"
        )
    if not requested:
        raise RobustCSCError("no corruption selected; name at least one or pass None for all of them")
    return tuple(c for c in ALL_CORRUPTIONS if c in set(requested))


def _select_severities(severities: Iterable[int] | int | None) -> tuple[int, ...]:
    if severities is None:
        return SEVERITIES
    if isinstance(severities, (int, np.integer)):
        severities = [severities]
    requested = list(severities)
    bad = [s for s in requested if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s not in SEVERITIES]
    if bad:
        shown = ", ".join(str(int(s)) if isinstance(s, (int, np.integer)) else repr(s) for s in bad)
        raise RobustCSCError(f"severity {shown} is outside 1..5; choose severities from 1 to 5")
    if not requested:
        raise RobustCSCError("no severity selected; name at least one of 1..5 or pass None for all five")
    return tuple(sorted({int(s) for s in requested}))


# ---------------------------------------------------------------- CIFAR-10-C / CIFAR-100-C


def cifar_c_url(name: str) -> str:
    """The Zenodo download URL of the CIFAR-10-C or CIFAR-100-C archive."""
    variant = _variant(name)
    return f"https://zenodo.org/records/{variant.zenodo_record}/files/{variant.archive}?download=1"


def _variant(name: str) -> _CifarCVariant:
    key = name.lower()
    if key not in _CIFAR_C:
        raise RobustCSCError(f"unknown corruption data set {name!r}; use one of {', '.join(CIFAR_C_NAMES)}")
    return _CIFAR_C[key]


def pixels_to_batch(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) pixels as a float32 (B, 3, H, W) batch in [0, 1], NCHW-contiguous.

    The same values as converting each image alone (ToTensor's x / 255), in one
    pass over the batch: what a DataLoader would otherwise do image by image
    and then stack.
    """
    source = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))  # a memmap slice is read here
    batch = torch.empty((source.shape[0], source.shape[3], source.shape[1], source.shape[2]), dtype=torch.float32)
    return batch.copy_(source.permute(0, 3, 1, 2)).div_(255)


class ArrayCell(Dataset):
    """A cell of uint8 (N, H, W, 3) pixels: items (image float CHW in [0, 1], int label, int index).

    read_batch(lo, hi) hands out images lo..hi-1 as one batch, read in one
    slice: the harness's DataLoader uses it instead of collating image by image.
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, offset: int = 0) -> None:
        self._array: np.ndarray | None = pixels
        self.offset = offset  # row of image 0 in the array
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def _images(self) -> np.ndarray:
        return self._array

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if not 0 <= i < len(self.labels):
            raise IndexError(f"index {i} out of range for a cell of {len(self.labels)} images")
        pixels = np.ascontiguousarray(self._images()[self.offset + i].transpose(2, 0, 1))  # HWC -> CHW
        return torch.from_numpy(pixels).float().div(255), int(self.labels[i]), int(i)

    def read_batch(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images (hi-lo, 3, H, W), int64 labels, int64 indices) of images lo..hi-1, as a DataLoader would collate them."""
        if not 0 <= lo < hi <= len(self.labels):
            raise IndexError(f"batch {lo}:{hi} out of range for a cell of {len(self.labels)} images")
        images = pixels_to_batch(self._images()[self.offset + lo : self.offset + hi])
        return images, torch.from_numpy(self.labels[lo:hi].copy()), torch.arange(lo, hi, dtype=torch.int64)


class CifarCCell(ArrayCell):
    """One (corruption, severity) block of a CIFAR-C .npy file, read through a memory map.

    The memory map is opened lazily in each process and dropped when pickled, so
    DataLoader workers (fork or spawn) never copy the 150 MB array.
    """

    def __init__(self, path: Path, severity: int, labels: np.ndarray, images_per_severity: int) -> None:
        super().__init__(None, labels, offset=(severity - 1) * images_per_severity)
        self.path = Path(path)
        self.severity = severity

    def _images(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        return state


def _resolve_cifar_c_folder(root: Path, variant: _CifarCVariant) -> Path:
    """`root/CIFAR-10-C` if present; root itself if it is the extracted folder."""
    if (root / variant.title).is_dir():
        return root / variant.title
    if root.name == variant.title or (root / "labels.npy").is_file():
        return root
    return root / variant.title


def _open_npy(path: Path, title: str) -> np.ndarray:
    regular_file(path, f"{title} .npy", "replace it with the one from the extracted archive")  # a FIFO would block
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise RobustCSCError(
            f"{title} file {path} is not a readable .npy array ({_brief(exc)}); "
            "replace it with the one from the extracted archive or download it again"
        ) from None
    except OSError as exc:
        raise RobustCSCError(
            f"could not read {title} file {path} ({exc.strerror or exc}); fix its permissions or download it again"
        ) from None


def _check_cifar_c_folder(
    folder: Path, variant: _CifarCVariant, corruptions: tuple[str, ...], images_per_severity: int
) -> np.ndarray:
    """Check labels.npy and each corruption file's header; return the 10000 (n) test labels as int64."""
    title = variant.title
    rows = len(SEVERITIES) * images_per_severity
    missing = [f"{c}.npy" for c in corruptions if not (folder / f"{c}.npy").is_file()]
    if missing:
        raise RobustCSCError(
            f"{title} folder {folder} lacks {', '.join(missing)}; extract the complete {variant.archive} there "
            "(or pass --download into an empty folder) or select only the corruptions present"
        )
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise RobustCSCError(
            f"{title} folder {folder} has no labels.npy; extract the complete {variant.archive} there "
            "or pass --download into an empty folder"
        )
    labels = _open_npy(labels_path, title)
    if labels.dtype.kind not in "ui":
        raise RobustCSCError(
            f"{title} labels {labels_path} have dtype {labels.dtype}, not an integer type (uint8 in the "
            "published files); replace labels.npy with the one from the archive"
        )
    if labels.shape != (rows,):
        raise RobustCSCError(
            f"{title} labels {labels_path} have shape {labels.shape}, not ({rows},) "
            f"(5 severities x {images_per_severity} test labels); replace labels.npy with the one from the archive"
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= variant.num_classes:
        raise RobustCSCError(
            f"{title} labels {labels_path} hold class ids {labels.min()}..{labels.max()}, outside "
            f"0..{variant.num_classes - 1}; use the labels.npy of {title} (not of another data set)"
        )
    blocks = labels.reshape(len(SEVERITIES), images_per_severity)
    if not (blocks == blocks[0]).all():
        raise RobustCSCError(
            f"{title} labels {labels_path} do not repeat the same {images_per_severity} test labels in each of "
            "the 5 severity blocks; replace labels.npy with the one from the archive"
        )
    for corruption in corruptions:
        path = folder / f"{corruption}.npy"
        array = _open_npy(path, title)
        if array.dtype != np.uint8:
            raise RobustCSCError(
                f"{title} file {path} has dtype {array.dtype}, not uint8; "
                "replace it with the file from the archive (images must be stored as bytes 0..255)"
            )
        if array.shape != (rows, *_CIFAR_IMAGE_SHAPE):
            raise RobustCSCError(
                f"{title} file {path} has shape {array.shape}, not {(rows, *_CIFAR_IMAGE_SHAPE)} "
                f"(5 severities x {images_per_severity} images, 32x32x3); replace it with the file from the archive"
            )
    return blocks[0].copy()


def _fetch(url: str, path: Path, chunk: int = 1 << 20) -> None:
    """Stream url (https, or file:// in tests) into path; urllib follows Zenodo's redirects."""
    request = urllib.request.Request(url, headers={"User-Agent": "robust-csc"})
    with urllib.request.urlopen(request, timeout=120) as response, open(path, "wb") as out:
        while block := response.read(chunk):
            out.write(block)


def _download_cifar_c(target: Path, variant: _CifarCVariant, name: str, md5: str, images_per_severity: int) -> None:
    """Download and extract the archive as the folder target, verified; nothing is left behind on failure.

    Steps: download into a hidden temporary folder next to target, check the
    MD5, extract there, check the extracted files, then rename the folder into place.
    """
    root = target.parent
    url = cifar_c_url(name)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustCSCError(
            f"could not create {root} ({exc.strerror or exc}); choose a writable root folder"
        ) from None
    tmp = root / f".{variant.title}.download-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        try:
            tmp.mkdir()
            _fetch(url, tmp / variant.archive)
        except (urllib.error.URLError, OSError) as exc:
            raise RobustCSCError(
                f"could not download {variant.archive} from {url} ({_brief(exc)}); check the network connection "
                f"or extract the archive into {root} yourself"
            ) from None
        archive = tmp / variant.archive
        got = calculate_md5(archive)
        if got != md5.lower():
            raise RobustCSCError(
                f"downloaded {variant.archive} has MD5 {got}, not {md5.lower()}; download it again "
                "(the transfer may have been cut short) or pass the checksum of the archive you trust"
            )
        extracted = tmp / "extracted"
        try:
            extract_archive(str(archive), str(extracted))
        except Exception as exc:  # tarfile.TarError, OSError, filter errors
            raise RobustCSCError(
                f"could not extract {variant.archive} ({type(exc).__name__}: {_brief(exc)}); download it again"
            ) from None
        archive.unlink()
        folder = extracted / variant.title
        if not folder.is_dir():
            raise RobustCSCError(
                f"{variant.archive} holds no {variant.title} folder; download the published archive again"
            )
        _check_cifar_c_folder(folder, variant, ALL_CORRUPTIONS, images_per_severity)
        try:
            os.rename(folder, target)
        except OSError as exc:
            raise RobustCSCError(
                f"could not move the extracted {variant.title} to {target} ({exc.strerror or exc}); "
                "remove what is there and download again"
            ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cifar_c(
    root: str | Path,
    name: str = "cifar10-c",
    corruptions: Iterable[str] | str | None = None,
    severities: Iterable[int] | int | None = None,
    n_examples: int | None = None,
    download: bool = False,
    md5: str | None = None,
    images_per_severity: int = CIFAR_C_IMAGES_PER_SEVERITY,
) -> CorruptionSuite:
    """CIFAR-10-C ("cifar10-c") or CIFAR-100-C ("cifar100-c") from `root/CIFAR-10-C` (or root itself).

    corruptions: names from ALL_CORRUPTIONS; None = every known corruption whose
    .npy file is in the folder (all 19 for the published archive).
    severities: from 1..5; None = all five.
    n_examples: the first N images of every severity block (None = all).
    download: if the folder is missing, fetch the archive from Zenodo, check its
    MD5 (md5, or the published checksum when None), extract it, check the files
    and only then move the folder into place.
    images_per_severity: rows per severity block; 10000 in the published files,
    smaller only for tests and hand-made suites in the same layout.

    Each cell yields (image float (3, 32, 32) in [0, 1], int label, int test-set index).
    """
    variant = _variant(name)
    key = name.lower()
    if isinstance(images_per_severity, bool) or not isinstance(images_per_severity, int) or images_per_severity < 1:
        raise RobustCSCError(
            f"images_per_severity must be a positive integer, not {images_per_severity!r}; "
            f"leave it at {CIFAR_C_IMAGES_PER_SEVERITY} for the published files"
        )
    if n_examples is not None and (
        isinstance(n_examples, bool)
        or not isinstance(n_examples, (int, np.integer))
        or not 1 <= n_examples <= images_per_severity
    ):
        raise RobustCSCError(
            f"n_examples {n_examples!r} is outside 1..{images_per_severity}; "
            f"choose at most {images_per_severity} images per severity or pass None for all"
        )
    root = Path(root).expanduser()
    folder = _resolve_cifar_c_folder(root, variant)
    if not folder.is_dir():
        if not download:
            raise RobustCSCError(
                f"{variant.title} folder {folder} not found; pass --download (download=True) "
                f"or extract {variant.archive} into {root}"
            )
        _download_cifar_c(folder, variant, key, md5 or variant.md5, images_per_severity)
    present = [p.stem for p in folder.iterdir() if p.suffix == ".npy"]
    selected = _select_corruptions(corruptions, present)
    if not selected:
        raise RobustCSCError(
            f"{variant.title} folder {folder} holds no corruption .npy files; "
            f"extract {variant.archive} there or pass --download into an empty folder"
        )
    chosen_severities = _select_severities(severities)
    labels = _check_cifar_c_folder(folder, variant, selected, images_per_severity)
    if n_examples is not None:
        labels = labels[: int(n_examples)].copy()

    def make_dataset(corruption: str, severity: int) -> Dataset:
        return CifarCCell(folder / f"{corruption}.npy", severity, labels, images_per_severity)

    return CorruptionSuite(key, variant.num_classes, selected, chosen_severities, len(labels), make_dataset)


def write_cifar_c(
    folder: str | Path,
    name: str,
    images: Mapping[str, np.ndarray],
    labels: np.ndarray,
    overwrite: bool = False,
) -> Path:
    """Write a CIFAR-C suite into `folder` in the published layout; return the folder.

    images: corruption -> uint8 array (5 * n, 32, 32, 3), severity-major;
    labels: the n clean test labels (integers, stored as uint8 repeated 5 times).
    Files land directly in `folder` (load it with load_cifar_c(folder, name,
    images_per_severity=n) unless n is 10000). A non-empty folder is refused
    unless overwrite=True. Everything is written into a hidden temporary folder
    next to `folder` and renamed into place, so an interrupted write leaves
    nothing half-written.
    """
    variant = _variant(name)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "ui" or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= variant.num_classes:
        raise ValueError(f"labels must lie in 0..{variant.num_classes - 1} for {name}")
    n = len(labels)
    unknown = [c for c in images if c not in ALL_CORRUPTIONS]
    if unknown or not images:
        raise ValueError(f"images must map names from ALL_CORRUPTIONS to arrays; unknown: {unknown}")
    for corruption, array in images.items():
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.shape != (len(SEVERITIES) * n, *_CIFAR_IMAGE_SHAPE):
            raise ValueError(
                f"images[{corruption!r}] must be uint8 {(len(SEVERITIES) * n, *_CIFAR_IMAGE_SHAPE)}, "
                f"got {array.dtype} {array.shape}"
            )

    folder = Path(folder).expanduser()
    exists = folder.exists()
    if exists and not folder.is_dir():
        raise RobustCSCError(f"{folder} exists and is not a folder; choose another output folder")
    if exists and any(folder.iterdir()) and not overwrite:
        raise RobustCSCError(
            f"output folder {folder} is not empty; pass --force (overwrite=True) to replace it or choose another folder"
        )
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = folder.with_name(f".{folder.name}.old-{tag}")
    tmp = None
    with contextlib.ExitStack() as lock:  # released last, after the build folder is gone
        try:
            try:
                folder.parent.mkdir(parents=True, exist_ok=True)
                # The build folder of a killed run is removed by the next one (robust_csc.scratch).
                tmp = lock.enter_context(build_folder(folder))
                for corruption in ALL_CORRUPTIONS:
                    if corruption in images:
                        _save_npy(tmp / f"{corruption}.npy", np.ascontiguousarray(images[corruption], dtype=np.uint8))
                _save_npy(tmp / "labels.npy", np.tile(labels.astype(np.uint8), len(SEVERITIES)))
                if exists:
                    os.rename(folder, old)  # the old suite stays whole until the new one is in place
                os.rename(tmp, folder)
            except BaseException as exc:
                if old.exists() and not folder.exists():
                    os.rename(old, folder)  # put the old suite back
                if isinstance(exc, OSError):
                    raise RobustCSCError(
                        f"could not write {folder} ({exc.strerror or _brief(exc)}); "
                        "check that the folder is writable and the disk not full"
                    ) from None
                raise
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if folder.exists():
                shutil.rmtree(old, ignore_errors=True)
    return folder


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- ImageNet-C

_IMAGENET_C_SIZE = 224


class _CropUnlessCropped:
    """ToTensor for 224x224 images (the published files); Resize(256) + CenterCrop(224) first otherwise."""

    def __init__(self) -> None:
        self.to_tensor = transforms.ToTensor()
        self.crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(_IMAGENET_C_SIZE)])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != (_IMAGENET_C_SIZE, _IMAGENET_C_SIZE):
            image = self.crop(image)
        return self.to_tensor(image)


class ImageNetCCell(Dataset):
    """One ImageNet-C cell folder; items (image (3, 224, 224) in [0, 1], label, index)."""

    def __init__(
        self,
        folder: Path,
        entries: list[tuple[str, str]],
        positions: list[int],
        class_to_idx: dict[str, int],
    ) -> None:
        self.folder = Path(folder)
        self.entries = entries  # sorted (wnid, file name) of the reference cell, shared by all cells
        self.positions = positions  # indices into entries: the images of this cell, in order
        self.class_to_idx = class_to_idx
        self.transform = _CropUnlessCropped()

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if not 0 <= i < len(self.positions):
            raise IndexError(f"index {i} out of range for a cell of {len(self.positions)} images")
        index = self.positions[i]
        wnid, file_name = self.entries[index]
        path = self.folder / wnid / file_name
        rgb = read_rgb(path, "ImageNet-C image")  # bombs, truncation, FIFOs: one RobustCSCError
        return self.transform(rgb), self.class_to_idx[wnid], index


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _list_cell(cell_dir: Path) -> dict[str, list[str]]:
    """wnid -> sorted image file names of one cell folder."""
    listing = {}
    for entry in sorted(os.scandir(cell_dir), key=lambda e: e.name):
        if entry.is_dir():
            listing[entry.name] = sorted(
                f.name for f in os.scandir(entry.path) if f.is_file() and _is_image(f.name)
            )
    return listing


def load_imagenet_c(
    root: str | Path,
    corruptions: Iterable[str] | str | None = None,
    severities: Iterable[int] | int | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> CorruptionSuite:
    """ImageNet-C from `<root>/<corruption>/<severity>/<wnid>/<file>.JPEG` (or `<root>/ImageNet-C/...`).

    Class index = position of the wnid in sorted order (the standard 0..999
    order); every selected cell must hold the same wnids and the same image file
    names. corruptions: None = every known corruption folder present.
    Images that are 224x224 (the published files) only go through ToTensor;
    others get Resize(256) + CenterCrop(224) first.

    subset=N picks N image files with a generator seeded by `seed`: the same
    files (same indices) in every cell and on every call with the same seed and
    folder contents. It is NOT RobustBench's published 5000-image list, which
    cannot be downloaded here; numbers on a subset are not comparable with it.

    Each cell yields (image float (3, 224, 224) in [0, 1], int label, int index),
    index = position in the sorted (wnid, file name) list of a cell.
    """
    root = Path(root).expanduser()
    if (root / "ImageNet-C").is_dir():
        root = root / "ImageNet-C"
    fix = "lay ImageNet-C out as <root>/<corruption>/<severity>/<wnid>/<file>.JPEG"
    if not root.is_dir():
        raise RobustCSCError(f"ImageNet-C folder {root} not found; {fix} and pass its path as the root")
    present = [p.name for p in root.iterdir() if p.is_dir()]
    selected = _select_corruptions(corruptions, present)
    if not selected:
        raise RobustCSCError(f"ImageNet-C folder {root} holds no known corruption folders; {fix}")
    missing = [c for c in selected if c not in present]
    if missing:
        raise RobustCSCError(
            f"ImageNet-C folder {root} lacks the corruption folders {', '.join(missing)}; "
            "extract them there or select only the corruptions present"
        )
    chosen_severities = _select_severities(severities)
    missing_cells = [f"{c}/{s}" for c in selected for s in chosen_severities if not (root / c / str(s)).is_dir()]
    if missing_cells:
        raise RobustCSCError(
            f"ImageNet-C folder {root} lacks the severity folders {', '.join(missing_cells)}; "
            "extract them there or select only the severities present"
        )

    reference_cell: str | None = None
    entries: list[tuple[str, str]] = []
    wnids: list[str] = []
    for corruption in selected:
        for severity in chosen_severities:
            cell = f"{corruption}/{severity}"
            listing = _list_cell(root / corruption / str(severity))
            if not any(listing.values()):
                raise RobustCSCError(f"ImageNet-C cell {root / cell} holds no images; {fix}")
            empty = [w for w, files in listing.items() if not files]
            if empty:
                raise RobustCSCError(
                    f"ImageNet-C cell {root / cell} has class folders without images "
                    f"({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''}); {fix}"
                )
            if reference_cell is None:
                reference_cell, wnids = cell, sorted(listing)
                entries = [(w, f) for w in wnids for f in listing[w]]
                continue
            if sorted(listing) != wnids:
                diff = sorted(set(listing) ^ set(wnids))
                raise RobustCSCError(
                    f"ImageNet-C cells {reference_cell} and {cell} hold different class folders "
                    f"({', '.join(diff[:3])}{', ...' if len(diff) > 3 else ''}); every cell needs the same wnids"
                )
            cell_entries = [(w, f) for w in wnids for f in listing[w]]
            if cell_entries != entries:
                diff = sorted(set(cell_entries) ^ set(entries))
                raise RobustCSCError(
                    f"ImageNet-C cells {reference_cell} and {cell} hold different image files "
                    f"({len(diff)} differ, such as {'/'.join(diff[0])}); every cell needs the same images"
                )

    if subset is None:
        positions = list(range(len(entries)))
    else:
        if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or not 1 <= subset <= len(entries):
            raise RobustCSCError(
                f"subset {subset!r} is outside 1..{len(entries)} (the images per cell); "
                "choose a smaller subset or pass None for all images"
            )
        rng = np.random.default_rng(seed)
        positions = sorted(int(p) for p in rng.choice(len(entries), size=int(subset), replace=False))
    class_to_idx = {w: i for i, w in enumerate(wnids)}

    def make_dataset(corruption: str, severity: int) -> Dataset:
        return ImageNetCCell(root / corruption / str(severity), entries, positions, class_to_idx)

    return CorruptionSuite("imagenet-c", len(wnids), selected, chosen_severities, len(positions), make_dataset)
