"""Attacks that a reviewer accepts: the model judged as deployed, a weak headline caught by the cross-check,
adaptive attacks on an input-adaptive lambda policy, a gradient-masking policy exposed."""

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from policy_support import policy_meta

from robust_csc.attacks import load_test_images, run_attacks
from robust_csc.deployed import EvalOnly, frozen_state, state_fingerprint
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.tuning.policy import ReconPolicy
from robust_csc.tuning.rule import ReconLambdaModel
from robust_csc.tuning.splits import split_positions

pytestmark = pytest.mark.usefixtures("one_thread")

SHA = "ab" * 32
WHOLE = 64  # the policy's suite: the first 64 test digits, halved into tuning and reporting images
EPS = 4 / 255


@pytest.fixture(scope="module")
def points():
    """The reporting half of the first 64 test digits: images, labels and their test-set indices."""
    images, labels = load_test_images("digits", None, WHOLE)
    _, report = split_positions(WHOLE, 0)
    return images[report], labels[report], report


def recon_policy(model, images, cls=ReconPolicy):
    """A recon-rule policy whose lambda spans 0.1 .. 0.4 over the clean images' reconstruction errors."""
    probe = ReconLambdaModel(model, slope=0.0, intercept=0.1, clip=(0.1, 1.4), reference=0.1)
    errors = []
    hook = probe.stem.register_forward_pre_hook(lambda m, a: None if probe._busy else errors.append(probe.reference_error(a[0])))
    with torch.no_grad():
        probe(images)
    hook.remove()
    low, high = float(errors[0].min()), float(errors[0].max())
    slope = 0.3 / (high - low)
    return cls(slope=slope, intercept=0.1 - slope * low, clip=(0.1, 1.4), per="sample", meta=policy_meta(n=WHOLE))


class SawtoothRule(ReconLambdaModel):
    """Lambda from a non-differentiable step: the line plus a tiny sawtooth of huge slope in the recon error.

    The forward pass barely changes (lambda moves by < 0.05), but the input gradient is dominated by the
    sawtooth's slope: gradient masking by construction.
    """

    def choose(self, recon_error):
        return super().choose(recon_error) + 0.05 * torch.frac(1e4 * recon_error)


class MaskingPolicy(ReconPolicy):
    def wrap(self, model, mode="full", anchors=None):
        return SawtoothRule(model, slope=self.slope, intercept=self.intercept, clip=self.clip, reference=0.1,
                            layers=self.layers, per=self.per, mode=mode, anchors=anchors)


def attack(model, x, y, index, store, **kw):
    kw.setdefault("attacks", "pgd")
    return run_attacks(model, x, y, norm="Linf", epsilons=kw.pop("epsilons", [EPS]), store=store, model_name="sdnet18",
                       checkpoint_sha256=SHA, dataset="digits", split="test[:64]:report:s0", index=index, **kw)


def pgd_loop(model, x, y, eps, steps, alpha):
    """Madry et al.'s PGD from the definition (uniform start, signed steps, projection)."""
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


# ---------------------------------------------------------------- judged as deployed


def test_eval_only_stays_in_eval_mode_whatever_torchattacks_does(digits_sdnet, points):
    model = digits_sdnet["model"]
    x, y, _ = points
    wrapper = recon_policy(model, x).wrap(model)
    wrapper.train()  # what a freshly built nn.Module is: the bug the issue found
    guarded = EvalOnly(wrapper)
    before = state_fingerprint(model)
    torchattacks.PGD(guarded, eps=EPS, alpha=EPS / 4, steps=2)(x[:8], y[:8])
    assert not any(m.training for m in guarded.modules())  # torchattacks restores the mode it found: eval
    assert state_fingerprint(model) == before  # no BatchNorm statistics were overwritten
    model.eval()


def test_frozen_state_restores_flags_and_refuses_a_changed_model(digits_sdnet):
    model = digits_sdnet["model"]
    model.train()
    with frozen_state(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    model.eval()
    with pytest.raises(RuntimeError, match="changed the model"):
        with frozen_state(model):
            with torch.no_grad():
                next(model.parameters()).add_(1.0)
    with torch.no_grad():
        next(model.parameters()).sub_(1.0)


def test_a_recon_policy_is_attacked_like_a_model_that_never_left_eval_mode(digits_sdnet, points, tmp_path):
    model = digits_sdnet["model"].eval()
    x, y, index = points
    x, y, index = x[:16], y[:16], index[:16]
    policy = recon_policy(model, x)
    before = state_fingerprint(model)
    steps = 5
    result = attack(model, x, y, index, tmp_path / "s.sqlite", attacks=f"pgd[steps={steps}]", seed=3, adaptive=False,
                    checks=False, lambda_setting=policy)
    assert state_fingerprint(model) == before

    # The reference: the policy's wrapper, never out of eval mode, PGD from the definition, seeded as the runner does.
    wrapper = policy.wrap(model)
    with torch.no_grad():
        clean = wrapper(x).argmax(1) == y
    torch.manual_seed(3)
    adv = pgd_loop(wrapper, x[clean], y[clean], EPS, steps, 2.5 * EPS / steps)
    with torch.no_grad():
        expected = int((wrapper(adv).argmax(1) == y[clean]).sum())
    assert result.robust[(f"pgd-{steps}:Linf", EPS)] == expected
    assert result.clean_correct == int(clean.sum())


def test_a_policy_is_never_attacked_on_its_tuning_images(digits_sdnet, points, tmp_path):
    model = digits_sdnet["model"]
    x, y, _ = points
    tune, _ = split_positions(WHOLE, 0)
    with pytest.raises(RobustCSCError, match="images lambda policy .* was tuned on"):
        attack(model, x, y, tune, tmp_path / "s.sqlite", lambda_setting=recon_policy(model, x), checks=False)
    assert not (tmp_path / "s.sqlite").exists()


# ---------------------------------------------------------------- the cross-check


def test_a_weak_headline_attack_is_caught_and_the_worst_case_drops(digits_sdnet, points, tmp_path):
    model = digits_sdnet["model"]
    x, y, index = points
    store = tmp_path / "s.sqlite"
    weak = "pgd[steps=1,alpha=0.0002]"  # a step size 20x too small to leave the start's neighbourhood
    result = attack(model, x, y, index, store, attacks=weak, epsilons=[8 / 255])
    own = result.robust[("pgd-1[alpha=0.0002]:Linf", 8 / 255)]
    assert not result.checks["cross_check"]["passed"], result.checks["cross_check"]
    assert result.worst_case[8 / 255] < own  # the points the check broke now count
    with ResultsStore(store) as results:
        key = CellKey("sdnet18", SHA, "digits", "test[:64]:report:s0", attack="worst-case:Linf", epsilon=8 / 255)
        worst = results.get(key)
        weak_flags = results.outcomes(CellKey("sdnet18", SHA, "digits", "test[:64]:report:s0",
                                              attack="pgd-1[alpha=0.0002]:Linf", epsilon=8 / 255))
        check_flags = results.outcomes(CellKey("sdnet18", SHA, "digits", "test[:64]:report:s0",
                                               attack="pgd-40x2~check:Linf", epsilon=8 / 255))
    assert worst["correct"] == int((weak_flags.correct & check_flags.correct).sum()) == result.worst_case[8 / 255]
    assert worst["extra"]["attacks"] == ["pgd-1[alpha=0.0002]:Linf", "pgd-40x2~check:Linf"]
    assert "upper bound" in worst["extra"]["grade"]


# ---------------------------------------------------------------- adaptive attacks on the recon rule


def test_adaptive_attacks_are_never_weaker_in_the_worst_case(digits_sdnet, points, tmp_path):
    model = digits_sdnet["model"]
    x, y, index = points
    result = attack(model, x, y, index, tmp_path / "s.sqlite", lambda_setting=recon_policy(model, x), checks=False)
    keys = {"pgd:Linf", "pgd~bpda-fixed:Linf", "pgd~bpda-repick:Linf", "pgd~transfer:Linf"}
    assert set(result.attacks) == keys
    assert result.worst_case[EPS] <= min(result.robust[(k, EPS)] for k in keys)
    assert result.worst_attacks[EPS] == sorted(keys)
    assert result.checks["adaptive_attacks"]["passed"], result.checks["adaptive_attacks"]


def test_a_gradient_masking_policy_fools_the_plain_attack_but_not_bpda(digits_sdnet, points, tmp_path):
    model = digits_sdnet["model"]
    x, y, index = points
    policy = recon_policy(model, x, cls=MaskingPolicy)
    result = attack(model, x, y, index, tmp_path / "s.sqlite", lambda_setting=policy, checks=False)
    plain = result.robust[("pgd:Linf", EPS)]
    bpda = result.robust[("pgd~bpda-repick:Linf", EPS)]
    assert plain > bpda + 8, (plain, bpda)  # the plain attack overestimates robustness
    assert result.worst_case[EPS] <= bpda
    check = result.checks["adaptive_attacks"]
    assert not check["passed"] and "gradients are masked" in check["detail"]


def test_fixed_mode_gives_each_anchor_the_lambda_the_rule_chose_for_it(digits_sdnet, points):
    """BPDA-fixed's anchors over several chunks: each clean anchor gets the lambda the deployed rule picks for it
    alone (the reference: the full rule on one image at a time)."""
    model = digits_sdnet["model"]
    images = points[0][:10]
    full = recon_policy(model, images).wrap(model)
    with torch.no_grad():
        expected = []
        for image in images:
            full(image[None])
            expected.append(float(full.last_lambda[0]))
    fixed = ReconLambdaModel(full.model, slope=full.slope, intercept=full.intercept, clip=(full.lo, full.hi),
                             reference=full.reference, layers=full.layers, per=full.per)
    fixed._remember_anchors(images, chunk=3)  # 4 chunks: 3 + 3 + 3 + 1 anchors
    stem_inputs = []
    hook = fixed.stem.register_forward_pre_hook(lambda m, a: None if fixed._busy else stem_inputs.append(a[0]))
    with torch.no_grad():
        fixed(images)
    hook.remove()
    got = fixed.anchor_lambdas(stem_inputs[0])
    assert len(got) == len(images) and len(set(expected)) > 3  # the rule picks different lambdas for these digits
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
