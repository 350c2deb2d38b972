"""tune-lambda and evaluate --lambda-policy end to end; one-line errors with exit code 2."""

import json

import pytest
import torch

from cli_support import assert_user_error, run_main
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.store import ResultsStore
from robust_csc.tuning.splits import split_positions
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint

SUITE = ["--suite", "generated", "--corruptions", "gaussian_noise", "--severities", "1,5", "--n-examples", "12"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, arch, seed in (("a", "sdnet18", 0), ("b", "sdnet18", 1), ("resnet", "resnet18", 0)):
        torch.manual_seed(seed)
        paths[name] = save_checkpoint(folder / f"{name}.safetensors", create_model(arch, width=4, num_classes=10), dataset="digits")
    return paths


def test_tune_then_evaluate_with_the_policy(capsys, checkpoints, tmp_path, one_thread):
    store, out = tmp_path / "r.sqlite", tmp_path / "p.json"
    code, stdout, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["a"], *SUITE, "--grid", "0.1,0.5,1",
                                 "--store", store, "--out", out, "--rule", "recon", "--per", "batch")
    assert code == 0, err
    policy = json.loads(out.read_text())
    assert policy["rule"] == "recon" and policy["grid"] == [0.1, 0.5, 1.0]
    assert policy["checkpoint_sha256"] == checkpoint_hash(checkpoints["a"])
    assert policy["splits"] == {"tune": "test[:12]:tune:s0", "report": "test[:12]:report:s0"}
    assert policy["suite"]["options"] == {"suite": "generated", "dataset": "digits", "profile": "cifar", "seed": 0,
                                          "n_examples": 12}
    tuning_images = set(split_positions(12, 0)[0].tolist())
    lines = stdout.splitlines()
    assert any(line.split()[:2] == ["gaussian_noise", "5"] for line in lines)
    assert any(line.startswith("mean gain per severity") for line in lines)
    assert any("significant" in line for line in lines)  # every gain says whether it is evidence of anything
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert (frame["split"] == "test[:12]:tune:s0").sum() == 3 * 3  # clean + 2 cells, 3 grid values each

    # An existing --out is refused without --force, and the file is kept.
    before = out.read_bytes()
    code, stdout, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["a"], *SUITE, "--out", out, "--store", store)
    assert_user_error(code, stdout, err, "already exists", "--force")
    assert out.read_bytes() == before

    # The suite comes from the policy; every setting is scored on its reporting split only.
    evaluated = tmp_path / "e.sqlite"
    code, stdout, err = run_main(capsys, "evaluate", "--checkpoint", checkpoints["a"], "--store", evaluated,
                                 "--lambda", "trained,stem=0.5", "--lambda-policy", out)
    assert code == 0, err
    name = "policy:" + __import__("hashlib").sha256(
        json.dumps(policy, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    for setting in ("trained", "stem=0.5", name):
        assert f"lambda {setting}: accuracy in % by corruption and severity; n = 6 images per cell" in stdout
    assert "scored on the reporting split" in stdout
    with ResultsStore(evaluated) as results:
        frame = results.to_frame()
    assert set(frame["split"]) == {"test[:12]:report:s0"} and len(frame) == 3 * 3
    scored = set()
    for text in frame["outcomes"]:
        scored |= set(Outcomes.from_json(text).index.tolist())
    assert len(scored) == 6 and not scored & tuning_images  # counted from the store: no tuning image was scored


@pytest.mark.parametrize("args, fragments", [
    (["--profile", "imagenet"], ["--profile imagenet disagrees", "--profile cifar"]),
    (["--suite", "cifar10-c"], ["--suite cifar10-c disagrees"]),
    (["--seed", "3"], ["--seed 3 disagrees"]),
    (["--n-examples", "20"], ["--n-examples 20 disagrees"]),
    (["--dataset", "cifar10"], ["--dataset cifar10 disagrees"]),
])
def test_a_policy_evaluated_off_its_suite_is_refused(capsys, checkpoints, tmp_path, one_thread, args, fragments):
    policy = tmp_path / "p.json"
    code, out, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["a"], *SUITE, "--grid", "0.1,1",
                              "--store", tmp_path / "t.sqlite", "--out", policy)
    assert code == 0, err
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoints["a"], "--lambda-policy", policy,
                              "--store", tmp_path / "e.sqlite", *args)
    assert_user_error(code, out, err, *fragments)
    assert not (tmp_path / "e.sqlite").exists()


def test_a_policy_given_the_whole_split_from_python_is_scored_on_its_reporting_half(checkpoints, tmp_path, one_thread):
    from robust_csc.data.generated import generated_clean, generated_suite
    from robust_csc.evaluation.harness import evaluate_checkpoint
    from robust_csc.tuning import load_policy, tune_checkpoint

    suite = generated_suite("digits", corruptions=["gaussian_noise"], severities=[1], n_examples=12)
    clean = generated_clean("digits", "test", None, 12)
    tune_checkpoint(checkpoints["a"], suite, store=tmp_path / "t.sqlite", clean=clean, grid=[0.1, 1.0],
                    split_base="test[:12]", out=tmp_path / "p.json")
    policy = load_policy(tmp_path / "p.json")
    result = evaluate_checkpoint(checkpoints["a"], suite, store=tmp_path / "e.sqlite", clean=clean, dataset=suite.name,
                                 split="test[:12]", lambdas=[None, policy])
    assert result.split == "test[:12]:report:s0"
    assert set(result.frame["n"]) == {6}
    other = generated_suite("digits", profile="imagenet", corruptions=["gaussian_noise"], severities=[1], n_examples=12)
    with pytest.raises(RobustCSCError, match="tuned on the suite digits-c\\[cifar\\]"):
        evaluate_checkpoint(checkpoints["a"], other, store=tmp_path / "x.sqlite", dataset=other.name, split="test[:12]",
                            lambdas=[policy])
    with pytest.raises(RobustCSCError, match="may be scored only on its reporting split"):
        evaluate_checkpoint(checkpoints["a"], suite, store=tmp_path / "x.sqlite", dataset=suite.name, split="test",
                            lambdas=[policy])


@pytest.mark.parametrize("args, fragments", [
    (["--grid", ""], ["grid is empty"]),
    (["--grid", "-0.5,0.2"], ["invalid"]),
    (["--grid", "0.1:x:3"], ["malformed"]),
    (["--layers", "blocks"], ["layer selection"]),
    (["--rule", "magic"], ["--rule"]),
])
def test_tune_bad_input(capsys, checkpoints, tmp_path, args, fragments):
    code, out, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["a"], *SUITE, "--store",
                              tmp_path / "r.sqlite", "--out", tmp_path / "p.json", *args)
    assert_user_error(code, out, err, *fragments)
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "p.json").exists()


def test_models_without_csc_layers_and_foreign_policies_are_refused(capsys, checkpoints, tmp_path, one_thread):
    code, out, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["resnet"], *SUITE,
                              "--store", tmp_path / "r.sqlite", "--out", tmp_path / "p.json")
    assert_user_error(code, out, err, "without CSC layers")
    policy = tmp_path / "a.json"
    code, out, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["a"], *SUITE, "--grid", "0.1,1",
                              "--store", tmp_path / "t.sqlite", "--out", policy)
    assert code == 0, err
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoints["b"], *SUITE,
                              "--store", tmp_path / "e.sqlite", "--lambda-policy", policy)
    assert_user_error(code, out, err, checkpoint_hash(checkpoints["a"]), checkpoint_hash(checkpoints["b"]))
    assert not (tmp_path / "e.sqlite").exists()
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoints["resnet"], *SUITE,
                              "--store", tmp_path / "e.sqlite", "--lambda", "scale=1.5")
    assert_user_error(code, out, err, "without CSC layers")
