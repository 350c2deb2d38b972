"""Corruption suites generated once and stored in the CIFAR-10-C layout: written resumably, read memory-mapped.

`robust-csc corrupt` writes a generated suite (robust_csc.data.generated: the
CIFAR or ImageNet profile, every image seeded by image_seed(seed, corruption,
severity, index)) of a 32x32 test set to disk, so that evaluating it costs
reading bytes rather than corrupting images. The folder is the published
CIFAR-10-C layout (load_cifar_c reads it) plus a manifest, ``suite.json``,
that says what was corrupted: the data set, the profile, the seed, the
corruptions, the images per severity, the size of the test split and MD5s of
the clean pixels and labels.

Resumable per (corruption, severity) block: the work happens in a hidden
sibling folder ``.<out>.partial``. Each corruption's file is allocated at
full size there; a block is corrupted in memory, written into its rows,
flushed to disk, and only then recorded in ``blocks.json`` (replaced
atomically). A run that is killed loses at most the blocks in flight, and the
same command resumes where it stopped; a block is only ever trusted once
recorded, so a half-written one is simply written again (with the same bytes:
the corruptions are seeded per image). ``labels.npy`` is written last and the
folder renamed to ``<out>`` only when every block is done, so no reader ever
sees a half-made suite (load_cifar_c refuses the partial folder: it has no
labels.npy).

The stored suite holds the same pixels as the generated suite of the same
data set, profile and seed, so both are stored in the results under the same
name (``fashion-mnist-c[cifar]``): a cell of one counts for the other.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset

from robust_csc.atomic import atomic_write
from robust_csc.corruptions import ALL, check_profile, corrupt_images
from robust_csc.data.corrupted import (
    SEVERITIES,
    ArrayCell,
    CorruptionSuite,
    _select_corruptions,
    _select_severities,
    load_cifar_c,
)
from robust_csc.data.registry import dataset_info, load_dataset
from robust_csc.errors import RobustCSCError

MANIFEST = "suite.json"
BLOCKS = "blocks.json"
FORMAT = 1
_SHAPE = (32, 32, 3)
# Suites `evaluate --suite` finds by name: name -> (data set, folder name under --data-root).
STORED_SUITES = {"fashion-mnist-c": ("fashion-mnist", "fashion-mnist-c"), "mnist-c": ("mnist", "mnist-c")}


@dataclass(frozen=True)
class SuiteManifest:
    """What a stored suite holds; two runs with equal manifests write the same bytes."""

    dataset: str
    profile: str
    seed: int
    corruptions: tuple[str, ...]
    images_per_severity: int
    test_size: int  # images in the data set's test split (images_per_severity when the whole split)
    num_classes: int
    clean_md5: str  # of the uint8 (n, 32, 32, 3) clean pixels
    labels_md5: str  # of the int64 labels
    format: int = FORMAT

    @property
    def suite_name(self) -> str:
        """The results' data set name: the generated suite's, since the pixels are the same."""
        tag = self.profile if self.seed == 0 else f"{self.profile},seed={self.seed}"
        return f"{self.dataset}-c[{tag}]"

    def to_json(self) -> str:
        values = asdict(self)
        values["corruptions"] = list(self.corruptions)
        return json.dumps(values, indent=2, sort_keys=True) + "\n"


def read_manifest(folder: Path) -> SuiteManifest | None:
    """The folder's manifest; None when there is none or it is not one of ours."""
    try:
        values = json.loads((folder / MANIFEST).read_text())
        values["corruptions"] = tuple(values["corruptions"])
        manifest = SuiteManifest(**values)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return manifest if manifest.format == FORMAT else None


# ---------------------------------------------------------------- the clean pixels


def clean_test_pixels(
    dataset: str,
    root: str | Path | None = None,
    n_examples: int | None = None,
    *,
    download: bool = False,
    verify_checksums: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 (n, 32, 32, 3) pixels as the models see them, int64 (n,) labels, size of the test split).

    The first n test images (all when None), rounded to bytes as an image file
    stores them: exactly what the generated suite corrupts on the fly.
    """
    test = load_dataset(dataset, "test", root=root, download=download, verify_checksums=verify_checksums)
    total = len(test)
    n = total if n_examples is None else n_examples
    if n > total:
        raise RobustCSCError(f"--n-examples {n} exceeds the {total} {dataset} test images; pass at most {total}")
    if hasattr(test, "uint8_hwc"):  # MNIST / Fashion-MNIST: padded grey repeated to RGB
        return test.uint8_hwc(n), np.asarray(test.targets[:n], dtype=np.int64), total
    if hasattr(test, "data") and hasattr(test, "targets"):  # torchvision CIFAR: the stored bytes
        return np.ascontiguousarray(test.data[:n]), np.asarray(test.targets[:n], dtype=np.int64), total
    from robust_csc.data.generated import to_uint8_hwc

    items = [test[i] for i in range(n)]
    images = np.stack([to_uint8_hwc(image) for image, _ in items])
    return images, np.asarray([int(label) for _, label in items], dtype=np.int64), total


def _md5(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


# ---------------------------------------------------------------- writing


_WORK: dict = {}  # the images and settings a worker corrupts; set by _start_worker


def _start_worker(images: np.ndarray, profile: str, seed: int) -> None:
    _WORK.update(images=images, profile=profile, seed=seed)


def _corrupt_block(corruption: str, severity: int) -> tuple[str, int, np.ndarray]:
    """One (corruption, severity) block: every image with its own seeded generator, as corrupt_images does."""
    block = corrupt_images(_WORK["images"], corruption, severity, profile=_WORK["profile"], seed=_WORK["seed"])
    return corruption, severity, block


def _write_block(path: Path, start: int, block: np.ndarray) -> None:
    """Write a block's rows into its file and flush them to disk before the block is recorded.

    The map is opened per block, so the finished files' pages are not all held mapped at once.
    """
    array = open_memmap(path, mode="r+")
    array[start : start + len(block)] = block
    array.flush()
    del array


def _read_blocks(partial: Path) -> set[tuple[str, int]]:
    try:
        return {(c, int(s)) for c, s in json.loads((partial / BLOCKS).read_text())["complete"]}
    except (OSError, ValueError, TypeError, KeyError):
        return set()


def _record_blocks(partial: Path, done: set[tuple[str, int]], order: list[tuple[str, int]]) -> None:
    listed = [[c, s] for c, s in order if (c, s) in done]
    atomic_write(partial / BLOCKS, lambda f: f.write(json.dumps({"complete": listed}).encode()))


@contextmanager
def _locked(partial: Path) -> Iterator[None]:
    """One writer per partial folder: a second `corrupt` into the same output is refused, not interleaved."""
    with open(partial / ".lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RobustCSCError(
                f"another `robust-csc corrupt` is writing {partial}; wait for it to finish or stop it first"
            ) from None
        yield


def _prepare_block_files(partial: Path, manifest: SuiteManifest) -> set[str]:
    """Allocate each corruption's full-size file unless it is whole; return the corruptions whose file was made anew."""
    rows = len(SEVERITIES) * manifest.images_per_severity
    fresh = set()
    for corruption in manifest.corruptions:
        path = partial / f"{corruption}.npy"
        # Reused only when whole: numpy's r+ map would silently extend a file cut short with zeros.
        if not _whole_npy(path, (rows, *_SHAPE)):  # missing, cut short or damaged: its blocks are no longer trusted
            allocated = open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *_SHAPE))
            del allocated  # closes the map: blocks are written one map at a time
            # Reserve the file's disk blocks now: a memory map's pages are written back later, and on a full
            # disk that write kills the process with SIGBUS; reserved, a full disk is an ENOSPC OSError here.
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            fresh.add(corruption)
    return fresh


def _whole_npy(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether path is a uint8 .npy file of this shape with every byte of its data present."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                return False
            found, fortran, dtype = read_header[version](f)
            data_start = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError):
        return False
    return found == shape and dtype == np.uint8 and not fortran and size == data_start + int(np.prod(shape))


def _check_free_space(partial: Path, manifest: SuiteManifest) -> None:
    """Refuse up front when the files cannot fit: a full disk under a memory map ends in SIGBUS, not an error."""
    block_bytes = len(SEVERITIES) * manifest.images_per_severity * int(np.prod(_SHAPE))
    missing = [c for c in manifest.corruptions if not (partial / f"{c}.npy").is_file()]
    needed = len(missing) * block_bytes + 2 * manifest.images_per_severity * len(SEVERITIES)
    free = shutil.disk_usage(partial).free
    if needed > free:
        raise RobustCSCError(
            f"the suite needs {needed / 1e9:.2f} GB more in {partial.parent} but only {free / 1e9:.2f} GB are free; "
            "free some space or choose another --out"
        )


def _describe_difference(old: SuiteManifest, new: SuiteManifest) -> str:
    fields = [k for k, v in asdict(new).items() if asdict(old).get(k) != v]
    return ", ".join(fields) or "the format"


def write_stored_suite(
    out: str | Path,
    dataset: str,
    *,
    profile: str = "cifar",
    corruptions: Iterable[str] | None = None,
    seed: int = 0,
    n_examples: int | None = None,
    root: str | Path | None = None,
    download: bool = False,
    verify_checksums: bool = True,
    force: bool = False,
    workers: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, SuiteManifest, int]:
    """Write (or resume writing) the suite into `out`; return (folder, manifest, blocks written by this call).

    corruptions: None = all 19; every file holds all 5 severities. workers: 0
    corrupts in this process, N > 0 in N processes. force: replace a folder
    that holds something else (or start a partial run over). A folder that
    already holds exactly this suite is left as it is.
    """
    emit = log or (lambda line: None)
    profile = check_profile(profile)
    info = dataset_info(dataset)
    if info.image_size != 32:
        raise RobustCSCError(
            f"corrupt writes the CIFAR-10-C layout, which holds 32x32 images only, and {info.name} has "
            f"{info.image_size}x{info.image_size} images; evaluate {info.name} with `robust-csc evaluate "
            "--suite generated` or on the published ImageNet-C folders"
        )
    chosen = _select_corruptions(corruptions, ALL)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise RobustCSCError(f"workers {workers!r} is invalid; pass 0 (this process) or more worker processes")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise RobustCSCError(f"{out} exists and is not a folder; choose another output folder")
    # Refused before the (slow) corruption work and before anything is written.
    existing = read_manifest(out) if out.is_dir() else None
    nonempty = out.is_dir() and any(out.iterdir())

    images, labels, test_size = clean_test_pixels(
        info.name, root, n_examples, download=download, verify_checksums=verify_checksums
    )
    n = len(labels)
    manifest = SuiteManifest(
        dataset=info.name, profile=profile, seed=int(seed), corruptions=chosen, images_per_severity=n,
        test_size=test_size, num_classes=info.num_classes, clean_md5=_md5(images), labels_md5=_md5(labels),
    )
    if existing == manifest and (out / "labels.npy").is_file() and not force:
        emit(f"{out} already holds this suite; nothing to do")
        return out, manifest, 0
    if nonempty and not force:
        raise RobustCSCError(f"output folder {out} is not empty; pass --force to replace it or choose another folder")

    partial = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists() and not partial.is_dir():
            partial.unlink()
        partial.mkdir(exist_ok=True)
    except OSError as exc:
        raise RobustCSCError(
            f"could not create {partial} ({exc.strerror or exc}); choose a writable output folder"
        ) from None
    with _locked(partial):
        previous = read_manifest(partial)
        if previous is not None and previous != manifest:
            if not force:
                raise RobustCSCError(
                    f"{partial} holds an unfinished suite with another {_describe_difference(previous, manifest)}; "
                    "rerun with that run's options to finish it, or pass --force to start over"
                )
            previous = None
        if previous is None:  # a fresh start: nothing in the folder is trusted
            for entry in partial.iterdir():
                if entry.name != ".lock":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            atomic_write(partial / MANIFEST, lambda f: f.write(manifest.to_json().encode()))
        order = [(c, s) for c in chosen for s in SEVERITIES]
        _check_free_space(partial, manifest)
        fresh = _prepare_block_files(partial, manifest)
        done = {block for block in _read_blocks(partial) & set(order) if block[0] not in fresh}
        if done:
            emit(f"resuming {out}: {len(done)} of {len(order)} blocks already written")
        pending = [block for block in order if block not in done]
        written = _write_blocks(partial, pending, done, order, images, manifest, workers, progress)
        _finish(partial, out, labels)
    return out, manifest, written


def _write_blocks(
    partial: Path,
    pending: list[tuple[str, int]],
    done: set[tuple[str, int]],
    order: list[tuple[str, int]],
    images: np.ndarray,
    manifest: SuiteManifest,
    workers: int,
    progress: bool,
) -> int:
    from tqdm.auto import tqdm

    n = manifest.images_per_severity
    bar = tqdm(
        total=len(order) * n, initial=len(done) * n, desc=f"corrupting {manifest.dataset}", unit="img",
        unit_scale=True, disable=not progress, dynamic_ncols=True,
    )

    def store(corruption: str, severity: int, block: np.ndarray) -> None:
        _write_block(partial / f"{corruption}.npy", (severity - 1) * n, block)
        done.add((corruption, severity))
        _record_blocks(partial, done, order)  # only now is the block trusted
        bar.update(n)

    try:
        if workers == 0 or len(pending) <= 1:
            _start_worker(images, manifest.profile, manifest.seed)
            try:
                for corruption, severity in pending:
                    bar.set_postfix_str(f"{corruption} {severity}")
                    store(*_corrupt_block(corruption, severity))
            finally:
                _WORK.clear()
        else:
            with ProcessPoolExecutor(
                max_workers=workers, initializer=_start_worker, initargs=(images, manifest.profile, manifest.seed)
            ) as pool:
                waiting = {pool.submit(_corrupt_block, c, s) for c, s in pending}
                try:
                    while waiting:
                        finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                        for future in finished:
                            store(*future.result())
                finally:
                    for future in waiting:
                        future.cancel()
    finally:
        bar.close()
    return len(pending)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(partial: Path, out: Path, labels: np.ndarray) -> None:
    """labels.npy last, then the folder moves into place (an old one stays whole until then)."""
    atomic_write(partial / "labels.npy", lambda f: np.save(f, np.tile(labels.astype(np.uint8), len(SEVERITIES))))
    (partial / BLOCKS).unlink()
    (partial / ".lock").unlink()
    _fsync_dir(partial)
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if out.exists():
            os.rename(out, old)
        os.rename(partial, out)
    except OSError as exc:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise RobustCSCError(
            f"could not move the finished suite to {out} ({exc.strerror or exc}); it is complete in {partial}"
        ) from None
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------- reading


def resolve_stored_folder(root: Path, suite_name: str) -> Path:
    """root itself when it holds a manifest, else root/<the suite's folder name> (fashion-mnist-c, ...)."""
    if (root / MANIFEST).is_file():
        return root
    return root / STORED_SUITES[suite_name][1]


def load_stored_suite(
    suite_name: str,
    root: str | Path,
    corruptions: Iterable[str] | str | None = None,
    severities: Iterable[int] | int | None = None,
    n_examples: int | None = None,
    verify_checksums: bool = True,
    with_clean: bool = True,
    data_root: str | Path | None = None,
) -> tuple[CorruptionSuite, Dataset | None, str]:
    """(suite, clean cell or None, a note on the clean cell) of a stored suite ("fashion-mnist-c" / "mnist-c").

    root: the suite folder (it holds suite.json) or a folder holding it as
    fashion-mnist-c/ (mnist-c/). The suite must be of the whole test split of
    its data set; its cells are memory-mapped. The clean cell is the data
    set's test split, found beside the suite or where load_dataset looks; when
    it is found, its pixels and labels must be the ones the suite was made from.
    with_clean=False skips the clean cell (and that check); data_root: where the data set lives when it is
    neither beside the suite nor where load_dataset looks.
    """
    key = suite_name.lower()
    if key not in STORED_SUITES:
        raise RobustCSCError(f"unknown stored suite {suite_name!r}; use one of {', '.join(STORED_SUITES)}")
    dataset = STORED_SUITES[key][0]
    root = Path(root).expanduser()
    folder = resolve_stored_folder(root, key)
    write_hint = f"write it with `robust-csc corrupt --dataset {dataset} --out {folder}`"
    if not folder.is_dir():
        raise RobustCSCError(f"stored suite folder {folder} not found; {write_hint} or pass its folder as --data-root")
    manifest = read_manifest(folder)
    if manifest is None:
        raise RobustCSCError(
            f"{folder} has no readable {MANIFEST} (the record `robust-csc corrupt` writes); {write_hint} --force"
        )
    if not (folder / "labels.npy").is_file():  # written last: its absence marks an unfinished run
        raise RobustCSCError(
            f"stored suite {folder} is unfinished (no labels.npy yet); rerun the `robust-csc corrupt` command "
            "that began it, which resumes where it stopped"
        )
    if manifest.dataset != dataset:
        other = next((name for name, (d, _) in STORED_SUITES.items() if d == manifest.dataset), None)
        use = f"pass --suite {other}" if other else f"evaluate it with a checkpoint of {manifest.dataset}"
        raise RobustCSCError(f"{folder} holds a suite of {manifest.dataset}, not {dataset}; {use} or {write_hint}")
    if manifest.images_per_severity != manifest.test_size:
        raise RobustCSCError(
            f"stored suite {folder} holds {manifest.images_per_severity} images per cell but the {dataset} test split "
            f"has {manifest.test_size}; {write_hint} --force (without --n-examples)"
        )
    n = manifest.images_per_severity
    present = set(manifest.corruptions)
    selected = _select_corruptions(corruptions, present)
    missing = [c for c in selected if c not in present]
    if missing:
        raise RobustCSCError(
            f"stored suite {folder} lacks {', '.join(missing)}; select only the corruptions it holds "
            f"({', '.join(manifest.corruptions)}) or write it again with them"
        )
    chosen_severities = _select_severities(severities)
    # The file checks (shapes, dtypes, label range, label blocks) and the memory maps.
    base = load_cifar_c(
        folder, "cifar10-c", corruptions=selected, severities=chosen_severities,
        n_examples=n_examples, images_per_severity=n,
    )
    clean, note = (_stored_clean(manifest, folder, root, n_examples, verify_checksums, data_root) if with_clean
                   else (None, ""))
    suite = CorruptionSuite(
        manifest.suite_name, manifest.num_classes, base.corruptions, base.severities, base.images_per_cell,
        base.dataset,
    )
    return suite, clean, note


def _stored_clean(
    manifest: SuiteManifest, folder: Path, root: Path, n_examples: int | None, verify_checksums: bool,
    data_root: str | Path | None = None,
) -> tuple[Dataset | None, str]:
    """The clean test split as a cell, checked against the suite's record; (None, why) when it is not found."""
    reason = ""
    first = [Path(data_root)] if data_root is not None else []
    for candidate in dict.fromkeys([*first, root, folder.parent, None]):
        try:
            images, labels, total = clean_test_pixels(manifest.dataset, candidate, verify_checksums=verify_checksums)
        except RobustCSCError as err:
            reason = " ".join(str(err).split())
            continue
        if total != manifest.test_size or _md5(images) != manifest.clean_md5 or _md5(labels) != manifest.labels_md5:
            where = f"in {candidate}" if candidate is not None else "where load_dataset looks (./data, Debian's folder)"
            raise RobustCSCError(
                f"stored suite {folder} was made from {manifest.test_size} other {manifest.dataset} test images than "
                f"the {total} found {where}; write it again from these with `robust-csc corrupt --dataset "
                f"{manifest.dataset} --out {folder} --force`, or pass the data folder it was made from as --data-root"
            )
        n = len(labels) if n_examples is None else n_examples
        return ArrayCell(images[:n], labels[:n]), ""
    return None, f"no clean cell: {reason}"


__all__ = [
    "MANIFEST",
    "STORED_SUITES",
    "SuiteManifest",
    "clean_test_pixels",
    "load_stored_suite",
    "read_manifest",
    "resolve_stored_folder",
    "write_stored_suite",
]
