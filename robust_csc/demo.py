"""The offline demo: SDNet-18 against ResNet-18 on the embedded digits set, and lambda at test time.

Both models are small (width 16, CIFAR stem) and trained with the digits
recipe; then the SDNet is evaluated at several lambdas, on clean test images
and on images with Gaussian noise, where a larger lambda (a sparser code)
is what the SDNet paper uses for robustness.  Last, both checkpoints are
evaluated on a corruption suite generated from the digits test set (CIFAR-10-C
parameters, all 5 severities) into ``out_dir/results.sqlite``.  A CLI job: it prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from robust_csc.csc import lambda_override
from robust_csc.data import load_dataset
from robust_csc.models.checkpoints import load_checkpoint
from robust_csc.training import FINAL_NAME, TrainConfig, evaluate_accuracy, train

DEMO_WIDTH = 16
DEMO_LAMBDAS = (0.05, 0.1, 0.2, 0.5, 1.0)
NOISE_STD = 0.3  # images are in [0, 1]
NOISE_SEED = 1234
# The generated suite: the 4 noise corruptions and a few others that keep the step
# short (the slow ones, zoom and glass blur, are left out), on the first test images.
SUITE_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "motion_blur", "fog", "contrast", "pixelate", "jpeg_compression",
)
SUITE_IMAGES = 200
QUICK_SUITE_CORRUPTIONS = ("gaussian_noise", "contrast")
QUICK_SUITE_IMAGES = 100
STORE_NAME = "results.sqlite"


def _noisy(dataset, std: float, seed: int) -> TensorDataset:
    """The test images with fixed Gaussian noise, clipped back to [0, 1]."""
    images, labels = dataset.tensors
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen) * std
    return TensorDataset((images + noise).clamp_(0.0, 1.0), labels)


def run_demo(
    out_dir: str | Path = "runs/demo",
    quick: bool = False,
    *,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train sdnet18 and resnet18 on digits, save both, print and return the accuracies.

    quick trains for 4 epochs instead of the recipe's 15 (a smoke test: the
    accuracies are lower).
    """
    out_dir = Path(out_dir)
    epochs = 4 if quick else None
    test = load_dataset("digits", "test")
    noisy = _noisy(test, NOISE_STD, NOISE_SEED)
    clean_loader = DataLoader(test, batch_size=450)
    noisy_loader = DataLoader(noisy, batch_size=450)

    echo(f"robust-csc demo: sdnet18 vs resnet18 (width {DEMO_WIDTH}, CIFAR stem) on digits, output in {out_dir}")
    started = time.perf_counter()
    results: dict = {"out_dir": str(out_dir), "models": {}}
    models = {}
    for arch in ("sdnet18", "resnet18"):
        echo(f"training {arch}")
        config = TrainConfig(
            model=arch,
            dataset="digits",
            out_dir=out_dir / arch,
            epochs=epochs,
            width=DEMO_WIDTH,
            resume=False,  # a demo always shows a fresh run
            progress=progress,
        )
        summary = train(config, log=lambda line: echo(f"  {line}"))
        # Read the checkpoint back: the numbers below come from the saved file.
        model, _ = load_checkpoint(Path(config.out_dir) / FINAL_NAME)
        models[arch] = model
        results["models"][arch] = dict(
            checkpoint=str(Path(config.out_dir) / FINAL_NAME),
            clean_acc=evaluate_accuracy(model, clean_loader),
            noisy_acc=evaluate_accuracy(model, noisy_loader),
            train_seconds=summary["seconds"],
        )

    sdnet = models["sdnet18"]
    sweep = []
    for lam in DEMO_LAMBDAS:
        with lambda_override(sdnet, lam):
            clean, noisy_acc = evaluate_accuracy(sdnet, clean_loader), evaluate_accuracy(sdnet, noisy_loader)
        sweep.append(dict(lam=lam, clean_acc=clean, noisy_acc=noisy_acc))
    results["sdnet18_lambda_sweep"] = sweep
    suite_started = time.perf_counter()
    results["suite"] = _evaluate_suite(results, out_dir, quick, progress)
    results["suite_seconds"] = time.perf_counter() - suite_started
    results["seconds"] = time.perf_counter() - started

    echo("")
    echo(f"test accuracy (450 digits; noisy = Gaussian noise std {NOISE_STD})")
    echo(f"{'model':<10} {'clean':>7} {'noisy':>7}")
    for arch, r in results["models"].items():
        echo(f"{arch:<10} {r['clean_acc']:>7.4f} {r['noisy_acc']:>7.4f}")
    echo("")
    echo("sdnet18 test accuracy by lambda at test time (trained with lambda 0.1)")
    echo(f"{'lambda':<10} {'clean':>7} {'noisy':>7}")
    for row in sweep:
        echo(f"{row['lam']:<10g} {row['clean_acc']:>7.4f} {row['noisy_acc']:>7.4f}")
    echo("")
    from robust_csc.cli import report_lines

    suite = results["suite"]
    echo(
        f"corruption suite {suite['name']}: first {suite['images']} test digits, "
        f"{len(suite['corruptions'])} corruptions x 5 severities ({results['suite_seconds']:.0f}s)"
    )
    for arch, evaluation in suite["models"].items():
        for line in report_lines(evaluation["tables"], evaluation["summaries"], title=arch):
            echo(line)
    echo(f"store: {suite['store']}, cells run {suite['cells_run']}, skipped {suite['cells_skipped']}")
    for arch, r in results["models"].items():
        echo(f"checkpoint {arch}: {r['checkpoint']}")
    echo(f"total time {results['seconds']:.0f}s")
    return results


def _evaluate_suite(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """Both saved checkpoints on the generated digits suite, into out_dir/results.sqlite."""
    from robust_csc.data.generated import generated_clean, generated_suite
    from robust_csc.evaluation.harness import evaluate_checkpoint
    from robust_csc.evaluation.store import ResultsStore

    corruptions = QUICK_SUITE_CORRUPTIONS if quick else SUITE_CORRUPTIONS
    n = QUICK_SUITE_IMAGES if quick else SUITE_IMAGES
    suite = generated_suite("digits", profile="cifar", corruptions=corruptions, n_examples=n)
    clean = generated_clean("digits", "test", None, n)
    store_path = out_dir / STORE_NAME
    out = dict(name=suite.name, images=n, corruptions=list(suite.corruptions), store=str(store_path), models={})
    run = skipped = 0
    with ResultsStore(store_path) as store:
        for arch, r in results["models"].items():
            # Same data set and split names as `robust-csc evaluate --suite generated --n-examples N`,
            # so the CLI finds these cells done and the demo's rerun skips them.
            result = evaluate_checkpoint(
                r["checkpoint"], suite, store=store, clean=clean, dataset=suite.name, split=f"test[:{n}]",
                progress=progress,
            )
            run, skipped = run + result.cells_run, skipped + result.cells_skipped
            out["models"][arch] = dict(tables=result.tables, summaries=result.summaries)
    out.update(cells_run=run, cells_skipped=skipped)
    return out
