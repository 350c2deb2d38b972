"""tune-lambda and evaluate --lambda-policy end to end; one-line errors with exit code 2."""

import json

import pytest
import torch

from cli_support import assert_user_error, run_main
from robust_csc.evaluation.store import ResultsStore
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
    lines = stdout.splitlines()
    assert any(line.split()[:2] == ["gaussian_noise", "5"] for line in lines)
    assert any(line.startswith("gain per severity") for line in lines)
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert (frame["split"] == "test[:12]:tune:s0").sum() == 3 * 3  # clean + 2 cells, 3 grid values each

    # An existing --out is refused without --force, and the file is kept.
    before = out.read_bytes()
    code, stdout, err = run_main(capsys, "tune-lambda", "--checkpoint", checkpoints["a"], *SUITE, "--out", out, "--store", store)
    assert_user_error(code, stdout, err, "already exists", "--force")
    assert out.read_bytes() == before

    code, stdout, err = run_main(capsys, "evaluate", "--checkpoint", checkpoints["a"], *SUITE, "--store", store,
                                 "--lambda", "trained,stem=0.5", "--lambda-policy", out)
    assert code == 0, err
    name = "policy:" + __import__("hashlib").sha256(
        json.dumps(policy, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    for setting in ("trained", "stem=0.5", name):
        assert f"lambda {setting}: accuracy by corruption (rows) and severity (columns)" in stdout


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
