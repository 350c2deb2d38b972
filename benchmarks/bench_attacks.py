"""Attack cost of SDNet-18 relative to ResNet-18 at CIFAR shape (3x32x32, 10 classes).

    .venv/bin/python benchmarks/bench_attacks.py                      # CPU: small width, few images, short AutoAttack
    .venv/bin/python benchmarks/bench_attacks.py --width 64 --n-examples 100 --n-iter 100
    .venv/bin/python benchmarks/bench_attacks.py --gpu                # AutoAttack standard, 1000 images, sdnet18 (a GPU)

Prints seconds per 100 images for PGD-10 and AutoAttack standard and the
ratio sdnet18 / resnet18, measured round-robin in one process (median of
per-round ratios).  The models are untrained; the labels are the models' own
predictions, so every image is attacked (clean accuracy 100%), which is the
cost that matters.  AutoAttack stops attacking a point once broken, so its
time depends on how robust the model is: on non-robust models it is mostly
APGD-CE's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import time_rounds  # noqa: E402

from robust_csc.attacks import make_adapter, make_spec  # noqa: E402
from robust_csc.models import create_model  # noqa: E402


def build(arch: str, width: int, device: str):
    torch.manual_seed(0)
    return create_model(arch, num_classes=10, stem="cifar", width=width).to(device).eval()


def attack_fn(model, spec, images, eps, batch_size):
    with torch.no_grad():
        labels = model(images).argmax(1)  # every point clean-correct: all of them get attacked
    adapter = make_adapter(spec, "Linf", 10, seed=0, batch_size=batch_size)

    def run():
        torch.manual_seed(0)
        adapter.perturb(model, images, labels, eps)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage (64 = the paper's models)")
    parser.add_argument("--n-examples", type=int, default=16, help="images per timed run")
    parser.add_argument("--n-iter", type=int, default=10, help="AutoAttack iterations per APGD/FAB run (100 = standard)")
    parser.add_argument("--n-queries", type=int, default=500, help="AutoAttack Square queries (5000 = standard)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=8 / 255, help="PGD's epsilon")
    parser.add_argument("--aa-eps", type=float, default=1e-4,
                        help="AutoAttack's epsilon: tiny by default, so no point breaks and every attack of the suite runs on every image")
    parser.add_argument("--gpu", action="store_true", help="AutoAttack standard on 1000 images for sdnet18 (width 64)")
    args = parser.parse_args()

    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA device")
        images = torch.rand(1000, 3, 32, 32, device="cuda")
        model = build("sdnet18", 64, "cuda")
        run = attack_fn(model, make_spec("autoattack"), images, args.eps, batch_size=500)
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        print(f"AutoAttack standard, sdnet18 width 64, 1000 images on {torch.cuda.get_device_name()}: "
              f"{time.perf_counter() - start:.1f} s")
        return

    device = "cpu"
    images = torch.rand(args.n_examples, 3, 32, 32)
    models = {arch: build(arch, args.width, device) for arch in ("resnet18", "sdnet18")}
    aa_params = {}
    if args.n_iter != 100:
        aa_params["steps"] = args.n_iter
    if args.n_queries != 5000:
        aa_params["n_queries"] = args.n_queries
    specs = {"PGD-10": make_spec("pgd"), "AutoAttack standard": make_spec("autoattack", aa_params)}
    print(f"CPU, {torch.get_num_threads()} threads, width {args.width}, {args.n_examples} images, PGD eps {args.eps:.4f}, AutoAttack eps {args.aa_eps:g}, "
          f"AutoAttack n_iter {args.n_iter}, Square queries {args.n_queries}, {args.repeats} rounds")
    for label, spec in specs.items():
        eps = args.aa_eps if spec.name == "autoattack" else args.eps
        fns = [attack_fn(models[a], spec, images, eps, args.n_examples) for a in ("resnet18", "sdnet18")]
        times = time_rounds(fns, repeats=args.repeats, warmup=1)
        per100 = [statistics.median(t) * 100 / args.n_examples for t in times]
        ratio = statistics.median(s / r for r, s in zip(times[0], times[1]))
        print(f"{label:<20} s/100 images: resnet18 {per100[0]:.2f}, sdnet18 {per100[1]:.2f}; sdnet18/resnet18 time {ratio:.2f}x")


if __name__ == "__main__":
    main()
