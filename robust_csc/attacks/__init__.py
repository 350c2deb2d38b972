"""Adversarial evaluation: PGD and any torchattacks attack, AutoAttack (pyautoattack), checks against false robustness.

    from robust_csc.attacks import attack_checkpoint
    result = attack_checkpoint("runs/demo/sdnet18/model.safetensors", store="results.sqlite",
                               attacks=["pgd"], norm="Linf", epsilons=[1/255, 2/255, 4/255, 8/255],
                               n_examples=200, lambda_setting=0.5)
    print("\\n".join(result.lines()))

Attack names: "pgd" (torchattacks PGD in Linf, PGDL2 in L2), "autoattack"
(pyautoattack, version standard | plus | rand, or a custom list:
"autoattack[attacks=apgd-ce+apgd-t]"), AutoAttack's members alone ("apgd-ce",
"apgd-dlr", "apgd-t", "fab", "fab-t") and torchattacks attacks by lower-case
name ("fgsm", "apgd", "square", "cw", ...; see specs.TORCHATTACKS_NORMS),
with parameters as "square[n_queries=1000]".

Store ids (the attack column is f"{attack_id}:{norm}", e.g. "pgd:Linf"):
- the name alone when every parameter is at its default;
- "-{steps}" when steps differ from the default, and "x{restarts}" for more
  than one restart: "pgd-50x3" is PGD with 50 steps and 3 restarts,
  "pgd-10x3" 10 steps and 3 restarts, "autoattack-standard-20" AutoAttack
  standard with 20 iterations per APGD / FAB run;
- "autoattack-{version}" for the suite; a custom list is
  "autoattack-custom[attacks=apgd-ce+apgd-t]";
- every other non-default parameter in brackets, sorted: "square[n_queries=1000]",
  "pgd[alpha=0.01]".
Defaults that are ours, not torchattacks': a step size alpha left alone
follows eps (torchattacks' alpha scaled by eps / its default eps and by its
default steps / steps: PGD 2.5 * eps / steps); torch is seeded with the run's
seed before each (attack, epsilon) cell; black-box attacks (square, spsa) run
after the white-box ones.  Every attack runs on every clean-correct point and
keeps its per-example robust flags; the pointwise worst case over every attack
cell of a series in the store (later runs, the sanity checks' stronger attack
and the adaptive attacks on input-adaptive lambda policies included) is the
cell f"worst-case:{norm}".  Adaptive attacks have ids "pgd~bpda-fixed",
"pgd~bpda-repick", "pgd~transfer"; the cross-check's attack is "pgd-40x2~check".
Anything weaker than the full standard AutoAttack is labelled an upper bound.
"""

from robust_csc.attacks.adapters import AutoAttackAdapter, TorchattacksAdapter, build_autoattack, make_adapter
from robust_csc.attacks.checkpoint import attack_checkpoint, attack_policy_beside_trained, load_test_images
from robust_csc.attacks.runner import AttackResult, format_epsilon, judge, run_attacks, worst_case_key
from robust_csc.attacks.specs import AttackSpec, as_specs, check_epsilons, check_norm, make_spec, parse_attack

__all__ = [
    "AttackResult",
    "AttackSpec",
    "AutoAttackAdapter",
    "TorchattacksAdapter",
    "as_specs",
    "attack_checkpoint",
    "attack_policy_beside_trained",
    "build_autoattack",
    "check_epsilons",
    "check_norm",
    "format_epsilon",
    "judge",
    "load_test_images",
    "make_adapter",
    "make_spec",
    "parse_attack",
    "run_attacks",
    "worst_case_key",
]
