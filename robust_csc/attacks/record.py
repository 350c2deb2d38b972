"""Attack cells in the store: which exist for a series, their outcomes, the worst case and how strong it is.

An attack cell (attack column f"{attack_id}:{norm}", one epsilon) holds the
per-example robust flags of one attack run on every clean-correct point
(robust_csc.evaluation.outcomes).  Attack ids: a headline attack's own id
("pgd", "autoattack-standard"), an adaptive attack's id with its surrogate
("pgd~bpda-fixed", robust_csc.attacks.adaptive) and a sanity check's
stronger attack ("pgd-40x2~check", run on the points every other attack
left robust).  The worst case of a (series, norm, epsilon) is the pointwise
AND over every one of them in the store, whichever run wrote it: a point is
robust only if no attack ever found an adversarial example for it.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

from robust_csc.attacks.adaptive import SEPARATOR
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.store import CellKey, ResultsStore

WORST_CASE = "worst-case"
CHECK = "check"  # the variant tag of a sanity check's attack: "pgd-40x2~check"
STANDARD_AUTOATTACK = "autoattack-standard"


def worst_case_key(norm: str) -> str:
    return f"{WORST_CASE}:{norm}"


def attack_id_of(key: str) -> str:
    """"pgd~bpda-fixed" from "pgd~bpda-fixed:Linf"."""
    return key.rpartition(":")[0] or key


def cell_key(base: CellKey, attack: str, eps: float) -> CellKey:
    return CellKey(base.model, base.checkpoint_sha256, base.dataset, base.split, lambda_setting=base.lambda_setting,
                   attack=attack, epsilon=eps)


def stored_attack_cells(store: ResultsStore, base: CellKey, norm: str, eps: float) -> dict[str, dict]:
    """{attack column: row (extra decoded)} of the series' attack cells at (norm, eps) with per-example outcomes,
    the worst case excluded."""
    frame = store.to_frame(model=base.model, checkpoint_sha256=base.checkpoint_sha256, dataset=base.dataset,
                           split=base.split, lambda_setting=base.lambda_setting)
    out = {}
    for row in frame.to_dict("records"):
        attack = row["attack"]
        if (attack == "none" or not attack.endswith(f":{norm}") or attack == worst_case_key(norm)
                or not math.isclose(float(row["epsilon"]), eps, rel_tol=1e-12, abs_tol=1e-15) or row["outcomes"] is None):
            continue
        out[attack] = {**row, "extra": json.loads(row["extra"])}
    return out


def evaluation_grade(attack_ids: Iterable[str]) -> tuple[bool, str]:
    """(whether the worst case is AutoAttack-grade, a sentence saying what it is).

    Only the full standard AutoAttack (default iterations and queries) makes
    figures comparable with published AutoAttack numbers; anything weaker is
    an upper bound on robust accuracy and is labelled so.
    """
    bases = sorted({attack_id_of(a).partition(SEPARATOR)[0] for a in attack_ids if not attack_id_of(a).endswith(SEPARATOR + CHECK)})
    if STANDARD_AUTOATTACK in bases:
        return True, "AutoAttack (standard): comparable with published AutoAttack figures"
    if not bases:
        return False, "no attack"
    partial = [b for b in bases if b.startswith("autoattack") or b.startswith("apgd") or b.startswith("fab")]
    if partial:
        return False, (f"upper bound: {', '.join(bases)}, not the full standard AutoAttack; "
                       "not comparable with AutoAttack figures")
    return False, f"upper bound: {', '.join(bases)} only, not comparable with AutoAttack figures"


def outcomes_of(row: dict, where: str) -> Outcomes:
    return Outcomes.from_json(row["outcomes"], where)


__all__ = [
    "CHECK",
    "STANDARD_AUTOATTACK",
    "WORST_CASE",
    "attack_id_of",
    "cell_key",
    "evaluation_grade",
    "outcomes_of",
    "stored_attack_cells",
    "worst_case_key",
]
