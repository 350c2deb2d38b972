"""The offline demo, the whole main job on the embedded digits set: train, evaluate, attack, tune, report.

1. Train SDNet-18 (stem lambda 0.5) and ResNet-18 (width 16, CIFAR stem) with the digits recipe.
2. Evaluate both checkpoints on a corruption suite generated from the digits
   test set (CIFAR-10-C parameters, 5 severities) into ``out_dir/results.sqlite``.
3. Attack both: AutoAttack (standard) with PGD beside it at 8/255 on the first 32 test
   digits (the headline; the worst case over both and the sanity checks' stronger PGD), and
   PGD-10 at 1-8/255 on 100 digits (the epsilon curve, labelled an upper bound).
4. Tune the SDNet's stem lambda per noise corruption and severity (ImageNet-C
   noise levels, stronger than CIFAR-10-C's) on a tuning split, report it on a
   disjoint reporting split, and fit the label-free reconstruction-error rule;
   the policy goes to ``out_dir/lambda_policy.json``.
5. Attack the label-free rule with PGD at 2/255 and 8/255 on its reporting split, through
   the rule and with the adaptive attacks (BPDA with lambda fixed or re-picked, transfer from
   the trained lambda), the same way as the trained lambda on the same points.
6. Compare lambda tuning with test-time adaptation on the tuning suite's reporting split (the
   policy restricts the run to it): the SDNet at its trained lambda, the recon rule, bn-adapt (N = 0),
   tent and tent on top of the rule; the ResNet at its trained weights, bn-adapt and tent on the
   same images.
7. Measure the SDNet's accuracy against a continuous gaussian sigma at its
   trained lambda, a raised stem lambda and the label-free rule on the rule's reporting split
   (into the store, and ``out_dir/noise_curve.csv`` with its figure).
8. Write the report (``out_dir/report/index.html`` and its Markdown twin) and print its key results.

A CLI job: it prints, and its last line is the path of the HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from torch.utils.data import DataLoader

from robust_csc.data import load_dataset
from robust_csc.models.checkpoints import load_checkpoint
from robust_csc.training import FINAL_NAME, TrainConfig, evaluate_accuracy, train

DEMO_WIDTH = 16
# The SDNet's stem lambda. At 0.1 (the paper's and the model's default) a digits SDNet scores best at the
# lowest lambda of the tuning grid (0.1 itself) on every noise cell, so tuning had nothing to show; trained at
# 0.5 it is as accurate on clean digits (0.99) and the grid 0.1..1.4 reaches both sides of it. Measured
# (200 digits, ImageNet-C gaussian levels): the best stem lambda drops to 0.3 at severities 1-3 (clipped noise
# on digits' 0/1 pixels acts as a loss of contrast) and rises to 1.0-1.4 at severities 4-5, with gains of +1 to
# +15 points; the label-free rule's mean lambda grows with the severity on all four noises.
SDNET_LAMBDA = 0.5
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
# The headline: AutoAttack (standard) and PGD at 8/255 on the first 32 test digits. Standard AutoAttack costs
# about 1-2 minutes per model here at one budget (its targeted attacks and Square run on every point left
# robust), so it gets few points; its interval says how few. The epsilon curve is PGD-10 on 100 digits.
HEADLINE_ATTACKS = ("autoattack", "pgd")
HEADLINE_EPSILON = 8 / 255
HEADLINE_IMAGES = 32
QUICK_HEADLINE_ATTACKS = ("autoattack[attacks=apgd-ce,steps=10]", "pgd")  # a smoke test: named as shortened
QUICK_HEADLINE_IMAGES = 16
ATTACK_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
ATTACK_IMAGES = 100
QUICK_ATTACK_EPSILONS = (2 / 255, 8 / 255)
QUICK_ATTACK_IMAGES = 32
# The label-free rule attacked on its reporting split, adaptive attacks included (and the trained lambda there).
POLICY_ATTACK_EPSILONS = (2 / 255, 8 / 255)
POLICY_ATTACK_IMAGES = 64
QUICK_POLICY_ATTACK_IMAGES = 16
# Lambda tuning of the SDNet's stem on the noise corruptions (the paper's sweep), at ImageNet-C's
# levels: CIFAR-10-C's noise barely moves a digits SDNet (97-98 % at severity 5).
TUNE_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")
TUNE_PROFILE = "imagenet"
QUICK_TUNE_CORRUPTIONS = ("gaussian_noise",)
POLICY_NAME = "lambda_policy.json"
# Accuracy of the SDNet against a continuous gaussian sigma (the paper's lambda-versus-noise curve): the
# trained stem lambda, a raised one, and the label-free rule fitted by the tuning step.
CURVE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
QUICK_CURVE_LEVELS = (0.0, 0.25, 0.5)
CURVE_LAMBDAS = (None, "stem=1")
CURVE_NAME = "noise_curve.csv"
REPORT_NAME = "report"
# Lambda tuning beside test-time adaptation, on the tuning suite's reporting split: batches of 64 (two per cell of
# 100 reporting images; TTA results depend on the batch size, which the settings' names record).
TTA_BATCH_SIZE = 64


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
    clean_loader = DataLoader(test, batch_size=450)

    echo(f"robust-csc demo: sdnet18 vs resnet18 (width {DEMO_WIDTH}, CIFAR stem) on digits, output in {out_dir}")
    started = time.perf_counter()
    results: dict = {"out_dir": str(out_dir), "models": {}, "seconds_by_step": {}}
    for arch in ("sdnet18", "resnet18"):
        echo(f"training {arch}")
        config = TrainConfig(
            model=arch,
            dataset="digits",
            out_dir=out_dir / arch,
            epochs=epochs,
            width=DEMO_WIDTH,
            lam=SDNET_LAMBDA if arch == "sdnet18" else None,
            resume=False,  # a demo always shows a fresh run
            progress=progress,
        )
        summary = train(config, log=lambda line: echo(f"  {line}"))
        # Read the checkpoint back: the numbers below come from the saved file.
        model, _ = load_checkpoint(Path(config.out_dir) / FINAL_NAME)
        results["models"][arch] = dict(
            checkpoint=str(Path(config.out_dir) / FINAL_NAME),
            clean_acc=evaluate_accuracy(model, clean_loader),
            train_seconds=summary["seconds"],
        )
    results["seconds_by_step"]["train"] = time.perf_counter() - started
    echo("")
    echo("test accuracy (450 digits)")
    for arch, r in results["models"].items():
        echo(f"  {arch:<10} {r['clean_acc']:.4f}")

    steps = (
        ("suite", _evaluate_suite, _print_suite),
        ("attack", _attack, _print_attack),
        ("tune", _tune, _print_tune),
        ("tta", _tta, _print_tta),
        ("policy attack", _attack_policy, _print_policy_attack),
        ("curve", _curve, _print_curve),
        ("report", _report, None),
    )
    for name, run_step, show in steps:
        step_started = time.perf_counter()
        results[name] = run_step(results, out_dir, quick, progress)
        results["seconds_by_step"][name] = time.perf_counter() - step_started
        if show is not None:
            echo("")
            show(results, echo)
    results["seconds"] = time.perf_counter() - started
    echo("")
    echo("key results (the report's first table)")
    for line in results["report"]["key_results"]:
        echo(f"  {line}" if line else "")
    echo("")
    for arch, r in results["models"].items():
        echo(f"checkpoint {arch}: {r['checkpoint']}")
    echo(f"lambda policy: {results['tune']['policy']}")
    echo(f"noise curve: {results['curve']['csv']}")
    echo(f"store: {out_dir / STORE_NAME}")
    timing = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in results["seconds_by_step"].items())
    echo(f"total time {results['seconds']:.0f}s ({timing})")
    echo(f"report: {results['report']['html']}")
    return results


def _print_suite(results: dict, echo: Callable[[str], None]) -> None:
    from robust_csc.evaluation.console import result_lines

    suite = results["suite"]
    echo(
        f"corruption suite {suite['name']}: first {suite['images']} test digits, "
        f"{len(suite['corruptions'])} corruptions x 5 severities ({results['seconds_by_step']['suite']:.0f}s)"
    )
    for arch, evaluation in suite["models"].items():
        for line in result_lines(evaluation, title=arch):
            echo(line)
    echo(f"cells run {suite['cells_run']}, skipped {suite['cells_skipped']}")


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
            out["models"][arch] = result
    out.update(cells_run=run, cells_skipped=skipped)
    return out


def _attack(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """Both checkpoints: the AutoAttack headline at 8/255 on a few points, and PGD-10's epsilon curve."""
    from robust_csc.attacks import attack_checkpoint

    epsilons = QUICK_ATTACK_EPSILONS if quick else ATTACK_EPSILONS
    n = QUICK_ATTACK_IMAGES if quick else ATTACK_IMAGES
    headline_n = QUICK_HEADLINE_IMAGES if quick else HEADLINE_IMAGES
    out = {"images": n, "headline_images": headline_n, "models": {}, "curves": {}}
    for arch, r in results["models"].items():
        out["models"][arch] = attack_checkpoint(
            r["checkpoint"], store=out_dir / STORE_NAME, norm="Linf", epsilons=(HEADLINE_EPSILON,),
            attacks=QUICK_HEADLINE_ATTACKS if quick else HEADLINE_ATTACKS, n_examples=headline_n, progress=progress,
        )
        out["curves"][arch] = attack_checkpoint(
            r["checkpoint"], store=out_dir / STORE_NAME, attacks=("pgd",), norm="Linf", epsilons=epsilons,
            n_examples=n, progress=progress,
        )
    return out


def _print_attack(results: dict, echo: Callable[[str], None]) -> None:
    attack = results["attack"]
    echo(f"adversarial robustness, L-infinity ({results['seconds_by_step']['attack']:.0f}s): the headline on the first "
         f"{attack['headline_images']} test digits, then PGD-10 against epsilon on the first {attack['images']}")
    for arch in attack["models"]:
        for result in (attack["models"][arch], attack["curves"][arch]):
            echo(f"{arch}:")
            for line in result.lines():
                echo(f"  {line}")


def _attack_policy(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """PGD on the label-free rule's reporting split, adaptive attacks included, and on the trained lambda there."""
    from robust_csc.attacks import attack_policy_beside_trained
    from robust_csc.models.checkpoints import checkpoint_hash
    from robust_csc.tuning import load_policy

    checkpoint = results["models"]["sdnet18"]["checkpoint"]
    policy = load_policy(results["tune"]["policy"], checkpoint_hash(checkpoint))
    n = QUICK_POLICY_ATTACK_IMAGES if quick else POLICY_ATTACK_IMAGES
    epsilons = QUICK_ATTACK_EPSILONS if quick else POLICY_ATTACK_EPSILONS
    under_policy, trained = attack_policy_beside_trained(
        checkpoint, policy, store=out_dir / STORE_NAME, attacks=("pgd",), norm="Linf", epsilons=epsilons,
        n_examples=n, progress=progress,
    )
    return {"images": n, "policy": under_policy, "trained": trained}


def _print_policy_attack(results: dict, echo: Callable[[str], None]) -> None:
    attack = results["policy attack"]
    echo(f"the label-free recon rule under attack on {attack['images']} reporting-split digits, beside the trained "
         f"lambda on the same digits ({results['seconds_by_step']['policy attack']:.0f}s)")
    for name in ("policy", "trained"):
        for line in attack[name].lines():
            echo(f"  {line}")


def _tune(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """Stem lambda of the SDNet per noise cell: chosen on a tuning split, reported on the other half."""
    from robust_csc.data.generated import generated_clean, generated_suite
    from robust_csc.tuning import tune_checkpoint

    corruptions = QUICK_TUNE_CORRUPTIONS if quick else TUNE_CORRUPTIONS
    n = QUICK_SUITE_IMAGES if quick else SUITE_IMAGES
    suite = generated_suite("digits", profile=TUNE_PROFILE, corruptions=corruptions, n_examples=n)
    clean = generated_clean("digits", "test", None, n)
    # The CLI's names and options, so that `robust-csc evaluate --lambda-policy` rebuilds this suite.
    result = tune_checkpoint(
        results["models"]["sdnet18"]["checkpoint"], suite, store=out_dir / STORE_NAME, clean=clean,
        layers="stem", rule="recon", out=out_dir / POLICY_NAME, force=True, progress=progress,
        split_base=f"test[:{n}]",
        suite_options={"suite": "generated", "dataset": "digits", "profile": TUNE_PROFILE, "seed": 0, "n_examples": n},
    )
    return {"result": result, "policy": str(out_dir / POLICY_NAME)}


def _print_tune(results: dict, echo: Callable[[str], None]) -> None:
    result = results["tune"]["result"]
    echo(f"lambda tuning of sdnet18's stem (trained at {SDNET_LAMBDA:g}) on {TUNE_PROFILE}-level noise "
         f"({results['seconds_by_step']['tune']:.0f}s)")
    for line in result.lines():
        echo(line)


def _tta(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """Lambda tuning beside test-time adaptation on the tuning suite's reporting split, both models, same images."""
    from robust_csc.adaptation import BNAdapt, Tent, compose
    from robust_csc.data.generated import generated_clean, generated_suite
    from robust_csc.evaluation.harness import evaluate_checkpoint, scoring_split
    from robust_csc.models.checkpoints import checkpoint_hash
    from robust_csc.tuning import load_policy

    sdnet = results["models"]["sdnet18"]["checkpoint"]
    policy = load_policy(results["tune"]["policy"], checkpoint_hash(sdnet))
    corruptions = QUICK_TUNE_CORRUPTIONS if quick else TUNE_CORRUPTIONS
    n = QUICK_SUITE_IMAGES if quick else SUITE_IMAGES
    suite = generated_suite("digits", profile=TUNE_PROFILE, corruptions=corruptions, n_examples=n)
    clean = generated_clean("digits", "test", None, n)
    out = {"models": {}}
    # The SDNet with the policy among its settings: the harness scores every setting on the policy's reporting split.
    out["models"]["sdnet18"] = evaluate_checkpoint(
        sdnet, suite, store=out_dir / STORE_NAME, clean=clean, dataset=suite.name, split=f"test[:{n}]",
        lambdas=[None, policy, BNAdapt(prior=0), Tent(), compose(Tent(), policy)], batch_size=TTA_BATCH_SIZE,
        progress=progress,
    )
    # The ResNet on the same images (it has no lambda to tune): the policy's reporting split, named alike.
    report_suite, report_clean, split, _ = scoring_split([policy], suite, clean, f"test[:{n}]")
    out["models"]["resnet18"] = evaluate_checkpoint(
        results["models"]["resnet18"]["checkpoint"], report_suite, store=out_dir / STORE_NAME, clean=report_clean,
        dataset=suite.name, split=split, lambdas=[None, BNAdapt(prior=0), Tent()], batch_size=TTA_BATCH_SIZE,
        progress=progress,
    )
    out.update(suite=suite.name, split=split, images=len(report_clean))
    return out


def _print_tta(results: dict, echo: Callable[[str], None]) -> None:
    from robust_csc.reports.cells import Cells
    from robust_csc.reports.names import naming, setting_label

    tta = results["tta"]
    echo(f"lambda tuning beside test-time adaptation on {tta['suite']}, the {tta['images']} reporting-split digits "
         f"per cell; mean accuracy over the noise cells ({results['seconds_by_step']['tta']:.0f}s)")
    for arch, result in tta["models"].items():
        frame = result.frame
        rows = frame[(frame["attack"] == "none") & (frame["split"] == result.split) & (frame["corruption"] != "none")]
        with naming(Cells.from_frame(frame).frame):  # the policy by its rule: recon rule, per sample (7f27…)
            for name in result.summaries:
                mean = rows[rows["lambda_setting"] == name]["accuracy"].mean()
                echo(f"  {arch:<9} {setting_label(name):<58} {mean * 100:5.1f}%")


def _curve(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """The SDNet's accuracy against gaussian sigma: trained lambda, a raised stem lambda, the label-free rule."""
    from robust_csc.data.generated import generated_clean
    from robust_csc.evaluation.noise_curve import curve_dataset, noise_curve, save_curve, store_curve
    from robust_csc.models.checkpoints import checkpoint_hash
    from robust_csc.tuning import load_policy

    checkpoint = results["models"]["sdnet18"]["checkpoint"]
    model, _ = load_checkpoint(checkpoint)
    policy = load_policy(results["tune"]["policy"], checkpoint_hash(checkpoint))
    n = QUICK_SUITE_IMAGES if quick else SUITE_IMAGES
    levels = QUICK_CURVE_LEVELS if quick else CURVE_LEVELS
    # The policy was tuned on half of these digits: the curve is drawn on the other half.
    clean = policy.reporting_images(generated_clean("digits", "test", None, n))
    frame = noise_curve(model, clean, "gaussian", levels, (*CURVE_LAMBDAS, policy), model_name="sdnet18",
                        progress=progress)
    store_curve(frame, out_dir / STORE_NAME, model_name="sdnet18", checkpoint_sha256=checkpoint_hash(checkpoint),
                dataset=curve_dataset("digits"), split=policy.report_split)
    paths = save_curve(frame, out_dir / CURVE_NAME, "sdnet18 on digits: accuracy against gaussian sigma")
    return {"frame": frame, "images": len(clean), "csv": str(paths["csv"]), "policy": policy.name}


def _print_curve(results: dict, echo: Callable[[str], None]) -> None:
    from robust_csc.evaluation.noise_curve import curve_text

    curve = results["curve"]
    echo(f"sdnet18 against gaussian sigma on the {curve['images']} reporting-split digits (accuracy in % ± half the "
         f"95% Wilson interval, lambda per column, the recon rule is {curve['policy']}; "
         f"{results['seconds_by_step']['curve']:.0f}s)")
    for line in curve_text(curve["frame"]).to_string().splitlines():
        echo(f"  {line}")


def _report(results: dict, out_dir: Path, quick: bool, progress: bool) -> dict:
    """The HTML report (and its Markdown twin) of everything in the store."""
    from robust_csc.reports import write_report

    from robust_csc.reports.key_results import store_text_lines

    checkpoints = [r["checkpoint"] for r in results["models"].values()]
    html = write_report(out_dir / STORE_NAME, out_dir / REPORT_NAME, baseline="resnet18", checkpoints=checkpoints)
    return {"html": str(html), "key_results": store_text_lines(out_dir / STORE_NAME, baseline="resnet18")}
