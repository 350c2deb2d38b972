"""A 14-value lambda sweep against 14 separate harness evaluations of the same cells, and the model-only cost.

On the generated digits suite (default: the noise corruptions at severity 3; an SDNet-18 of the demo's width 16),
per round:
  sweep        - robust_csc.tuning.sweep_cell on every cell with stats="all" (what the tuner runs: each image
                 corrupted once, 14 lambdas per batch, the stem's recon error / code density at every value);
  sweep-plain  - the same with stats="none" (accuracy only);
  separate     - robust_csc.evaluation.harness.evaluate once per lambda (each image corrupted 14 times; the
                 harness records the stem's statistics too);
  model        - 14 passes of the model at a scalar lambda over the cells' images preloaded as tensors
                 (no data work, no statistics), in passes of the sweep's rows (batch_size // 14 * 14: on the
                 CPU the time per image depends on the rows per pass, ~15 % more at 252 rows than at 200):
                 the same model work as sweep-plain;
  model+stats  - the same with the stem's statistics recorded: the same model work as sweep.
Printed as ratios of interleaved rounds (benchmarks/_timing.py); each sweep against the baseline doing the same
model work. Target: sweep <= 1.1x model-only. The speed-up over separate evaluations is bounded by the data work's
share: small on digits noise (a cheap corruption of a small image), larger with expensive corruptions
(try --corruptions glass_blur,zoom_blur).

    OMP_NUM_THREADS=1 python benchmarks/bench_tuning.py [--images 200] [--width 16] [--severities 3] [--repeats 3]
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

NOISE = "gaussian_noise,shot_noise,impulse_noise,speckle_noise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--corruptions", default=NOISE)
    parser.add_argument("--severities", default="3")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("sdnet18", width=args.width, num_classes=10).eval()
    severities = [int(s) for s in args.severities.split(",")]
    suite = generated_suite("digits", corruptions=args.corruptions.split(","), severities=severities,
                            n_examples=args.images)
    grid = default_grid("stem")
    cells = [suite.dataset(c.corruption, c.severity) for c in suite.cells()]
    preloaded = torch.cat([next(iter(DataLoader(data, batch_size=len(data))))[0] for data in cells])
    rows = max(1, args.batch_size // len(grid)) * len(grid)  # the sweep's rows per model pass
    scratch = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    counter = iter(range(10**6))

    def sweep(stats: str) -> None:
        for data in cells:
            sweep_cell(model, data, grid, "stem", batch_size=args.batch_size, stats=stats)

    def separate() -> None:
        store = scratch / f"{next(counter)}.sqlite"  # a new store: nothing skipped
        lambdas = [LambdaSetting("stem", v) for v in grid]
        evaluate(model, suite, store=store, model_name="sdnet18", checkpoint_sha256="0" * 64, dataset=suite.name,
                 lambdas=lambdas, batch_size=args.batch_size)

    def model_only(stats: bool) -> None:
        with torch.inference_mode(), (record_stats(model, "stem") if stats else nullcontext()):
            for value in grid:
                with LambdaSetting("stem", value).applied(model):
                    for chunk in preloaded.split(rows):
                        model(chunk)

    names = ["sweep", "sweep-plain", "separate", "model", "model+stats"]
    fns = [lambda: sweep("all"), lambda: sweep("none"), separate, lambda: model_only(False), lambda: model_only(True)]
    times = dict(zip(names, time_rounds(fns, repeats=args.repeats, warmup=1)))
    print(f"{len(cells)} cells x {args.images} digits ({args.corruptions}; severities {args.severities}), "
          f"{len(grid)} lambdas, sdnet18 width {args.width}, batch {args.batch_size} ({rows} rows per pass), "
          f"{torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved rounds")
    print("median seconds: " + ", ".join(f"{name} {statistics.median(t):.2f}" for name, t in times.items()))
    # ratio_of(baseline, candidate) is a throughput ratio: its inverse is candidate time / baseline time.
    print(f"sweep / model+stats time (same model work, with the stem's statistics): "
          f"{1 / ratio_of(times['model+stats'], times['sweep']):.3f}x  (target <= 1.1x)")
    print(f"sweep-plain / model time (same model work, accuracy only):             "
          f"{1 / ratio_of(times['model'], times['sweep-plain']):.3f}x  (target <= 1.1x)")
    print(f"sweep / model time (the statistics' price included):                  "
          f"{1 / ratio_of(times['model'], times['sweep']):.3f}x")
    print(f"separate / model+stats time:                                           "
          f"{1 / ratio_of(times['model+stats'], times['separate']):.3f}x")
    print(f"speed-up of the sweep over {len(grid)} separate evaluations:                 "
          f"{ratio_of(times['separate'], times['sweep']):.2f}x")


if __name__ == "__main__":
    main()
