"""`robust-csc attack`: PGD, AutoAttack or any torchattacks attack over an epsilon grid, into the results store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import at_least_two, _items, _not_negative, _positive, _say, app
from robust_csc.commands import model_options as M
from robust_csc.errors import RobustCSCError
from robust_csc.validation import check_device


def _attack_items(values: List[str]) -> List[str]:
    """Repeated --attack options and comma lists, commas inside [parameters] kept."""
    from robust_csc.attacks.specs import split_top_level

    return [part for value in values for part in split_top_level(value)]


@app.command()
def attack(
    checkpoint: Optional[Path] = M.CHECKPOINT,
    model: Optional[str] = M.MODEL,
    weights: Optional[Path] = M.WEIGHTS,
    num_classes: Optional[int] = M.NUM_CLASSES,
    mean: Optional[str] = M.MEAN,
    std: Optional[str] = M.STD,
    model_dir: Optional[Path] = M.MODEL_DIR,
    allow_download: bool = M.ALLOW_DOWNLOAD,
    attacks: List[str] = typer.Option(
        ..., "--attack", help="pgd, autoattack, apgd-ce, square[n_queries=1000], any torchattacks name (repeatable or a comma list)."
    ),
    norm: str = typer.Option("Linf", "--norm", help="Linf or L2."),
    eps: List[str] = typer.Option(..., "--eps", help="Epsilons in [0, 1] pixel units, e.g. 1/255,2/255,4/255,8/255."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Test set [default: the checkpoint's data set]."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Steps of every attack that iterates (PGD, APGD, AutoAttack's n_iter)."),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Restarts of every attack that restarts (PGD, APGD, ...)."),
    version: Optional[str] = typer.Option(None, "--version", help="AutoAttack version: standard, plus or rand [default: standard]."),
    n_examples: Optional[int] = typer.Option(None, "--n-examples", help="The first N test images [default: all]."),
    lam: Optional[str] = typer.Option(None, "--lambda", help="Lambda setting: trained, 0.5, stem=0.5 or scale=1.5 [default: trained]."),
    lambda_policy: Optional[Path] = typer.Option(
        None, "--lambda-policy",
        help="A tuned lambda policy file (robust-csc tune-lambda); the points are then its reporting split.",
    ),
    store: Path = typer.Option(Path("results.sqlite"), "--store", help="SQLite results store."),
    seed: int = typer.Option(0, "--seed", help="Seed of the attacks' random starts (and AutoAttack's seed)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per attack batch."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... [default: cuda if available]."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data folder [default: ./data]."),
    checks: bool = typer.Option(
        True, "--checks/--no-checks",
        help="Run the attacking sanity checks (gradients, large eps, a stronger PGD on the points left robust).",
    ),
    adaptive: bool = typer.Option(
        True, "--adaptive/--no-adaptive",
        help="For a policy that reads its input (recon rule): also attack it with BPDA and transfer (default on).",
    ),
    allow_large_eps: bool = typer.Option(
        False, "--allow-large-eps", help="Accept budgets above 64/255 (Linf) or 5 (L2), which are usually typos."
    ),
    recompute: bool = typer.Option(False, "--recompute", help="Run every attack cell again and replace the stored ones."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr [default: when stderr is a terminal]."
    ),
) -> None:
    """Attack a checkpoint or any classifier (--model) at every epsilon; robust accuracy and sanity checks go to the store."""
    import torch

    from robust_csc.attacks import as_specs, check_epsilons, check_norm
    from robust_csc.attacks.adapters import check_autoattack_classes
    from robust_csc.attacks.specs import check_norm_fits, parse_number
    from robust_csc.lambdas import LambdaSetting

    # Everything a user can get wrong is checked before the store is opened,
    # so a refused call leaves an existing store untouched.
    chosen_norm = check_norm(norm)
    epsilons = check_epsilons([parse_number(item) for item in (_items(eps) or [])], chosen_norm, allow_large=allow_large_eps)
    specs = as_specs(_attack_items(attacks), steps=_positive(steps, "--steps"), restarts=_positive(restarts, "--restarts"), version=version)
    for spec in specs:
        check_norm_fits(spec, chosen_norm)
    at_least_two(n_examples)
    _positive(batch_size, "--batch-size")
    _not_negative(seed, "--seed")
    if lam is not None and lambda_policy is not None:
        raise RobustCSCError("--lambda and --lambda-policy both set the lambdas; pass one of them")
    device = check_device(device)
    checkpoint = M.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    meta = checkpoint.meta
    setting = LambdaSetting.parse(lam) if lam is not None else None
    if lambda_policy is not None:
        from robust_csc.tuning.policy import load_policy  # the tuning verb's module, loaded only when asked for

        setting = load_policy(lambda_policy, checkpoint_sha256=checkpoint.sha256)
    if setting is not None and not meta.get("lambda") and not (isinstance(setting, LambdaSetting) and setting.kind == "trained"):
        raise RobustCSCError(
            f"{checkpoint} holds a {meta.get('arch')} model without CSC layers, so a lambda setting cannot apply; "
            "leave --lambda / --lambda-policy out or attack an SDNet checkpoint"
        )
    for spec in specs:
        if spec.family == "autoattack":
            check_autoattack_classes(spec, int(meta.get("num_classes") or 0))

    from robust_csc.attacks import attack_checkpoint

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = attack_checkpoint(
        checkpoint,
        store=store,
        attacks=specs,
        norm=chosen_norm,
        epsilons=epsilons,
        dataset=dataset,
        data_root=data_root,
        n_examples=n_examples,
        lambda_setting=setting,
        seed=seed,
        batch_size=batch_size,
        device=device,
        checks=checks,
        adaptive=adaptive,
        recompute=recompute,
        allow_large_epsilon=allow_large_eps,
        progress=sys.stderr.isatty() if progress is None else progress,
    )
    _say(f"{'model' if model else 'checkpoint'} {checkpoint} ({meta.get('arch')})")
    for line in result.lines():
        _say(line)
    failed = [name for name, c in result.checks.items() if not c["passed"]]
    if failed:
        _say(f"WARNING: sanity checks failed ({', '.join(failed)}): the robust accuracy above may be false robustness")
    _say(f"store: {store}")
