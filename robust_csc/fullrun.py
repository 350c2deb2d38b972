"""The full-size run on a real benchmark: Fashion-MNIST-C, all 10,000 test images in every cell.

    robust-csc demo --dataset fashion-mnist --full [--out runs/fashion-mnist] [--suite-dir DIR]

1. Write (or reuse) the stored suite: 19 corruptions x 5 severities x 10,000 test images with
   the CIFAR-10-C parameters, on the images as the models see them (padded to 32x32, grey
   repeated to RGB), in the CIFAR-10-C layout; resumable block by block.
2. In two worker processes side by side, one thread each (on this 2-core machine two threads
   for one model are slower than one: the CSC stem's unfold waits for the busy other core):
   - SDNet-18 (stem lambda 0.1, the paper's default): train; evaluate the clean set and all
     95 cells; tune the stem lambda on the tuning half of the four noise corruptions (grid and
     label-free recon rule) and score it on the other half; the test-time baselines (bn-adapt,
     tent, tent on top of the recon rule) on that half; PGD-10 at 1-8/255 and AutoAttack
     (standard) at 8/255 on the first 1,000 test points; PGD on the recon rule with the
     adaptive attacks, beside the trained lambda, on its reporting split; the noise curve.
   - ResNet-18: train; evaluate; bn-adapt and tent on the same reporting half; the same attacks.
3. The report, with ResNet-18 as the baseline.

Sizes: width 16 (width 32 costs 3.2x per image), 3 epochs of the CIFAR recipe, a 5-value stem
grid. On this 2-core machine the run took about two hours, 35 minutes of it training (measured,
per step, in docs/fashion-mnist.md). Every step is resumable: checkpoints, suite blocks and store
cells are kept, so running the command again continues where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from robust_csc.errors import RobustCSCError

DATASETS = ("fashion-mnist", "mnist")
SDNET_LAMBDA = 0.1
NOISE = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
PGD_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
AUTOATTACK_EPSILON = 8 / 255
POLICY_ATTACK_EPSILONS = (1 / 255, 4 / 255)
CURVE_LEVELS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


@dataclass(frozen=True)
class Sizes:
    """What the run's cost depends on; the defaults are the full run, tests use a tiny one."""

    width: int = 16
    epochs: int = 3
    grid: tuple[float, ...] = (0.1, 0.2, 0.4, 0.7, 1.0)
    attack_points: int = 1000
    policy_attack_points: int = 500
    headline_attacks: tuple[str, ...] = ("autoattack", "pgd")
    train_subset: int | None = None
    batch_size: int | None = None  # None: the recipe's (128)
    corruptions: tuple[str, ...] | None = None  # None: all 19


FULL = Sizes()
CURVE_LAMBDAS = (None, "stem=0.4", "stem=1")
STORE = "results.sqlite"
POLICY = "lambda_policy.json"


def _log_to(path: Path) -> Callable[[str], None]:
    def log(line: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    return log


def _stage(log, name, started):
    log(f"{name} done in {time.perf_counter() - started:.0f}s")
    return time.perf_counter()


def _train(arch: str, dataset: str, out: Path, data_root, sizes: Sizes, log) -> Path:
    from robust_csc.training import FINAL_NAME, TrainConfig, train

    config = TrainConfig(model=arch, dataset=dataset, out_dir=out / arch, epochs=sizes.epochs, width=sizes.width,
                         lam=SDNET_LAMBDA if arch == "sdnet18" else None, data_root=data_root,
                         train_subset=sizes.train_subset, batch_size=sizes.batch_size)
    summary = train(config, log=lambda line: log(f"  {line}"))
    log(f"{arch} trained: test accuracy {summary['test_acc']:.4f}")
    return out / arch / FINAL_NAME


def model_pipeline(arch: str, dataset: str, out: str, suite_dir: str, data_root: str | None, sizes: dict) -> dict:
    """One model's whole pipeline (run in its own process with one thread, or in this one)."""
    import torch

    sizes = Sizes(**sizes)
    torch.set_num_threads(1)
    out, suite_dir = Path(out), Path(suite_dir)
    log = _log_to(out / f"{arch}.log")
    store = out / STORE
    started = time.perf_counter()
    checkpoint = _train(arch, dataset, out, data_root, sizes, log)
    started = _stage(log, "training", started)

    from robust_csc.attacks import attack_checkpoint
    from robust_csc.data.stored import load_stored_suite
    from robust_csc.evaluation.harness import evaluate_checkpoint

    stored = "fashion-mnist-c" if dataset == "fashion-mnist" else "mnist-c"
    suite, clean, _ = load_stored_suite(stored, suite_dir, data_root=data_root)
    evaluate_checkpoint(checkpoint, suite, store=store, clean=clean, dataset=suite.name, split="test", batch_size=256)
    started = _stage(log, "evaluation of the clean set and all 95 cells", started)

    noise, noise_clean, _ = load_stored_suite(stored, suite_dir, corruptions=NOISE, data_root=data_root)
    options = {"suite": stored, "dataset": None, "profile": None, "seed": 0, "n_examples": None}
    policy = None
    if arch == "sdnet18":
        from robust_csc.tuning import load_policy, tune_checkpoint

        result = tune_checkpoint(checkpoint, noise, store=store, clean=noise_clean, grid=sizes.grid, layers="stem",
                                 rule="recon", out=out / POLICY, force=True, dataset=noise.name, split_base="test",
                                 suite_options=options)
        for line in result.lines():
            log(f"  {line}")
        from robust_csc.models.checkpoints import checkpoint_hash

        policy = load_policy(out / POLICY, checkpoint_hash(checkpoint))
        started = _stage(log, "lambda tuning", started)

    for attacks, epsilons in ((("pgd",), PGD_EPSILONS), (sizes.headline_attacks, (AUTOATTACK_EPSILON,))):
        result = attack_checkpoint(checkpoint, store=store, attacks=attacks, norm="Linf", epsilons=epsilons,
                                   n_examples=sizes.attack_points, batch_size=250)
        for line in result.lines():
            log(f"  {line}")
    started = _stage(log, "attacks on 1,000 points", started)

    from robust_csc.adaptation import BNAdapt, Tent, compose
    from robust_csc.tuning.splits import TuningSplit

    settings = [None, BNAdapt(prior=0), Tent()]
    split = "test"
    if policy is not None:  # the policy restricts the whole run to its reporting half
        settings += [policy, compose(Tent(), policy)]
    else:  # the baseline on the same reporting half: the halving depends on the image count and the seed only
        halving = TuningSplit.of(noise.images_per_cell, "test", 0)
        noise, noise_clean, split = halving.suite(noise, "report"), halving.subset(noise_clean, "report"), halving.report_name
    evaluate_checkpoint(checkpoint, noise, store=store, clean=noise_clean, dataset=noise.name, split=split,
                        lambdas=settings, batch_size=128)
    started = _stage(log, "test-time baselines on the noise cells' reporting half", started)

    if policy is not None:
        from robust_csc.attacks import attack_policy_beside_trained

        for result in attack_policy_beside_trained(checkpoint, policy, store=store, attacks=("pgd",), norm="Linf",
                                                   epsilons=POLICY_ATTACK_EPSILONS,
                                                   n_examples=sizes.policy_attack_points, batch_size=250):
            for line in result.lines():
                log(f"  {line}")
        started = _stage(log, "the recon rule under attack, adaptive attacks included", started)

        from robust_csc.data.generated import generated_clean
        from robust_csc.evaluation.noise_curve import curve_dataset, noise_curve, save_curve, store_curve
        from robust_csc.models.checkpoints import checkpoint_hash, load_checkpoint

        from robust_csc.evaluation.store import ResultsStore

        with ResultsStore(store) as handle:
            stored = handle.to_frame()
        done = stored[(stored["model"] == arch) & (stored["dataset"] == curve_dataset(dataset))]
        if len(done) == len(CURVE_LEVELS) * (len(CURVE_LAMBDAS) + 1):  # stored by an earlier run: resumable too
            _stage(log, "noise curve (stored before)", started)
            return {"arch": arch, "checkpoint": str(checkpoint)}
        model, _ = load_checkpoint(checkpoint)
        images = policy.reporting_images(generated_clean(dataset, "test", data_root, None))
        frame = noise_curve(model, images, "gaussian", CURVE_LEVELS, (*CURVE_LAMBDAS, policy), model_name=arch)
        # In the store (the report draws it with intervals) and as a CSV and figure beside it.
        store_curve(frame, store, model_name=arch, checkpoint_sha256=checkpoint_hash(checkpoint),
                    dataset=curve_dataset(dataset), split=policy.report_split)
        save_curve(frame, out / "noise_curve.csv", f"{arch} on {dataset}: accuracy against gaussian sigma")
        _stage(log, "noise curve", started)
    return {"arch": arch, "checkpoint": str(checkpoint)}


def run_full(
    out_dir: str | Path = "runs/fashion-mnist",
    *,
    dataset: str = "fashion-mnist",
    suite_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
    sizes: Sizes = FULL,
    processes: int = 2,
) -> dict:
    """The full run (see the module docstring); returns the checkpoints and the report's path.

    processes: 2 runs the two models' pipelines side by side in worker processes of one thread each;
    0 runs them one after the other in this process (tests).
    """
    if dataset not in DATASETS:
        raise RobustCSCError(f"the full run is made for {', '.join(DATASETS)}, not {dataset!r}; pass --dataset fashion-mnist")
    from robust_csc.data import load_dataset
    from robust_csc.data.stored import write_stored_suite

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_dataset(dataset, "test", root=data_root)  # a missing data set fails here, in one line, before any work
    started = time.perf_counter()
    suite_dir = Path(suite_dir) if suite_dir is not None else out / f"{dataset}-c"
    echo(f"robust-csc full run on {dataset}: suite {suite_dir}, output {out}")
    folder, manifest, written = write_stored_suite(suite_dir, dataset, root=data_root, workers=processes,
                                                   corruptions=sizes.corruptions, log=echo)
    echo(f"stored suite {folder}: {len(manifest.corruptions)} corruptions x 5 severities x "
         f"{manifest.images_per_severity} images ({written} blocks written now, {time.perf_counter() - started:.0f}s)")

    echo("training and evaluating sdnet18 and resnet18 side by side; progress in "
         f"{out / 'sdnet18.log'} and {out / 'resnet18.log'}")
    arguments = [(arch, dataset, str(out), str(folder), None if data_root is None else str(data_root), asdict(sizes))
                 for arch in ("sdnet18", "resnet18")]
    if processes == 0:
        results = [model_pipeline(*args) for args in arguments]
    else:
        context = multiprocessing.get_context("spawn")
        env = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # each worker one thread (inherited by the spawned processes)
        try:
            with context.Pool(processes) as pool:
                results = [job.get() for job in [pool.apply_async(model_pipeline, args) for args in arguments]]
        finally:
            if env is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env
    echo(f"models done ({time.perf_counter() - started:.0f}s)")

    from robust_csc.reports import write_report

    html = write_report(out / STORE, out / "report", baseline="resnet18",
                        checkpoints=[r["checkpoint"] for r in results], data_root=data_root)
    echo(f"total time {time.perf_counter() - started:.0f}s")
    echo(f"report: {html}")
    return {"checkpoints": {r["arch"]: r["checkpoint"] for r in results}, "report": str(html)}


__all__ = ["FULL", "Sizes", "model_pipeline", "run_full"]
