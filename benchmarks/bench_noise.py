"""Batched torch pixel noise (add_noise) against imagecorruptions, one image at a time.

Both sides corrupt the same 1000 CIFAR-shaped images at ImageNet-C severity 3
(the noise level imagecorruptions uses), each from its native input: a float
(B, 3, 32, 32) tensor for add_noise, uint8 (32, 32, 3) arrays for
imagecorruptions.corrupt. Runs are interleaved round-robin in one process, so
the printed speed-up is a per-round ratio, robust to load on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_noise.py [--images 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))

import imagecorruptions  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _timing import ratio_of, time_rounds  # noqa: E402

from robust_csc.corruptions import add_noise, noise_level  # noqa: E402

SEVERITY = 3
TARGET = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    indices = list(range(args.images))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.images} images 32x32, severity {SEVERITY}")
    print(f"{'noise':<10} {'torch img/s':>12} {'per-image img/s':>16} {'speed-up':>9}")
    ratios = []
    for kind in ("gaussian", "shot", "impulse", "speckle"):
        name = f"{kind}_noise"
        level = noise_level(name, SEVERITY, profile="imagenet")

        def batched() -> None:
            add_noise(batch, kind, level, seed=0, indices=indices)

        def per_image() -> None:
            for image in pixels:
                imagecorruptions.corrupt(image, corruption_name=name, severity=SEVERITY)

        t_batched, t_single = time_rounds([batched, per_image], repeats=args.repeats, warmup=1)
        ratio = ratio_of(t_single, t_batched)
        ratios.append(ratio)
        print(
            f"{kind:<10} {args.images / statistics.median(t_batched):>12.0f} "
            f"{args.images / statistics.median(t_single):>16.0f} {ratio:>8.1f}x"
        )
    worst = min(ratios)
    verdict = "meets" if worst >= TARGET else "misses"
    print(f"smallest speed-up {worst:.1f}x ({verdict} the {TARGET:.0f}x target)")


if __name__ == "__main__":
    main()
