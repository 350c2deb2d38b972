"""Images per second of the evaluation harness on a full-size synthetic CIFAR-10-C suite with SDNet-18.

Writes the 15 common corruptions x 5 severities in the published CIFAR-10-C
layout (random pixels, 10,000 images per severity by default: 750,000 images,
2.3 GB) into a scratch folder, loads it with load_cifar_c and times evaluate()
of a randomly initialised sdnet18 over all 75 cells into a fresh results
store. A small 1-cell evaluate runs first, untimed, so CUDA start-up and
kernel selection stay out of the figure. The data side is also timed alone
(the same DataLoader settings over every cell, no model) before the harness
run, so the printout says whether the loader or the model is the limit; that
first pass also brings a reused --data-root folder into the page cache.
Accuracy of random weights on random pixels is meaningless; only the counts
and the seconds matter. Target (issue 3): all 750,000 images in under 60 s on
one H100.

The target run, on a machine with one H100 (the defaults are the full-size run):

    python benchmarks/bench_suite.py

The CPU smoke run (checks the script only; the target is for an H100):

    OMP_NUM_THREADS=2 python benchmarks/bench_suite.py --images-per-severity 40 --width 8

--data-root DIR writes the suite into DIR once (when DIR is missing or empty)
and reuses it on later runs (a real extracted CIFAR-10-C folder works too);
--keep leaves the scratch folder (stores, and the suite unless --data-root)
and prints its path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numpy.lib.format import open_memmap  # noqa: E402

from robust_csc.corruptions.names import COMMON  # noqa: E402
from robust_csc.data.corrupted import SEVERITIES, CorruptionSuite, load_cifar_c  # noqa: E402
from robust_csc.errors import RobustCSCError  # noqa: E402
from robust_csc.evaluation.harness import _cell_batches, evaluate  # noqa: E402
from robust_csc.evaluation.store import ResultsStore  # noqa: E402
from robust_csc.models import create_model  # noqa: E402
from robust_csc.models.checkpoints import load_checkpoint  # noqa: E402

TARGET_IMAGES = 750_000  # 15 corruptions x 5 severities x 10,000 test images
TARGET_SECONDS = 60.0
NUM_CLASSES = 10
_IMAGE_SHAPE = (32, 32, 3)


# ---------------------------------------------------------------- the synthetic suite


def block_pixels(seed: int, corruption: str, severity: int, images_per_severity: int) -> np.ndarray:
    """The uint8 (N, 32, 32, 3) pixels of one severity block: uniform 0..255 from default_rng([seed, k, severity]),
    k = the corruption's position in COMMON. One generator per block, so any block can be regenerated alone."""
    rng = np.random.default_rng([seed, COMMON.index(corruption), severity])
    return rng.integers(0, 256, size=(images_per_severity, *_IMAGE_SHAPE), dtype=np.uint8)


def synthetic_labels(seed: int, images_per_severity: int) -> np.ndarray:
    """The N synthetic test labels, uniform 0..9 from default_rng([seed]), as uint8 (the published dtype)."""
    return np.random.default_rng([seed]).integers(0, NUM_CLASSES, size=images_per_severity, dtype=np.uint8)


def write_synthetic_cifar_c(folder: Path, images_per_severity: int, seed: int = 0) -> Path:
    """Write the 15 common corruptions' `<name>.npy` and `labels.npy` in the CIFAR-10-C layout into folder.

    Each corruption file is a uint8 (5 * N, 32, 32, 3) array, severity-major;
    labels.npy holds the N labels repeated 5 times (uint8). The files are
    filled one severity block at a time through a memory map, so at most one
    block (30 MB at full size) is in memory. Hand-written rather than
    robust_csc.data.corrupted.write_cifar_c, which takes whole arrays (2.3 GB).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = images_per_severity
    for corruption in COMMON:
        array = open_memmap(folder / f"{corruption}.npy", mode="w+", dtype=np.uint8, shape=(len(SEVERITIES) * n, *_IMAGE_SHAPE))
        for severity in SEVERITIES:
            array[(severity - 1) * n : severity * n] = block_pixels(seed, corruption, severity, n)
        array.flush()
        del array  # closes the map
    np.save(folder / "labels.npy", np.tile(synthetic_labels(seed, n), len(SEVERITIES)))
    return folder


def _prepare_data_root(root: Path, images_per_severity: int, seed: int) -> bool:
    """Write the suite into root if it is missing or empty (atomically: a sibling folder renamed into place).

    Returns whether it was written now; a non-empty root is reused as it is.
    """
    if root.is_dir() and any(root.iterdir()):
        return False
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    try:
        write_synthetic_cifar_c(partial, images_per_severity, seed)
        if root.is_dir():
            root.rmdir()  # empty, checked above
        os.rename(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


# ---------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_data_side(suite: CorruptionSuite, batch_size: int, num_workers: int, pin_memory: bool) -> tuple[int, float, float]:
    """(images, seconds, seconds spent waiting for the first batch) of reading every cell, no model.

    Through the harness's own reader (one DataLoader over all cells), so worker start-up is counted as it runs there.
    """
    datas = [suite.dataset(cell.corruption, cell.severity) for cell in suite.cells()]
    images, first_batch_wait = 0, 0.0
    start = time.perf_counter()
    for i, batches in enumerate(_cell_batches(datas, batch_size, num_workers, pin_memory)):
        for j, batch in enumerate(batches):
            if i == j == 0:
                first_batch_wait = time.perf_counter() - start
            images += int(batch[0].shape[0])
    return images, time.perf_counter() - start, first_batch_wait


def check_store(path: Path, suite: CorruptionSuite, model_name: str) -> None:
    """Every cell of the suite is in the store exactly once with n == images per cell (else AssertionError).

    Explicit raises rather than assert statements: python -O must not turn the check off.
    """
    with ResultsStore(path) as store:
        frame = store.to_frame(model=model_name)
    expected = {(c.corruption, c.severity) for c in suite.cells()}
    got = list(zip(frame["corruption"], frame["severity"].astype(int)))
    if len(got) != len(expected) or set(got) != expected:
        raise AssertionError(f"the store holds {len(got)} cells, not the suite's {len(expected)} (each once)")
    short = frame[frame["n"] != suite.images_per_cell]
    if not short.empty:
        raise AssertionError(
            f"{len(short)} cells were evaluated on n != {suite.images_per_cell} images, "
            f"such as {short.iloc[0]['corruption']} {short.iloc[0]['severity']} with n={short.iloc[0]['n']}"
        )


def verdict(device: torch.device, device_name: str, projected: float) -> str:
    """The line that judges the projected seconds for 750,000 images against the H100 target."""
    target = f"{TARGET_IMAGES:,} images in under {TARGET_SECONDS:.0f} s on one H100"
    if device.type != "cuda":
        return (f"verdict: not judged -- the target ({target}) is for one H100; this {device.type} run only "
                f"checks the script (projected {projected:.1f} s here)")
    outcome = "MET" if projected < TARGET_SECONDS else "MISSED"
    where = "" if "H100" in device_name else f" (measured on {device_name}, not an H100: indicative only)"
    return f"verdict: target {outcome} -- projected {projected:.1f} s for {TARGET_IMAGES:,} images, target {TARGET_SECONDS:.0f} s{where}"


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-severity", type=int, default=10000,
                        help="N: images per cell; 10000 = the full-size suite (default)")
    parser.add_argument("--width", type=int, default=64, help="sdnet18 width (default 64, the published model)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="evaluate this checkpoint (10 classes) instead of a random sdnet18; --width is then ignored")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 1024 on cuda, 256 on cpu")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers; default: min(8, CPU count) on cuda, 0 on cpu")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder of the suite: written when missing or empty, reused otherwise, never removed")
    parser.add_argument("--scratch-parent", type=Path, default=None,
                        help="where the scratch folder is made (default: the system temp folder)")
    parser.add_argument("--keep", action="store_true", help="leave the scratch folder and print its path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixels, labels and model weights")
    args = parser.parse_args(argv)
    if args.images_per_severity < 1 or args.width < 1:
        parser.error("--images-per-severity and --width must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (1024 if cuda else 256)
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    n = args.images_per_severity
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"

    scratch = Path(tempfile.mkdtemp(prefix="bench-suite-", dir=args.scratch_parent))
    try:
        root = args.data_root if args.data_root is not None else scratch / "CIFAR-10-C"
        start = time.perf_counter()
        written = _prepare_data_root(root, n, args.seed)
        wrote = f"written in {time.perf_counter() - start:.1f} s" if written else "reused"
        suite = load_cifar_c(root, "cifar10-c", corruptions=COMMON, images_per_severity=n)
        images = len(suite) * suite.images_per_cell

        torch.manual_seed(args.seed)
        if args.checkpoint is not None:
            model, meta = load_checkpoint(args.checkpoint, expect_num_classes=NUM_CLASSES)
            model_name, described = meta["arch"], f"{meta['arch']} from {args.checkpoint}"
        else:
            model = create_model("sdnet18", num_classes=NUM_CLASSES, width=args.width)
            model_name, described = "sdnet18", f"sdnet18 width {args.width} (random weights)"
        model.eval()
        common = dict(model_name=model_name, checkpoint_sha256="0" * 64, dataset="cifar10",
                      batch_size=batch_size, num_workers=workers, device=device)

        print(f"device: {device_name}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
              + (f"; cudnn.benchmark {torch.backends.cudnn.benchmark}, TF32 conv {torch.backends.cudnn.allow_tf32}, "
                 f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}" if cuda else ""))
        print(f"suite: {root} ({wrote}); {len(suite)} cells x {suite.images_per_cell} = {images} images")
        print(f"model: {described}; batch {batch_size}, {workers} worker(s)")

        # Warm-up, untimed: CUDA context, allocator and kernel choice on one small cell, its own store.
        warm = load_cifar_c(root, "cifar10-c", corruptions=COMMON[:1], severities=1,
                            n_examples=min(n, 2 * batch_size), images_per_severity=n)
        evaluate(model, warm, store=scratch / "warmup.sqlite", **common)
        _sync(device)

        data_images, data_seconds, first_wait = time_data_side(suite, batch_size, workers, pin_memory=cuda)
        if data_images != images:
            raise AssertionError(f"the data side read {data_images} images, not {images}")

        store_path = scratch / "suite.sqlite"
        start = time.perf_counter()
        result = evaluate(model, suite, store=store_path, **common)
        _sync(device)
        seconds = time.perf_counter() - start
        if result.cells_run != len(suite):
            raise AssertionError(f"evaluate ran {result.cells_run} cells, not {len(suite)}")
        check_store(store_path, suite, model_name)

        rate, data_rate = images / seconds, data_images / data_seconds
        projected = TARGET_IMAGES / rate
        print(f"harness (evaluate): {images} images in {seconds:.2f} s = {rate:,.0f} images/s "
              f"({len(suite)} cells stored, each n={n})")
        print(f"data side alone (DataLoader, no model): {data_images} images in {data_seconds:.2f} s = "
              f"{data_rate:,.0f} images/s; {first_wait:.2f} s of it waiting for the first batch")
        # With workers the loader overlaps the model, so the data side limits once it nears the whole time;
        # without, the two add up and the larger half limits.
        limit = "the data side" if data_seconds >= (0.8 if workers else 0.5) * seconds else "the model"
        print(f"limit: {limit} (data side alone takes {100 * data_seconds / seconds:.0f}% of the harness time)")
        print(f"projected for {TARGET_IMAGES:,} images: {projected:.1f} s")
        print(verdict(device, device_name, projected))
    finally:
        if args.keep:
            print(f"kept the scratch folder {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RobustCSCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
