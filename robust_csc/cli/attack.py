"""`robust-csc attack`: PGD, AutoAttack or any torchattacks attack over an epsilon grid, into the results store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from robust_csc.cli import options as O
from robust_csc.cli.app import app
from robust_csc.cli.output import Clock, command, finish, say
from robust_csc.errors import RobustCSCError


def _attack_items(values: List[str]) -> List[str]:
    """Repeated --attack options and comma lists, commas inside [parameters] kept."""
    from robust_csc.attacks.specs import split_top_level

    return [part for value in values for part in split_top_level(value)]


@app.command(short_help="Robust accuracy under PGD, AutoAttack, ...; worst case and checks.")
def attack(
    checkpoint: Optional[Path] = O.CHECKPOINT,
    model: Optional[str] = O.MODEL,
    weights: Optional[Path] = O.WEIGHTS,
    num_classes: Optional[int] = O.NUM_CLASSES,
    mean: Optional[str] = O.MEAN,
    std: Optional[str] = O.STD,
    model_dir: Optional[Path] = O.MODEL_DIR,
    allow_download: bool = O.ALLOW_DOWNLOAD,
    attacks: List[str] = typer.Option(
        ..., "--attack", metavar="LIST",
        help="pgd, autoattack, apgd-ce, square[n_queries=1000], any torchattacks name; a comma list or repeated.",
    ),
    norm: str = typer.Option("Linf", "--norm", metavar="NAME", help="Linf or L2."),
    eps: List[str] = typer.Option(
        ..., "--eps", metavar="LIST", help="Epsilons in [0, 1] pixel units, e.g. 1/255,2/255,4/255,8/255."
    ),
    dataset: Optional[str] = O.DATASET,
    steps: Optional[int] = typer.Option(
        None, "--steps", metavar="N", help="Steps of every attack that iterates (PGD, APGD, AutoAttack's n_iter)."
    ),
    restarts: Optional[int] = typer.Option(
        None, "--restarts", metavar="N", help="Restarts of every attack that restarts (PGD, APGD, ...)."
    ),
    autoattack_version: Optional[str] = typer.Option(
        None, "--autoattack-version", metavar="NAME", help="AutoAttack version: standard, plus or rand [default: standard]."
    ),
    n_examples: Optional[int] = O.N_EXAMPLES,
    lambdas: Optional[List[str]] = O.LAMBDA,
    lambda_policy: Optional[Path] = O.LAMBDA_POLICY,
    store: Path = O.STORE,
    seed: int = O.SEED,
    batch_size: int = O.batch_size_option(128),
    device: Optional[str] = O.DEVICE,
    data_root: Optional[Path] = O.DATA_ROOT,
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
    recompute: bool = O.RECOMPUTE,
    progress: Optional[bool] = O.PROGRESS,
    old_version: Optional[str] = typer.Option(
        None, "--version", metavar="NAME", hidden=True, help="Deprecated: --autoattack-version."
    ),
) -> None:
    """Attack a checkpoint or any classifier at every epsilon and lambda setting; robust accuracy, the worst case over
    every attack and the sanity checks go to the store.

    With --lambda-policy every setting is attacked on the policy's reporting split (its first --n-examples), so the
    policy and the trained lambda beside it are compared on the same points.
    """
    from robust_csc.attacks import as_specs, check_epsilons, check_norm
    from robust_csc.attacks.adapters import check_autoattack_classes
    from robust_csc.attacks.specs import check_norm_fits, parse_number
    from robust_csc.lambdas import LambdaSetting

    clock = Clock()
    if old_version is not None:  # --version now means robust-csc's own version, as on `robust-csc --version`
        print("note: attack --version is deprecated; use --autoattack-version", file=sys.stderr, flush=True)
        autoattack_version = autoattack_version or old_version
    # Everything a user can get wrong is checked before the store is opened,
    # so a refused call leaves an existing store untouched.
    chosen_norm = check_norm(norm)
    epsilons = check_epsilons([parse_number(item) for item in (O.items(eps) or [])], chosen_norm, allow_large=allow_large_eps)
    specs = as_specs(_attack_items(attacks), steps=O.positive(steps, "--steps"), restarts=O.positive(restarts, "--restarts"),
                     version=autoattack_version)
    for spec in specs:
        check_norm_fits(spec, chosen_norm)
    O.at_least_two(n_examples)
    O.positive(batch_size, "--batch-size")
    O.not_negative(seed, "--seed")
    device = O.resolve_device(device)
    loaded = O.load_model_option(checkpoint, model, weights, num_classes, mean, std, model_dir, allow_download)
    meta = loaded.meta
    given = O.items(lambdas)
    settings = O.lambda_settings(lambdas, lambda_policy, loaded)
    if lambda_policy is not None and not given:
        settings = tuple(s for s in settings if not (isinstance(s, LambdaSetting) and s.kind == "trained"))
    policies = [s for s in settings if hasattr(s, "scoring_plan")]
    if not meta.get("lambda") and any(not (isinstance(s, LambdaSetting) and s.kind == "trained") for s in settings):
        raise RobustCSCError(
            f"{loaded} holds a {meta.get('arch')} model without CSC layers, so a lambda setting cannot apply; "
            "leave --lambda / --lambda-policy out or attack an SDNet checkpoint"
        )
    for spec in specs:
        if spec.family == "autoattack":
            check_autoattack_classes(spec, int(meta.get("num_classes") or 0))

    from robust_csc.attacks import attack_checkpoint

    say(f"{'model' if model else 'checkpoint'} {loaded} ({meta.get('arch')})")
    for setting in settings:
        # Every setting of a run with a policy is attacked on the policy's points (its reporting split).
        points = {} if not policies or setting is policies[0] else {"points_of": policies[0]}
        result = attack_checkpoint(
            loaded,
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
            progress=O.progress_on(progress),
            **points,
        )
        if len(settings) > 1:
            say(f"lambda {setting.name}:")
        for line in result.lines():
            say(line)
        failed = [name for name, c in result.checks.items() if not c["passed"]]
        if failed:
            say(f"WARNING: sanity checks failed ({', '.join(failed)}): the robust accuracy above may be false robustness")
    say(f"store: {store}")
    finish(clock, [store], [command("robust-csc", "report", "--store", store, "--out", "report")])
