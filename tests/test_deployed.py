"""Every runner judges the model as deployed and gives it back unchanged: the state_dict hash (weights, buffers,
lambdas) and every module's mode are the same after evaluate, attack, tune and the noise curve, even for a model
handed over in train mode; and `robust-csc compare` pairs two series of a store image by image."""

import numpy as np
import pytest
import torch

from cli_support import assert_user_error, run_main
from robust_csc.attacks import load_test_images, run_attacks
from robust_csc.data.generated import generated_clean, generated_suite
from robust_csc.deployed import state_fingerprint
from robust_csc.evaluation.harness import evaluate
from robust_csc.evaluation.noise_curve import noise_curve
from robust_csc.evaluation.stats import mcnemar
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.models import create_model
from robust_csc.tuning import tune

pytestmark = pytest.mark.usefixtures("one_thread")
SHA = "cd" * 32
N = 12


def model_in_train_mode():
    torch.manual_seed(0)
    model = create_model("sdnet18", num_classes=10, width=4)
    model.train()  # what a freshly built or half-trained model is: the runners must not trust its mode
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a batch-statistics forward would differ
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def modes(model):
    return [m.training for m in model.modules()]


RUNNERS = {
    "evaluate": lambda m, tmp: evaluate(
        m, generated_suite("digits", corruptions=["gaussian_noise"], severities=[3], n_examples=N), store=tmp / "e.sqlite",
        model_name="sdnet18", checkpoint_sha256=SHA, dataset="digits-c[cifar]", clean=generated_clean("digits", n_examples=N),
        lambdas=[None, "stem=0.5"], batch_size=5),
    "attack": lambda m, tmp: run_attacks(
        m, *load_test_images("digits", None, N), attacks="pgd[steps=2]", norm="Linf", epsilons=[4 / 255],
        store=tmp / "a.sqlite", model_name="sdnet18", checkpoint_sha256=SHA, dataset="digits", split="t"),
    "tune": lambda m, tmp: tune(
        m, generated_suite("digits", corruptions=["gaussian_noise"], severities=[3], n_examples=N), store=tmp / "t.sqlite",
        model_name="sdnet18", checkpoint_sha256=SHA, dataset="digits-c[cifar]", grid=[0.1, 0.5], rule="recon"),
    "noise curve": lambda m, tmp: noise_curve(
        m, generated_clean("digits", n_examples=N), "gaussian", [0.0, 0.2], [None, 0.5], compiled=False),
}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_the_model_comes_back_byte_identical_and_in_its_mode(runner, tmp_path):
    model = model_in_train_mode()
    before, flags = state_fingerprint(model), modes(model)
    RUNNERS[runner](model, tmp_path)
    assert state_fingerprint(model) == before  # weights, BatchNorm statistics and lambdas
    assert modes(model) == flags and all(p.requires_grad for p in model.parameters())


def test_evaluation_runs_in_eval_mode_whatever_mode_the_model_came_in(tmp_path):
    """A model handed over in train mode scores exactly what the same model in eval mode scores."""
    model = model_in_train_mode()
    frame = RUNNERS["evaluate"](model, tmp_path).frame
    reference = model_in_train_mode().eval()
    clean = generated_clean("digits", n_examples=N)
    x = torch.stack([clean[i][0] for i in range(N)])
    y = torch.tensor([clean[i][1] for i in range(N)])
    with torch.no_grad():
        expected = int((reference(x).argmax(1) == y).sum())
    row = frame[(frame["corruption"] == "none") & (frame["lambda_setting"] == "trained")].iloc[0]
    assert row["correct"] == expected


# ---------------------------------------------------------------- robust-csc compare


def _store(path, a_flags, b_flags, outcomes=True):
    from robust_csc.evaluation.outcomes import Outcomes

    with ResultsStore(path) as store:
        for setting, flags in (("trained", a_flags), ("stem=0.5", b_flags)):
            for severity, cell in enumerate(flags, start=1):
                values = {"n": len(cell), "correct": int(np.sum(cell)), "seconds": 0.1}
                if outcomes:
                    values["outcomes"] = Outcomes.first(cell)
                store.add(CellKey("sdnet18", SHA, "digits-c[cifar]", "test[:40]", "gaussian_noise", severity,
                                  lambda_setting=setting), values)


def test_compare_pairs_two_series_image_by_image(capsys, tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((2, 40)) < 0.5
    b = np.where(rng.random((2, 40)) < 0.6, a, rng.random((2, 40)) < 0.9)
    _store(tmp_path / "r.sqlite", a, b)
    code, out, err = run_main(capsys, "compare", "--store", tmp_path / "r.sqlite", "--a", "sdnet18@stem=0.5",
                              "--b", "sdnet18@trained")
    assert code == 0, err
    lines = out.splitlines()
    for severity in (1, 2):
        p = mcnemar(b[severity - 1], a[severity - 1]).p_value
        line = next(line for line in lines if line.strip().startswith(f"gaussian_noise {severity}"))
        assert (f"p = {p:.2f}" in line or f"p = {p:.3f}" in line or "p < 0.001" in line) and "significant" in line
    assert any(line.startswith("mean over the 2 common cells:") for line in lines)


def test_compare_refuses_cells_without_outcomes_and_unknown_series(capsys, tmp_path):
    rng = np.random.default_rng(1)
    flags = rng.random((1, 10)) < 0.5
    _store(tmp_path / "old.sqlite", flags, flags, outcomes=False)
    before = (tmp_path / "old.sqlite").read_bytes()
    code, out, err = run_main(capsys, "compare", "--store", tmp_path / "old.sqlite", "--a", "sdnet18@stem=0.5",
                              "--b", "sdnet18")
    assert_user_error(code, out, err, "without per-example outcomes", "--recompute")
    assert (tmp_path / "old.sqlite").read_bytes() == before
    code, out, err = run_main(capsys, "compare", "--store", tmp_path / "old.sqlite", "--a", "vit@trained", "--b", "sdnet18")
    assert_user_error(code, out, err, "no cells of vit@trained")
    code, out, err = run_main(capsys, "compare", "--store", tmp_path / "missing.sqlite", "--a", "x", "--b", "y")
    assert_user_error(code, out, err, "no results store at")
    assert not (tmp_path / "missing.sqlite").exists()


def test_fewer_than_two_images_leave_no_interval(capsys, tmp_path):
    from robust_csc.models.checkpoints import save_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", model_in_train_mode(), dataset="digits")
    for verb in (["evaluate", "--suite", "generated"], ["attack", "--attack", "fgsm", "--eps", "2/255"]):
        code, out, err = run_main(capsys, *verb, "--checkpoint", path, "--n-examples", "1", "--store", tmp_path / "s.sqlite")
        assert_user_error(code, out, err, "--n-examples 1", "2")
    assert not (tmp_path / "s.sqlite").exists()
