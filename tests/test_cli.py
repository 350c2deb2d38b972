"""The robust-csc command line: verbs, and one-line errors with exit code 2 for user mistakes."""

import json
import shutil

import pytest
import torch

from cli_support import assert_proc_error, assert_user_error, cli, run_main
from robust_csc.models import create_model
from robust_csc.models.checkpoints import read_metadata, save_checkpoint

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, create_model("sdnet18", width=4), dataset="digits", training={"epochs_done": 1})
    return path


# ---------------------------------------------------------------- working verbs


def test_models_lists_the_zoo(capsys):
    code, out, _ = run_main(capsys, "models")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and "sdnet18" in names and "resnet18" in names and "sdnet34_all" in names


def test_info_prints_metadata_as_json(capsys, checkpoint):
    code, out, _ = run_main(capsys, "info", checkpoint)
    meta = json.loads(out)
    assert code == 0 and meta["arch"] == "sdnet18" and meta["dataset"] == "digits"
    assert meta["arguments"]["width"] == 4 and len(meta["sha256"]) == 64 and meta["parameters"] > 0


def test_train_writes_a_checkpoint_and_resumes(capsys, tmp_path):
    out_dir = tmp_path / "run"
    args = ["train", "--arch", "resnet18", "--dataset", "digits", "--out", out_dir, "--epochs", "1",
            "--width", "4", "--batch-size", "256", "--lr", "0.05", "--no-progress"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert out.splitlines()[0].startswith("epoch 1/1 train_loss ")
    assert out.splitlines()[-1].startswith(f"done {out_dir / 'model.safetensors'} test_acc ")
    meta = read_metadata(out_dir / "model.safetensors")
    assert meta["arch"] == "resnet18" and meta["training"]["recipe"]["batch_size"] == 256
    # the same command again finds the finished run and trains nothing
    code, out, _ = run_main(capsys, *args)
    assert code == 0 and out.splitlines()[0].startswith(f"resuming {out_dir} after epoch 1/1")
    assert not any(line.startswith("epoch ") for line in out.splitlines())


def _official_like(path):
    """An SDNet state_dict under the official code's names (layer0.0.dn.weight for the stem)."""
    state = create_model("sdnet18", width=4).state_dict()
    renamed = {}
    for key, value in state.items():
        if key == "stem.0.weight":
            key = "layer0.0.dn.weight"
        elif key.startswith("stem."):
            key = "layer0." + key[len("stem."):]
        renamed[key] = value
    torch.save({"state_dict": renamed}, path)


def test_convert_official_then_force(capsys, tmp_path):
    src, dst = tmp_path / "official.pt", tmp_path / "converted.safetensors"
    _official_like(src)
    code, out, err = run_main(capsys, "convert-official", src, dst, "--arch", "sdnet18", "--dataset", "cifar10")
    assert code == 0, err
    assert out.startswith(f"wrote {dst} arch sdnet18 num_classes 10")
    assert read_metadata(dst)["dataset"] == "cifar10"
    code, _, err = run_main(capsys, "convert-official", src, dst, "--arch", "sdnet18", "--force")
    assert code == 0, err
    assert read_metadata(dst)["dataset"] is None


# ---------------------------------------------------------------- user errors: one line, exit code 2


def test_unknown_model(capsys, tmp_path):
    code, out, err = run_main(capsys, "train", "--arch", "sdnet99", "--dataset", "digits", "--out", tmp_path / "x")
    assert_user_error(code, out, err, "unknown model", "sdnet18")
    assert not (tmp_path / "x").exists()


def test_negative_lambda(capsys, tmp_path):
    code, out, err = run_main(capsys, "train", "--arch", "sdnet18", "--dataset", "digits", "--lambda", "-1",
                              "--out", tmp_path / "x")
    assert_user_error(code, out, err, "lambda")
    assert not (tmp_path / "x").exists()


def test_train_keeps_its_old_option_names_as_deprecated_aliases(capsys, tmp_path):
    """--model and --lam were train's names before every verb shared --model REF and --lambda LIST."""
    code, out, err = run_main(capsys, "train", "--model", "sdnet18", "--dataset", "digits", "--lam", "-1",
                              "--out", tmp_path / "x")
    assert code == 2 and "train --model is deprecated; use --arch" in err and "train --lam is deprecated; use --lambda" in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "lambda" in err.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()


def test_missing_cifar_folder(tmp_path):
    proc = cli("train", "--arch", "resnet18", "--dataset", "cifar10", "--width", "4",
               "--data-root", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert_proc_error(proc, "CIFAR-10", "--download")


def test_info_on_truncated_checkpoint(tmp_path, checkpoint):
    cut = tmp_path / "cut.safetensors"
    shutil.copy(checkpoint, cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    before = cut.read_bytes()
    proc = cli("info", cut)
    assert_proc_error(proc, "truncated")
    assert cut.read_bytes() == before


def test_convert_official_refuses_to_overwrite(tmp_path):
    src, dst = tmp_path / "official.pt", tmp_path / "keep.safetensors"
    _official_like(src)
    dst.write_bytes(b"precious")
    proc = cli("convert-official", src, dst, "--arch", "sdnet18")
    assert_proc_error(proc, "already exists", "--force")
    assert dst.read_bytes() == b"precious"


def test_errors_in_process_are_one_line_too(capsys, tmp_path):
    code, out, err = run_main(capsys, "info", tmp_path / "absent.safetensors")
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1


def test_usage_errors_exit_2_without_traceback(capsys):
    code, _, err = run_main(capsys, "train", "--arch")
    assert code == 2 and "Traceback" not in err


def test_demo_quick(capsys, tmp_path):
    """The whole main job, small: train, evaluate, attack, tune, report; the last line is the report."""
    out_dir = tmp_path / "demo"
    code, out, err = run_main(capsys, "demo", "--quick", "--out", out_dir)
    assert code == 0, err
    # accuracy rows: "<model> <accuracy>"
    rows = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] in ("sdnet18", "resnet18"):
            rows[fields[0]] = float(fields[1])
    # both models learn even in 4 epochs (chance is 0.1); the full demo reaches > 0.98
    assert rows["sdnet18"] > 0.8 and rows["resnet18"] > 0.8
    for arch in ("sdnet18", "resnet18"):
        assert (out_dir / arch / "model.safetensors").is_file()
    assert (out_dir / "lambda_policy.json").is_file()
    import pandas as pd

    curve = pd.read_csv(out_dir / "noise_curve.csv")
    from robust_csc.tuning import load_policy

    rule = load_policy(out_dir / "lambda_policy.json").name  # stored under its name; the report calls it "recon rule"
    assert set(curve["lambda_setting"]) == {"trained", "stem=1", rule}
    trained = curve[curve["lambda_setting"] == "trained"].set_index("level")["accuracy"]
    assert trained[0.0] > 0.8 and trained.min() < trained[0.0] - 0.3  # gaussian noise costs the SDNet accuracy
    assert (out_dir / "noise_curve.png").is_file()
    last = out.strip().splitlines()[-1]
    assert last == f"report: {out_dir / 'report' / 'index.html'}"
    # the console ends with the key results, and no library warning leaks through (torch's CUDA one did)
    assert "key results (the report's first table)" in out and "mean corruption accuracy" in out
    assert "Warning" not in err and "No CUDA runtime" not in err, err
    assert (out_dir / "report" / "index.html").stat().st_size > 10_000

    from robust_csc.evaluation.store import ResultsStore

    with ResultsStore(out_dir / "results.sqlite") as store:
        frame = store.to_frame()
    assert {"sdnet18", "resnet18"} <= set(frame["model"])
    assert {"pgd:Linf", "worst-case:Linf", "none"} <= set(frame["attack"])
    assert frame["split"].str.contains(":tune:s0").any() and frame["split"].str.contains(":report:s0").any()
