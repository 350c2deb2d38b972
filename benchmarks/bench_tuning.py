"""A 14-value lambda sweep against 14 separate harness evaluations of the same cells, and the model-only cost.

On the generated digits suite (noise corruptions, small SDNet-18), per round:
  sweep     - robust_csc.tuning.sweep_cell on every cell (each image corrupted once, 14 lambdas per batch);
  separate  - robust_csc.evaluation.harness.evaluate once per lambda (each image corrupted 14 times);
  model     - 14 passes of the model over the cells' images preloaded as tensors (no data work).
Printed as ratios of interleaved rounds (benchmarks/_timing.py). Target: sweep <= 1.1x model-only.

    OMP_NUM_THREADS=1 python benchmarks/bench_tuning.py [--images 200] [--width 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from contextlib import nullcontext  # noqa: E402

import torch  # noqa: E402
from _timing import ratio_of, time_rounds  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from robust_csc.csc import record_stats  # noqa: E402
from robust_csc.data.generated import generated_suite  # noqa: E402
from robust_csc.evaluation.harness import evaluate  # noqa: E402
from robust_csc.lambdas import LambdaSetting  # noqa: E402
from robust_csc.models import create_model  # noqa: E402
from robust_csc.tuning import default_grid, sweep_cell  # noqa: E402

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--severities", default="1,3,5")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("sdnet18", width=args.width, num_classes=10).eval()
    severities = [int(s) for s in args.severities.split(",")]
    suite = generated_suite("digits", corruptions=CORRUPTIONS, severities=severities, n_examples=args.images)
    grid = default_grid("stem")
    cells = [suite.dataset(c.corruption, c.severity) for c in suite.cells()]
    preloaded = [next(iter(DataLoader(data, batch_size=len(data))))[0] for data in cells]
    scratch = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    counter = iter(range(10**6))

    def sweep() -> None:
        for data in cells:
            sweep_cell(model, data, grid, "stem", batch_size=args.batch_size)

    def separate() -> None:
        store = scratch / f"{next(counter)}.sqlite"  # a new store: nothing skipped
        lambdas = [LambdaSetting("stem", v) for v in grid]
        evaluate(model, suite, store=store, model_name="sdnet18", checkpoint_sha256="0" * 64, dataset=suite.name,
                 lambdas=lambdas, batch_size=args.batch_size)

    def model_only(stats: bool) -> None:
        with torch.inference_mode(), (record_stats(model, "stem") if stats else nullcontext()):
            for images in preloaded:
                for value in grid:
                    with LambdaSetting("stem", value).applied(model):
                        for chunk in images.split(args.batch_size):
                            model(chunk)

    t_sweep, t_separate, t_model, t_stats = time_rounds(
        [sweep, separate, lambda: model_only(False), lambda: model_only(True)], repeats=args.repeats, warmup=1)
    print(f"{len(cells)} cells x {args.images} digits, {len(grid)} lambdas, sdnet18 width {args.width}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"median seconds: sweep {statistics.median(t_sweep):.2f}, separate {statistics.median(t_separate):.2f}, "
          f"model only {statistics.median(t_model):.2f}, with stats {statistics.median(t_stats):.2f}")
    print(f"sweep / model-only time:      {1 / ratio_of(t_model, t_sweep):.3f}x  (target <= 1.1x)")
    # The sweep records the stem's recon error (one more synthesis per pass); so does the harness.
    print(f"sweep / model-only with the stem's recon stats: {1 / ratio_of(t_stats, t_sweep):.3f}x")
    print(f"separate / model-only time:   {1 / ratio_of(t_model, t_separate):.3f}x")
    print(f"speed-up of the sweep over 14 separate evaluations: {ratio_of(t_separate, t_sweep):.2f}x")


if __name__ == "__main__":
    main()
