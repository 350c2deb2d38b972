"""Throughput of the evaluation harness on the generated digits suite with a small SDNet-18.

Each round evaluates every cell into a fresh results store (nothing is
skipped), and also reads every cell's images without a model, so the printed
share says how much of the time goes to corrupting images rather than to the
network. Rounds are interleaved in one process (benchmarks/_timing.py).

    OMP_NUM_THREADS=1 python benchmarks/bench_harness.py [--images 200] [--width 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from _timing import ratio_of, time_rounds  # noqa: E402

from robust_csc.data.generated import generated_clean, generated_suite  # noqa: E402
from robust_csc.evaluation.harness import evaluate  # noqa: E402
from robust_csc.models import create_model  # noqa: E402

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "contrast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("sdnet18", width=args.width, num_classes=10).eval()
    suite = generated_suite("digits", corruptions=CORRUPTIONS, n_examples=args.images)
    clean = generated_clean("digits", "test", None, args.images)
    cells = len(suite) + 1  # + the clean cell
    scratch = Path(tempfile.mkdtemp(prefix="bench-harness-"))
    counter = iter(range(10**6))

    def run_harness() -> None:
        # A new store every round: every cell is evaluated, none skipped.
        result = evaluate(model, suite, store=scratch / f"{next(counter)}.sqlite", model_name="sdnet18",
                          checkpoint_sha256="0" * 64, dataset=suite.name, clean=clean, batch_size=args.batch_size)
        assert result.cells_run == cells

    def read_images() -> None:
        # The data side alone: every image corrupted and converted, no network.
        for data in [clean] + [suite.dataset(c.corruption, c.severity) for c in suite.cells()]:
            for i in range(len(data)):
                data[i]

    t_harness, t_data = time_rounds([run_harness, read_images], repeats=args.repeats, warmup=1)
    seconds = statistics.median(t_harness)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); sdnet18 width {args.width}, "
          f"{suite!r} + clean, batch {args.batch_size}")
    print(f"evaluate: {cells} cells in {seconds:.2f}s = {cells / seconds:.2f} cells/s, "
          f"{cells * args.images / seconds:.0f} images/s")
    print(f"reading the cells' images alone: {statistics.median(t_data):.2f}s "
          f"({100 / ratio_of(t_harness, t_data):.0f}% of the harness time)")


if __name__ == "__main__":
    main()
