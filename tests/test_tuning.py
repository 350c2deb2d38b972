"""Lambda tuning: disjoint splits, the one-pass sweep against separate runs, selection on a trained digits
SDNet, the label-free recon rule, policy files."""

import json
import math

import numpy as np
import pytest
import torch
from policy_support import policy_meta
from torch.utils.data import DataLoader, TensorDataset

from robust_csc.csc import get_lambda, record_stats, set_lambda
from robust_csc.data.corrupted import CorruptionSuite
from robust_csc.data.generated import generated_clean, generated_suite
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.harness import evaluate
from robust_csc.evaluation.store import ResultsStore
from robust_csc.lambdas import LambdaSetting
from robust_csc.models import create_model
from robust_csc.models.checkpoints import load_checkpoint
from robust_csc.training import FINAL_NAME, TrainConfig, train
from robust_csc.tuning import (
    CellPolicy, ReconPolicy, TuningSplit, choose, fit_line, load_policy, parse_grid, split_positions, sweep_cell,
    tune, tune_checkpoint,
)
from robust_csc.tuning.sweep import per_sample_lambdas

pytestmark = pytest.mark.usefixtures("one_thread")
NOISE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits SDNet-18 (width 8) trained with stem lambda 0.5, so the grid reaches below and above it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sdnet")
    train(TrainConfig(model="sdnet18", dataset="digits", width=8, epochs=4, lam=0.5, out_dir=out, resume=False))
    return out / FINAL_NAME


def tiny(arch="sdnet18", seed=0):
    torch.manual_seed(seed)
    return create_model(arch, num_classes=10, width=4).eval()


def meta(**overrides):
    return policy_meta(**overrides)


# ---------------------------------------------------------------- splits


def test_splits_are_disjoint_halves_of_the_same_images():
    tune_pos, report_pos = split_positions(451, seed=3)
    assert len(tune_pos) == 225 and len(report_pos) == 226
    assert not set(tune_pos) & set(report_pos) and set(tune_pos) | set(report_pos) == set(range(451))
    assert np.array_equal(split_positions(451, 3)[0], tune_pos)  # fixed by the seed
    assert not np.array_equal(split_positions(451, 4)[0], tune_pos)
    split = TuningSplit.of(20, "test[:20]", seed=1)
    assert (split.tune_name, split.report_name) == ("test[:20]:tune:s1", "test[:20]:report:s1")
    suite = generated_suite("digits", corruptions=["gaussian_noise", "fog"], severities=[2], n_examples=20)
    for half_suite in (split.suite(suite, "tune"), split.suite(suite, "report")):
        assert half_suite.images_per_cell == 10
    # The image indices the items carry: the same per half in every cell (clean included), never shared.
    seen = {}
    for half in ("tune", "report"):
        cells = [split.subset(generated_clean("digits", n_examples=20), half)]
        cells += [split.suite(suite, half).dataset(c, 2) for c in ("gaussian_noise", "fog")]
        indices = [sorted(int(item[2]) for item in cell) for cell in cells]
        assert all(ix == indices[0] for ix in indices)
        seen[half] = set(indices[0])
    assert not seen["tune"] & seen["report"] and len(seen["tune"] | seen["report"]) == 20


# ---------------------------------------------------------------- the sweep


@pytest.mark.parametrize("arch, layers, grid", [("sdnet18", "stem", (0.1, 0.4, 1.3)),
                                                ("sdnet18_all", "all", (0.05, 0.3)),
                                                ("sdnet18_all", "scale", (0.5, 2.0, 4.0))])
def test_per_sample_lambda_equals_separate_runs(arch, layers, grid):
    model = tiny(arch)
    images = generated_suite("digits", corruptions="gaussian_noise", severities=5, n_examples=6).dataset("gaussian_noise", 5)
    x = torch.stack([images[i][0] for i in range(6)])
    kind = {"stem": "stem", "all": "all", "scale": "scale"}[layers]
    with torch.inference_mode():
        lam = torch.tensor(grid).repeat_interleave(6)
        with per_sample_lambdas(model, layers, lam):
            together = model(x.repeat(len(grid), 1, 1, 1)).view(len(grid), 6, -1)
        for k, value in enumerate(grid):
            with LambdaSetting(kind, value).applied(model) as run:
                alone = run(x)
            assert torch.allclose(together[k], alone, atol=1e-4, rtol=1e-4), (layers, value)
    assert all(isinstance(v, float) for v in get_lambda(model).values())  # restored


def test_sweep_counts_and_recon_match_separate_evaluations():
    model = tiny()
    data = generated_suite("digits", corruptions="impulse_noise", severities=3, n_examples=9).dataset("impulse_noise", 3)
    grid = (0.1, 0.6, 1.4)
    result = sweep_cell(model, data, grid, "stem", batch_size=7)  # 2 images per pass: several batches, a short one
    # The statistics at the reference (the trained stem lambda, 0.1) only, or none: the same counts.
    reference = sweep_cell(model, data, grid, "stem", batch_size=7, stats="reference")
    plain = sweep_cell(model, data, grid, "stem", batch_size=7, stats="none")
    for k, value in enumerate(grid):
        correct, recon, density = 0, 0.0, 0.0
        with torch.inference_mode(), LambdaSetting("stem", value).applied(model), record_stats(model, "stem") as layers:
            for x, y, _ in DataLoader(data, batch_size=4):
                correct += int((model(x).argmax(1) == y).sum())
                stats = next(iter(layers.values())).last_stats
                recon += float(stats.recon_error.sum())
                density += float(stats.code_density.sum())
        assert result.correct[k] == correct == reference.correct[k] == plain.correct[k]
        assert math.isclose(result.recon_error[k], recon / 9, rel_tol=1e-4)
        assert math.isclose(result.code_density[k], density / 9, rel_tol=1e-4)
        if value == 0.1:
            assert math.isclose(reference.recon_error[k], recon / 9, rel_tol=1e-4)
            assert math.isclose(reference.code_density[k], density / 9, rel_tol=1e-4)
        else:
            assert math.isnan(reference.recon_error[k]) and math.isnan(reference.code_density[k])
    assert np.isnan(plain.recon_error).all() and np.isnan(plain.code_density).all()
    assert result.n == reference.n == plain.n == 9
    with pytest.raises(RobustCSCError, match="reference value 0.1"):
        sweep_cell(model, data, (0.5, 0.9), "stem", stats="reference")
    with pytest.raises(RobustCSCError, match="stats choice"):
        sweep_cell(model, data, grid, "stem", stats="some")


# ---------------------------------------------------------------- selection on a trained model


def tolerance(p, n):
    """Two standard errors of a difference of two accuracies on n images each (binomial, p floored at 1/n)."""
    var = max(p * (1 - p), 1.0 / n)
    return 2.0 * math.sqrt(2.0 * var / n)


def test_tuned_lambda_never_loses_more_than_noise_on_the_noise_cells(trained, tmp_path):
    suite = generated_suite("digits", corruptions=NOISE, severities=[1, 3, 5], profile="imagenet", n_examples=200)
    clean = generated_clean("digits", n_examples=200)
    result = tune_checkpoint(trained, suite, store=tmp_path / "r.sqlite", clean=clean, grid="0.1:1.4:14",
                             out=tmp_path / "p.json", split_base="test[:200]")
    frame = result.frame
    assert len(frame) == 13 and set(frame["n"]) == {100}
    for row in frame.to_dict("records"):
        assert row["acc_tuned"] >= row["acc_trained"] - tolerance(row["acc_trained"], row["n"]), row
    # Tuning pays on the suite's own gaussian noise (clipped to [0, 1]). Measured on this recipe (200 digits):
    # best 0.2 / 0.1 / 0.1 at severities 1 / 3 / 5, accuracy 0.43 -> 0.91 at severity 3 and 0.17 -> 0.30 at 5
    # against the trained 0.5. Not the paper's direction: on digits' nearly 0/1 pixels clipping makes the noise
    # a loss of contrast, and a smaller lambda keeps the weakened strokes (the next test varies unclipped noise).
    gauss = frame[frame["corruption"] == "gaussian_noise"].set_index("severity")
    assert gauss.loc[3, "gain"] > 0.2 and gauss.loc[5, "gain"] > 0.05, gauss
    # The stored cells: 14 grid cells per cell on the tuning split, trained + policy on the reporting split.
    with ResultsStore(tmp_path / "r.sqlite") as store:
        stored = store.to_frame()
    assert (stored["split"] == "test[:200]:tune:s0").sum() == 13 * 14
    report = stored[stored["split"] == "test[:200]:report:s0"]
    assert set(report["lambda_setting"]) == {"trained", result.policy.name}
    extra = json.loads(report[report["lambda_setting"] == result.policy.name]["extra"].iloc[0])
    assert extra["rule"] == "grid" and extra["layers"] == "stem" and extra["lambda"] in result.policy.meta["grid"]
    # A rerun reuses every stored cell and chooses the same.
    again = tune_checkpoint(trained, suite, store=tmp_path / "r.sqlite", clean=clean, grid="0.1:1.4:14",
                            split_base="test[:200]")
    assert again.policy.name == result.policy.name


class ZeroMeanNoise(torch.utils.data.Dataset):
    """Gaussian noise without clipping, seeded per image: zero-mean, unlike the suites' clipped gaussian_noise."""

    def __init__(self, base, sigma):
        self.base, self.sigma = base, sigma

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label, index = self.base[i]
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1000 + index))
        return image + self.sigma * noise, label, index


def test_chosen_lambda_grows_with_gaussian_noise_level(trained, tmp_path):
    # The paper's effect, on noise that a larger lambda can filter: zero-mean gaussian noise without the clip.
    # The suites' gaussian_noise clips to [0, 1]; on digits (pixels nearly all 0 or 1) clipping turns the
    # noise into a loss of contrast, which asks for a smaller lambda (measured in the test above).
    base = generated_clean("digits", n_examples=240)
    sigmas = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    suite = CorruptionSuite("digits-zero-mean", 10, ["gaussian_noise"], sigmas, 240,
                            lambda c, s: ZeroMeanNoise(base, sigmas[s]))
    model, _ = load_checkpoint(trained)
    result = tune(model, suite, store=tmp_path / "r.sqlite", model_name="sdnet18", checkpoint_sha256="0" * 64,
                  dataset=suite.name, clean=base, grid=(0.2, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0))
    chosen = [result.oracle.cells[("gaussian_noise", s)] for s in sigmas]
    assert chosen == sorted(chosen) and chosen[-1] > chosen[0], chosen
    assert result.frame["gain"].iloc[-1] > 0.1  # the highest level gains a lot


# ---------------------------------------------------------------- the recon rule


def test_fit_line_and_choose():
    assert fit_line([1, 2, 3], [0.1, 0.2, 0.3]) == pytest.approx((0.1, 0.0))
    assert fit_line([5, 5], [0.2, 0.4]) == (0.0, pytest.approx(0.3))  # no spread: the mean
    assert choose([0.1, 0.5, 0.9], [3, 5, 5], reference=0.1) == 0.5  # tie: closest to the reference
    assert choose([0.1, 0.3, 0.5], [5, 2, 5], reference=0.3) == 0.1  # equally close: the smaller


def stem_errors(model, x):
    """The stem's per-sample recon error at lambda 0.1, by record_stats (the independent reference)."""
    with torch.inference_mode(), LambdaSetting("stem", 0.1).applied(model), record_stats(model, "stem") as layers:
        model(x)
        return next(iter(layers.values())).last_stats.recon_error


def recon_policy(model, x, per="sample"):
    """A rule whose line maps the range of x's recon errors onto lambda 0.2 .. 1.2 (inside the clip)."""
    error = stem_errors(model, x)
    lo, hi = float(error.min()), float(error.max())
    slope = 1.0 / (hi - lo)
    return ReconPolicy(slope=slope, intercept=0.2 - slope * lo, clip=(0.1, 1.4), per=per, meta=meta())


def test_recon_rule_matches_its_definition_and_lets_gradients_through():
    model = tiny()
    x = torch.stack([generated_suite("digits", corruptions="gaussian_noise", severities=s, n_examples=3)
                     .dataset("gaussian_noise", s)[i][0] for s in (1, 5) for i in range(3)])
    policy = recon_policy(model, x)
    # By hand: the stem's recon error at the reference lambda, the clipped line, then a per-sample run.
    with torch.inference_mode():
        error = stem_errors(model, x)
        lam = (policy.slope * error + policy.intercept).clamp(0.1, 1.4)
        saved = get_lambda(model)
        set_lambda(model, lam, layers="stem")
        expected = model(x)
        set_lambda(model, saved)
        with policy.applied(model) as run:
            got = run(x)
            assert torch.allclose(run.last_lambda, lam, rtol=1e-4)
    assert torch.allclose(got, expected, atol=1e-4)
    assert lam.unique().numel() > 1  # the test means something: lambdas differ per sample
    # Differentiable: lambda moves with the input.
    with policy.applied(model) as run:
        xg = x.clone().requires_grad_(True)
        lam_of_x = run.choose(run.reference_error(model.normalize(xg)))
        (grad,) = torch.autograd.grad(lam_of_x[(lam_of_x > 0.1) & (lam_of_x < 1.4)].sum(), xg)
        assert grad.abs().sum() > 0
        run(xg).sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert get_lambda(model) == saved


def test_recon_rule_uses_no_labels(tmp_path):
    model = tiny()
    images, labels, _ = next(iter(DataLoader(generated_suite("digits", corruptions="shot_noise", severities=4,
                                                             n_examples=12).dataset("shot_noise", 4), batch_size=12)))
    right = TensorDataset(images, labels, torch.arange(12))
    wrong = TensorDataset(images, (labels + 1) % 10, torch.arange(12))  # every label wrong
    chosen = {}
    for name, data in (("right", right), ("wrong", wrong)):
        for per in ("sample", "batch"):
            policy = recon_policy(model, images, per)
            # The policy's own suite and split: the harness scores its reporting half only.
            suite = CorruptionSuite("digits-c[cifar]", 10, [], [], 12, None)
            result = evaluate(model, suite, store=tmp_path / f"{name}.sqlite", model_name="sdnet18", split="test[:12]",
                              checkpoint_sha256="0" * 64, dataset="d", lambdas=[policy], clean=data, batch_size=5)
            assert result.split == "test[:12]:report:s0" and int(result.frame.iloc[0]["n"]) == 6
            row = result.frame.iloc[0]
            chosen[(name, per)] = json.loads(row["extra"])["mean_lambda"]
            with torch.inference_mode(), policy.applied(model) as run:
                run(images)
                chosen[(name, per, "each")] = run.last_lambda.tolist()
    for per in ("sample", "batch"):
        assert chosen[("right", per)] == chosen[("wrong", per)]
        assert chosen[("right", per, "each")] == chosen[("wrong", per, "each")]
    assert len(set(chosen[("right", "batch", "each")])) == 1


# ---------------------------------------------------------------- policies


def test_cell_policy_round_trip_and_hash_check(tmp_path):
    policy = CellPolicy({("none", 0): 0.1, ("gaussian_noise", 3): 0.5}, meta(), [])
    path = policy.save(tmp_path / "p.json")
    back = load_policy(path, checkpoint_sha256="ab" * 32)
    assert back.name == policy.name and back.name.startswith("policy:") and len(back.name) == 19
    assert back.cells == policy.cells and back.to_dict() == policy.to_dict()
    with pytest.raises(RobustCSCError, match="already exists"):
        policy.save(path)
    with pytest.raises(RobustCSCError) as info:
        load_policy(path, checkpoint_sha256="cd" * 32)
    assert "ab" * 32 in str(info.value) and "cd" * 32 in str(info.value)
    model = tiny()
    before = get_lambda(model)
    with back.applied(model, "gaussian_noise", 3) as run:
        assert next(iter(get_lambda(run).values())) == 0.5
    assert get_lambda(model) == before
    with pytest.raises(RobustCSCError, match="no lambda for cell"):
        with back.applied(model, "fog", 1):
            pass
    assert CellPolicy({("none", 0): 0.2}, meta(), []).name != policy.name
    recon = ReconPolicy(slope=0.01, intercept=0.1, clip=(0.1, 1.4), per="batch", meta=meta())
    assert load_policy(recon.save(tmp_path / "r.json")).name == recon.name


def test_bad_input_is_refused(tmp_path):
    for text, match in (("", "empty"), ("0.1:1.4", "malformed"), ("a,b", "not a number"), ("-0.1,0.2", "invalid"),
                        ("0.1:1.4:0", "at least 1"), ("1:0:3", "backwards")):
        with pytest.raises(RobustCSCError, match=match):
            parse_grid(text)
    with pytest.raises(RobustCSCError, match="scale grid cannot hold 0"):
        parse_grid("0,1", "scale")
    suite = generated_suite("digits", corruptions="fog", severities=1, n_examples=4)
    common = dict(store=tmp_path / "r.sqlite", model_name="m", checkpoint_sha256="0" * 64, dataset="d")
    with pytest.raises(RobustCSCError, match="no CSC layers"):
        tune(tiny("resnet18"), suite, **common)
    with pytest.raises(RobustCSCError, match="layer selection"):
        tune(tiny(), suite, layers="blocks", **common)
    with pytest.raises(RobustCSCError, match="empty"):
        tune(tiny(), suite, grid=(), **common)
    with pytest.raises(RobustCSCError, match="no CSC layers"):
        CellPolicy({("none", 0): 0.1}, meta(), []).applied(tiny("resnet18")).__enter__()
    assert not (tmp_path / "r.sqlite").exists()
