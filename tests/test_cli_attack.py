"""`robust-csc attack` end to end: table and checks printed, cells stored, one-line errors that leave the store alone."""


import pytest
import torch

from cli_support import assert_proc_error, assert_user_error, cli, run_main
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint
from robust_csc.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-attack")
    torch.manual_seed(0)
    train(TrainConfig(model="sdnet18", dataset="digits", width=4, epochs=2, batch_size=32, train_subset=384,
                      test_subset=32, out_dir=out / "sd", resume=False))
    five = create_model("resnet18", num_classes=5, width=4)
    save_checkpoint(out / "five.safetensors", five, dataset="digits")
    resnet = create_model("resnet18", num_classes=10, width=4)
    save_checkpoint(out / "resnet.safetensors", resnet, dataset="digits")
    return {"sdnet": out / "sd" / "model.safetensors", "five": out / "five.safetensors", "resnet": out / "resnet.safetensors"}


def test_attack_end_to_end_prints_the_table_and_checks_and_resumes(checkpoints, tmp_path):
    store = tmp_path / "r.sqlite"
    args = ["attack", "--checkpoint", checkpoints["sdnet"], "--attack", "pgd", "--attack", "fgsm", "--norm", "Linf",
            "--eps", "2/255,16/255", "--steps", "5", "--n-examples", "12", "--lambda", "stem=0.3", "--store", store,
            "--no-progress"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for fragment in ("pgd-5:Linf", "fgsm:Linf", "worst-case:Linf", "2/255", "16/255", "lambda stem=0.3",
                     "monotone_in_epsilon", "gradients", "large_epsilon", "cross_check", "cells run 6, skipped 0",
                     "evaluation: upper bound: fgsm, pgd-5 only, not comparable with AutoAttack figures"):
        assert fragment in out, (fragment, out)
    with ResultsStore(store) as results:
        frame = results.to_frame()
    # 2 attacks and the cross-check's PGD at 2 epsilons, and the 2 worst-case cells
    assert len(frame) == 8 and set(frame["split"]) == {"test[:12]"} and set(frame["lambda_setting"]) == {"stem=0.3"}
    assert set(frame["checkpoint_sha256"]) == {checkpoint_hash(checkpoints["sdnet"])}
    again = cli(*args)
    assert again.returncode == 0 and "cells run 0, skipped 6" in again.stdout  # the check's cells are reused too


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--eps", "0"], ["epsilon 0.0 is not a finite number > 0"]),
        (["--eps", "nan"], ["epsilon nan"]),
        (["--eps", "inf"], ["epsilon inf"]),
        (["--eps", "eight"], ["'eight' is not a number"]),
        (["--attack", "nope"], ["unknown attack 'nope'"]),
        (["--norm", "L0"], ["unknown norm 'L0'"]),
        (["--autoattack-version", "plus"], ["version plus fits none of the attacks"]),
        (["--lambda", "0.5", "--lambda-policy", "p.json"], ["no lambda policy at p.json"]),
        (["--lambda", "-1"], ["lambda all value -1.0 is invalid"]),
        (["--n-examples", "0"], ["--n-examples 0 is not positive"]),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_store(checkpoints, tmp_path, capsys, extra, fragments):
    store = tmp_path / "r.sqlite"
    with ResultsStore(store):
        pass
    before = store.read_bytes()
    base = {"--checkpoint": checkpoints["sdnet"], "--attack": "pgd", "--eps": "1/255", "--store": store}
    for i in range(0, len(extra), 2):
        base[extra[i]] = extra[i + 1]
    args = ["attack", *[str(part) for item in base.items() for part in item]]
    assert_user_error(*run_main(capsys, *args), *fragments)
    assert store.read_bytes() == before


def test_autoattack_standard_on_five_classes_and_a_lambda_on_a_resnet_are_refused(checkpoints, tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    code = run_main(capsys, "attack", "--checkpoint", checkpoints["five"], "--attack", "autoattack", "--eps", "8/255",
                    "--store", store)
    assert_user_error(*code, "needs at least 10 classes, and the model has 5")
    code = run_main(capsys, "attack", "--checkpoint", checkpoints["resnet"], "--attack", "pgd", "--eps", "8/255",
                    "--lambda", "0.5", "--store", store)
    assert_user_error(*code, "without CSC layers")
    assert not store.exists()


def test_a_lambda_policy_is_attacked_under_its_name(checkpoints, tmp_path):
    from robust_csc.tuning.policy import CellPolicy

    sha = checkpoint_hash(checkpoints["sdnet"])
    from policy_support import policy_meta

    meta = policy_meta(n=32, checkpoint_sha256=sha, grid=[0.1, 0.4])
    policy = CellPolicy({("none", 0): 0.4}, meta)
    policy.save(tmp_path / "policy.json")
    store = tmp_path / "r.sqlite"
    proc = cli("attack", "--checkpoint", checkpoints["sdnet"], "--attack", "fgsm", "--eps", "4/255", "--n-examples", "8",
               "--lambda-policy", tmp_path / "policy.json", "--store", store, "--no-checks")
    assert proc.returncode == 0, proc.stderr
    assert f"lambda {policy.name}" in proc.stdout
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert set(frame["lambda_setting"]) == {policy.name}
    assert set(frame["split"]) == {"test[:32]:report:s0[:8]"}  # the policy's reporting split, never its tuning images
    # A policy tuned for another checkpoint is refused in one line.
    other = CellPolicy({("none", 0): 0.4}, {**meta, "checkpoint_sha256": "0" * 64})
    other.save(tmp_path / "other.json")
    bad = cli("attack", "--checkpoint", checkpoints["sdnet"], "--attack", "fgsm", "--eps", "4/255",
              "--lambda-policy", tmp_path / "other.json", "--store", store)
    assert_proc_error(bad, "was tuned for checkpoint")
