"""Images per second of the harness (evaluate) on a stored suite, as a fraction of the model's own forward throughput.

The question (issue 15): how close does `evaluate` on a full stored suite
(CIFAR-10-C layout: 15 x 5 x 10,000 = 750,000 images, or Fashion-MNIST-C
with 19 corruptions) come to the speed of the model alone? Four candidates
run round-robin in one process (benchmarks/_timing.py), each round on the
same number of images with the same model and batch size:

  model      the model's forward on batches already in memory as float tensors
             (no reading, no decoding, no statistics, no store): the ceiling;
  model+stats  the same with the stem's reconstruction statistics recorded,
             as the harness records them (SDNet only);
  harness    evaluate() of the round's cells into a fresh results store;
  data       the harness's reader alone over the round's cells (no model).

A round is one corruption's 5 cells; each harness round evaluates the next
corruption of the suite, so --rounds 15 (19 for Fashion-MNIST-C) reads every
cell from the stored files (memory-mapped) once. Ratios are
medians over rounds of the per-round ratio (time of model / time of the
other); target: harness >= 0.9 of the model for sdnet18 at widths 16 and 64.

    python benchmarks/bench_suite_ratio.py --suite-root /path/to/fashion-mnist-c --width 16
    python benchmarks/bench_suite_ratio.py --width 64 --n-per-cell 2000 --rounds 7
    OMP_NUM_THREADS=1 python benchmarks/bench_suite_ratio.py --clock cpu ...   # on a machine shared with other jobs
    OMP_NUM_THREADS=2 python benchmarks/bench_suite_ratio.py --images-per-severity 64 --width 8 --rounds 3

Without --suite-root a synthetic CIFAR-10-C suite (bench_suite.py's writer,
--images-per-severity images per cell) is written into a scratch folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from _timing import ratio_of, time_rounds  # noqa: E402
from bench_suite import write_synthetic_cifar_c  # noqa: E402
from robust_csc.corruptions.names import COMMON  # noqa: E402
from robust_csc.csc import csc_layers, record_stats  # noqa: E402
from robust_csc.data.corrupted import CorruptionSuite, load_cifar_c  # noqa: E402
from robust_csc.data.stored import MANIFEST, load_stored_suite  # noqa: E402
from robust_csc.errors import RobustCSCError  # noqa: E402
from robust_csc.evaluation.harness import _cell_batches, evaluate  # noqa: E402
from robust_csc.models import create_model  # noqa: E402
from robust_csc.runtime import keep_freed_memory  # noqa: E402

NUM_CLASSES = 10


def open_suite(root: Path | None, scratch: Path, images_per_severity: int, n: int | None) -> CorruptionSuite:
    """A stored Fashion-MNIST-C / MNIST-C folder (it holds suite.json), a CIFAR-10-C folder, or a synthetic one;
    the first n images of every cell (all when None)."""
    if root is None:
        root = write_synthetic_cifar_c(scratch / "CIFAR-10-C", images_per_severity)
        return load_cifar_c(root, "cifar10-c", corruptions=COMMON, n_examples=n, images_per_severity=images_per_severity)
    if (root / MANIFEST).is_file():
        dataset = json.loads((root / MANIFEST).read_text())["dataset"]
        return load_stored_suite(f"{dataset}-c", root, n_examples=n, with_clean=False)[0]
    return load_cifar_c(root, "cifar10-c", corruptions=COMMON, n_examples=n)


def round_suites(suite: CorruptionSuite) -> list[CorruptionSuite]:
    """One suite per corruption (its 5 severities): the rounds' work, in the suite's order."""
    return [
        CorruptionSuite(suite.name, suite.num_classes, (c,), suite.severities, suite.images_per_cell, suite.dataset)
        for c in suite.corruptions
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite-root", type=Path, default=None, help="a stored suite folder (default: synthetic)")
    parser.add_argument("--images-per-severity", type=int, default=10000, help="synthetic suite only")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--model", default="sdnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-per-cell", type=int, default=None, help="images per cell [default: all]")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (a shared machine; use one thread)")
    parser.add_argument("--scratch-parent", type=Path, default=None)
    args = parser.parse_args(argv)

    keep_freed_memory()  # as the CLI's evaluation does on the CPU
    scratch = Path(tempfile.mkdtemp(prefix="bench-ratio-", dir=args.scratch_parent))
    try:
        suite = open_suite(args.suite_root, scratch, args.images_per_severity, args.n_per_cell)
        n = suite.images_per_cell
        parts = round_suites(suite)
        cells_per_round = len(suite.severities)
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=NUM_CLASSES, width=args.width).eval()
        has_csc = bool(csc_layers(model))
        images_per_round = cells_per_round * n
        # The model's input, decoded once: one cell's images, run as often as the round has cells.
        first = parts[0].dataset(parts[0].cells()[0].corruption, parts[0].cells()[0].severity)
        decoded = [first.read_batch(lo, min(lo + args.batch_size, n))[0] for lo in range(0, n, args.batch_size)]

        def model_only() -> None:
            with torch.inference_mode():
                for _ in range(cells_per_round):
                    for x in decoded:
                        model(x).argmax(dim=1)

        def model_with_stats() -> None:
            with torch.inference_mode(), record_stats(model, layers="stem") as layers:
                for _ in range(cells_per_round):
                    for x in decoded:
                        model(x).argmax(dim=1)
                        last = next(iter(layers.values())).last_stats
                        last.recon_error.sum(dtype=torch.float64), last.code_density.sum(dtype=torch.float64)

        counter = {"harness": 0, "data": 0}
        images_read = []

        def harness() -> None:
            k = counter["harness"]
            counter["harness"] += 1
            part = parts[k % len(parts)]
            result = evaluate(model, part, store=scratch / f"round{k}.sqlite", model_name=args.model,
                              checkpoint_sha256="0" * 64, dataset=suite.name, batch_size=args.batch_size)
            if result.cells_run != len(part.cells()):
                raise AssertionError(f"evaluate ran {result.cells_run} cells, not {len(part.cells())}")

        def data_only() -> None:
            k = counter["data"]
            counter["data"] += 1
            part = parts[k % len(parts)]
            datas = [part.dataset(c.corruption, c.severity) for c in part.cells()]
            images_read.append(sum(int(b[0].shape[0]) for cell in _cell_batches(datas, args.batch_size, 0, False)
                                   for b in cell))

        fns = [model_only, harness, data_only] + ([model_with_stats] if has_csc else [])
        names = ["model", "harness", "data"] + (["model+stats"] if has_csc else [])
        print(f"suite: {suite!r}; rounds of {cells_per_round} cells x {n} images = {images_per_round} images",
              flush=True)
        print(f"model: {args.model} width {args.width} (random weights), batch {args.batch_size}, "
              f"{torch.get_num_threads()} thread(s), torch {torch.__version__}; {args.clock} clock; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        start = time.perf_counter()
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        times = time_rounds(fns, repeats=args.rounds, warmup=args.warmup, clock=clock)
        if any(count != images_per_round for count in images_read):
            raise AssertionError(f"the data side read {images_read}, not {images_per_round} per round")
        base = times[0]
        for name, seconds in zip(names, times):
            rate = images_per_round / statistics.median(seconds)
            per_round = [b / c for b, c in zip(base, seconds)]
            ratio = "" if name == "model" else (
                f", {ratio_of(base, seconds):.3f} x the model (median of per-round ratios; "
                f"{min(per_round):.3f}..{max(per_round):.3f})"
            )
            print(f"{name:<12} {rate:>9,.0f} images/s{ratio}")
        harness_ratio = ratio_of(base, times[1])
        print(f"harness / model: {harness_ratio:.3f} (target >= 0.9: {'MET' if harness_ratio >= 0.9 else 'MISSED'}); "
              f"{counter['harness']} harness calls, {time.perf_counter() - start:.0f} s in all")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RobustCSCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
