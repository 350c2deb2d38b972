"""Adversarial evaluation: PGD against a loop from the definition, AutoAttack against a direct call,
the worst case over attacks, the lambda the model is attacked at, resume after SIGKILL, sanity checks, bad input."""

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust_csc.attacks import (
    as_specs,
    attack_checkpoint,
    make_adapter,
    make_spec,
    run_attacks,
)
from robust_csc.csc import csc_layers, get_lambda
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
N = 32  # test images attacked
EPS_GRID = [1 / 255, 2 / 255, 4 / 255, 8 / 255, 32 / 255]
SHA = "ab" * 32


@pytest.fixture(scope="module")
def trained(digits_sdnet):
    """conftest's digits SDNet (width 8, 3 epochs), its checkpoint and the first N test points."""
    from robust_csc.attacks import load_test_images

    images, labels = load_test_images("digits", None, N)
    return {**digits_sdnet, "images": images, "labels": labels}


def attack(model, images, labels, store, **kw):
    kw.setdefault("attacks", "pgd")
    kw.setdefault("norm", "Linf")
    kw.setdefault("epsilons", [4 / 255])
    return run_attacks(model, images, labels, store=store, model_name=kw.pop("model_name", "sdnet18"),
                       checkpoint_sha256=SHA, dataset="digits", split=f"test[:{len(labels)}]", **kw)


# ---------------------------------------------------------------- names and flags


def test_attack_ids_name_every_result_changing_parameter():
    assert make_spec("pgd").key("Linf") == "pgd:Linf"
    assert make_spec("pgd", {"steps": 50, "restarts": 3}).key("L2") == "pgd-50x3:L2"
    assert make_spec("pgd", {"steps": 10, "restarts": 3}).key("Linf") == "pgd-10x3:Linf"
    assert make_spec("pgd", {"steps": 10}).key("Linf") == "pgd:Linf"  # the default is no change
    assert make_spec("square", {"n_queries": 500}).key("Linf") == "square[n_queries=500]:Linf"
    assert make_spec("autoattack").key("Linf") == "autoattack-standard:Linf"
    assert make_spec("autoattack", {"version": "plus", "steps": 20}).key("L2") == "autoattack-plus-20:L2"
    assert make_spec("autoattack", {"attacks": "apgd-ce+apgd-t"}).key("Linf") == "autoattack-custom[attacks=apgd-ce+apgd-t]:Linf"
    assert make_spec("apgd-ce").key("Linf") == "apgd-ce:Linf"


def test_attack_lists_parse_with_brackets_and_put_black_box_last():
    specs = as_specs(["square[n_queries=50],pgd", "autoattack[attacks=apgd-ce+apgd-t,steps=5]"], steps=20)
    assert [s.name for s in specs] == ["pgd", "autoattack", "square"]
    assert specs[0].options == {"steps": 20} and specs[1].options["steps"] == 5  # an attack's own steps win


# ---------------------------------------------------------------- PGD


def pgd_loop(model, x, y, eps, steps, alpha):
    """Madry et al.'s PGD, written from the definition: uniform start in the ball, signed gradient steps, projection."""
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def test_our_pgd_equals_a_loop_from_the_definition(trained, tmp_path):
    model, x, y = trained["model"], trained["images"], trained["labels"]
    eps, steps = 4 / 255, 7
    adapter = make_adapter(make_spec("pgd", {"steps": steps}), "Linf", 10)
    torch.manual_seed(5)
    ours = adapter.perturb(model, x, y, eps)
    torch.manual_seed(5)
    reference = pgd_loop(model, x, y, eps, steps, alpha=2.5 * eps / steps)
    assert torch.allclose(ours, reference, atol=1e-6)

    # The runner: torch seeded with the run's seed before the cell, only clean-correct points attacked.
    result = attack(model, x, y, tmp_path / "s.sqlite", steps=steps, epsilons=[eps], seed=3, checks=False)
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().squeeze(1)
    torch.manual_seed(3)
    adv = pgd_loop(model, x[correct], y[correct], eps, steps, alpha=2.5 * eps / steps)
    with torch.no_grad():
        expected = int((model(adv).argmax(1) == y[correct]).sum())
    assert result.worst_case[eps] == expected == result.robust[(f"pgd-{steps}:Linf", eps)]


def test_robust_accuracy_falls_over_epsilon_to_zero_and_the_checks_hold(trained, tmp_path):
    model, x, y = trained["model"], trained["images"], trained["labels"]
    result = attack(model, x, y, tmp_path / "s.sqlite", epsilons=EPS_GRID)
    curve = [result.worst_case[e] for e in EPS_GRID]
    assert result.clean_correct >= 0.7 * N, trained["acc"]  # a model worth attacking
    assert curve[0] > 0 and curve[-1] == 0, curve
    assert all(b <= a for a, b in zip(curve, curve[1:])), curve
    assert curve[0] <= result.clean_correct
    # PGD-10 may miss points the cross-check's PGD-40x2 finds: then that check fails and they count in the worst case.
    assert all(c["passed"] for name, c in result.checks.items() if name != "cross_check"), result.checks
    missed = sum(result.robust[("pgd:Linf", e)] - result.worst_case[e] for e in EPS_GRID)
    assert result.checks["cross_check"]["passed"] == (missed == 0), (missed, result.checks["cross_check"])
    assert set(result.checks) >= {"gradients", "large_epsilon", "cross_check", "monotone_in_epsilon", "within_epsilon"}
    with ResultsStore(tmp_path / "s.sqlite") as store:
        frame = store.to_frame()
    assert sorted(frame["attack"].unique()) == ["pgd-40x2~check:Linf", "pgd:Linf", "worst-case:Linf"]
    assert (frame["corruption"] == "none").all() and (frame["severity"] == 0).all()
    worst = frame[frame["attack"] == "worst-case:Linf"].sort_values("epsilon")
    assert list(worst["correct"]) == curve and list(worst["epsilon"]) == EPS_GRID
    lines = "\n".join(result.lines())
    assert "worst-case:Linf" in lines and " cross_check: PGD-40x2" in lines
    assert "upper bound: pgd only, not comparable with AutoAttack figures" in lines


def test_l2_pgd_falls_with_epsilon(trained, tmp_path):
    model, x, y = trained["model"], trained["images"][:16], trained["labels"][:16]
    result = attack(model, x, y, tmp_path / "s.sqlite", norm="L2", epsilons=[0.1, 0.5, 4.0], checks=False)
    curve = [result.worst_case[e] for e in (0.1, 0.5, 4.0)]
    assert curve[0] >= curve[1] >= curve[2] == 0, curve


# ---------------------------------------------------------------- AutoAttack


def test_autoattack_adapter_equals_a_direct_call_and_an_sdnet_passes_its_self_checks(trained, tmp_path):
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    model, x, y = trained["model"], trained["images"][:12], trained["labels"][:12]
    eps, steps = 4 / 255, 5
    result = attack(model, x, y, tmp_path / "s.sqlite", attacks=f"autoattack[attacks=apgd-ce+apgd-t,steps={steps}]",
                    epsilons=[eps], seed=0, batch_size=8, checks=False)
    direct = AutoAttack(model, attacks=["apgd-ce", "apgd-t"], device="cpu", eps=eps, norm="Linf", seed=0, version="custom")
    # Fewer iterations, set the library's own way: its attacks built with n_iter (as AutoAttack builds them).
    direct.apgd = APGDAttack(model, n_restarts=5, n_iter=steps, verbose=False, eps=eps, norm="Linf", eot_iter=1,
                             rho=0.75, seed=0, device="cpu", logger=direct.logger)
    direct.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=steps, verbose=False, eps=eps, norm="Linf",
                                               eot_iter=1, rho=0.75, seed=0, device="cpu", logger=direct.logger)
    adv, _ = direct.run_standard_evaluation(x, y, batch_size=8)
    with torch.no_grad():
        expected = int((model(adv).argmax(1) == y).sum())
    assert result.worst_case[eps] == expected
    assert result.worst_case[eps] < result.clean_correct  # it did break something
    check = result.checks["autoattack_self_checks"]
    assert check["passed"], check  # no randomness, no dynamic-defence warning for a CSC forward pass in eval mode


def test_autoattack_standard_on_eight_points(trained, tmp_path):
    model, x, y = trained["model"], trained["images"][:8], trained["labels"][:8]
    result = attack(model, x, y, tmp_path / "s.sqlite", attacks="autoattack", epsilons=[8 / 255], checks=False)
    assert result.attacks == ("autoattack-standard:Linf",)
    assert result.worst_case[8 / 255] == 0
    assert result.checks["autoattack_self_checks"]["passed"], result.checks


class Noisy(nn.Module):
    """A randomised model: AutoAttack's self-check must say so, and the runner must report it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + 0.5 * torch.randn(x.shape[0], 10)


def test_autoattack_self_check_warnings_are_recorded(trained, tmp_path):
    model = Noisy(trained["model"])
    result = attack(model, trained["images"][:6], trained["labels"][:6], tmp_path / "s.sqlite", model_name="noisy",
                    attacks="apgd-ce[steps=3]", epsilons=[1 / 255], checks=False)
    check = result.checks["autoattack_self_checks"]
    assert not check["passed"] and "randomized" in check["detail"]


# ---------------------------------------------------------------- false robustness


class Quantised(nn.Module):
    """x -> round(4x) / 4 before the model: the gradient through round is zero everywhere."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_a_gradient_masked_model_is_flagged(trained, tmp_path):
    masked = Quantised(trained["model"])
    result = attack(masked, trained["images"][:16], trained["labels"][:16], tmp_path / "s.sqlite", model_name="masked",
                    attacks=["pgd", "square[n_queries=30]"], epsilons=[2 / 255, 8 / 255])
    assert not result.passed
    assert not result.checks["gradients"]["passed"] and "zero input gradient" in result.checks["gradients"]["detail"]
    assert not result.checks["large_epsilon"]["passed"]
    assert result.attacks == ("pgd:Linf", "square[n_queries=30]:Linf")
    with ResultsStore(tmp_path / "s.sqlite") as store:
        row = store.to_frame(attack="worst-case:Linf").iloc[0]
    assert '"gradients": {"detail"' in row["extra"] and '"passed": false' in row["extra"]


# ---------------------------------------------------------------- lambda


def test_sdnet_is_attacked_and_judged_at_the_lambda_it_reports(trained, tmp_path):
    model = trained["model"]
    trained_lambdas = get_lambda(model)
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(m.lam)) for layer in csc_layers(model).values()]
    try:
        result = attack(model, trained["images"][:8], trained["labels"][:8], tmp_path / "s.sqlite",
                        lambda_setting=0.5, attacks=["pgd", "apgd-ce[steps=3]"], epsilons=[2 / 255], checks=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) > 30 and all(lam == 0.5 for lam in seen), sorted(set(map(str, seen)))
    assert get_lambda(model) == trained_lambdas  # restored after the run
    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert set(store.to_frame()["lambda_setting"]) == {"0.5"}
    assert result.lambda_setting == "0.5"


def test_a_resnet_refuses_a_lambda(tmp_path):
    model = create_model("resnet18", num_classes=10, width=4).eval()
    with pytest.raises(RobustCSCError, match="no CSC layers"):
        attack(model, torch.rand(4, 3, 32, 32), torch.arange(4), tmp_path / "s.sqlite", lambda_setting=0.5, model_name="resnet18")
    assert not (tmp_path / "s.sqlite").exists()


# ---------------------------------------------------------------- resume

RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from robust_csc.evaluation.store import ResultsStore
    from robust_csc.attacks import attack_checkpoint

    added = 0
    original = ResultsStore.add

    def add_then_die(self, key, values, **kw):
        global added
        inserted = original(self, key, values, **kw)
        added += 1
        if added == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # killed between two committed cells
        return inserted

    ResultsStore.add = add_then_die
    attack_checkpoint(sys.argv[1], store=sys.argv[2], attacks=["pgd[steps=3]", "fgsm"], epsilons=[2 / 255, 8 / 255],
                      n_examples=12, checks=False)
    """
)


def test_resume_after_sigkill_gives_the_same_table_without_duplicates(trained, tmp_path):
    path = trained["path"]
    kw = dict(attacks=["pgd[steps=3]", "fgsm"], epsilons=[2 / 255, 8 / 255], n_examples=12, checks=False)
    straight = attack_checkpoint(path, store=tmp_path / "straight.sqlite", **kw)

    killed = tmp_path / "killed.sqlite"
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(path), str(killed), "3"], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with ResultsStore(killed) as store:
        assert len(store) == 3
    resumed = attack_checkpoint(path, store=killed, **kw)
    assert resumed.cells_skipped == 3 and resumed.cells_run == 1  # 4 attack cells (and 2 worst-case cells) in all
    assert resumed.robust == straight.robust and resumed.worst_case == straight.worst_case
    with ResultsStore(killed) as a, ResultsStore(tmp_path / "straight.sqlite") as b:
        fa, fb = a.to_frame(), b.to_frame()
    assert len(fa) == len(fb) == 6
    key = ["attack", "epsilon"]
    assert fa.sort_values(key)[key + ["correct"]].values.tolist() == fb.sort_values(key)[key + ["correct"]].values.tolist()


def test_a_later_run_joins_the_worst_case_of_the_same_points(trained, tmp_path):
    model, x, y = trained["model"], trained["images"][:16], trained["labels"][:16]
    store = tmp_path / "s.sqlite"
    eps = 4 / 255
    first = attack(model, x, y, store, attacks=["pgd[steps=2]"], epsilons=[eps], checks=False)
    second = attack(model, x, y, store, attacks=["fgsm"], epsilons=[eps], checks=False)
    with ResultsStore(store) as results:
        pgd = results.outcomes(key_of("pgd-2:Linf", eps, len(y)))
        fgsm = results.outcomes(key_of("fgsm:Linf", eps, len(y)))
        worst = results.get(key_of("worst-case:Linf", eps, len(y)))
    both = int((pgd.correct & fgsm.correct).sum())
    assert second.worst_case[eps] == worst["correct"] == both
    assert both <= min(first.robust[("pgd-2:Linf", eps)], second.robust[("fgsm:Linf", eps)])
    assert worst["extra"]["attacks"] == ["fgsm:Linf", "pgd-2:Linf"]
    assert second.worst_attacks[eps] == ["fgsm:Linf", "pgd-2:Linf"]


def test_a_store_of_other_points_under_the_same_split_is_refused(trained, tmp_path):
    model, x, y = trained["model"], trained["images"][:8], trained["labels"][:8]
    store = tmp_path / "s.sqlite"
    attack(model, x, y, store, attacks=["fgsm"], checks=False)
    before = store.read_bytes()
    with pytest.raises(RobustCSCError, match="must name the same images"):
        attack(model, x.flip(0), y.flip(0), store, attacks=["fgsm"], checks=False, index=list(range(8, 16)))
    assert store.read_bytes() == before


def key_of(attack_name, eps, n):
    from robust_csc.evaluation.store import CellKey

    return CellKey("sdnet18", SHA, "digits", f"test[:{n}]", attack=attack_name, epsilon=eps)


# ---------------------------------------------------------------- bad input


class Probabilities(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(dim=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilons=[0.0]), "epsilon 0.0 is not a finite number > 0"),
        (dict(epsilons=[-1 / 255]), "is not a finite number > 0"),
        (dict(epsilons=[math.nan]), "epsilon nan"),
        (dict(epsilons=[math.inf]), "epsilon inf"),
        (dict(attacks="pgdd"), "unknown attack 'pgdd'"),
        (dict(norm="L1"), "unknown norm 'L1'; use Linf or L2"),
        (dict(attacks="fgsm", norm="L2"), "fgsm is an Linf attack"),
        (dict(attacks="pgd[eps=0.1]"), "set by the runner"),
        (dict(attacks="cw[c=x]"), "must be a number"),
        (dict(attacks="pgd[steps=0]"), "steps=0 is invalid"),
        (dict(attacks="pgd[alpha=0]"), "alpha=0 makes the attack do nothing"),
        (dict(attacks="square[n_queries=0]"), "n_queries=0 makes the attack do nothing"),
        (dict(epsilons=[2.0]), "exceeds 1, a ball that covers every"),
        (dict(epsilons=[100 / 255]), "above 64/255.*--allow-large-eps"),
        (dict(norm="L2", epsilons=[6.0]), "above 5.*--allow-large-eps"),
        (dict(norm="L2", epsilons=[60.0], allow_large_epsilon=True), "covers every image of this size"),
        (dict(steps=5, attacks="fgsm"), "fits none of the attacks"),
        (dict(batch_size=0), "batch_size 0 is invalid"),
    ],
)
def test_bad_arguments_fail_in_one_sentence_before_the_store_is_touched(trained, tmp_path, kwargs, match):
    with pytest.raises(RobustCSCError, match=match):
        attack(trained["model"], trained["images"][:4], trained["labels"][:4], tmp_path / "s.sqlite", **kwargs)
    assert not (tmp_path / "s.sqlite").exists()


def test_a_model_returning_probabilities_is_refused(trained, tmp_path):
    with pytest.raises(RobustCSCError, match="returns probabilities.*remove the final softmax"):
        attack(Probabilities(trained["model"]), trained["images"][:4], trained["labels"][:4], tmp_path / "s.sqlite",
               model_name="softmaxed")
    assert not (tmp_path / "s.sqlite").exists()


def test_autoattack_targeted_attacks_need_ten_classes(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5, width=4).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for name in ("autoattack", "apgd-t", "autoattack[version=plus]"):
        with pytest.raises(RobustCSCError, match="needs at least 10 classes, and the model has 5"):
            attack(model, x, y, tmp_path / "s.sqlite", attacks=name, model_name="resnet18")
    assert not (tmp_path / "s.sqlite").exists()


def test_images_outside_the_unit_range_are_refused(trained, tmp_path):
    with pytest.raises(RobustCSCError, match=r"pixels in \[0, 1\]"):
        attack(trained["model"], trained["images"][:4] * 2 - 1, trained["labels"][:4], tmp_path / "s.sqlite")
