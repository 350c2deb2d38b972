"""Training: recipes, learning, per-epoch checkpoints, bitwise resume, DDP on the CPU (gloo)."""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from robust_csc.errors import RobustCSCError
from robust_csc.models import create_model
from robust_csc.models.checkpoints import load_checkpoint, read_metadata
from robust_csc.training import (
    CIFAR_RECIPE,
    DIGITS_RECIPE,
    IMAGENET_RECIPE,
    TrainConfig,
    evaluate_accuracy,
    lr_factor,
    recipe_for,
    state_hash,
    train,
)

# Tiny runs: width-4 SDNet (the CSC warm start is what makes resume hard), few images.
TINY = dict(model="sdnet18", dataset="digits", width=4, batch_size=32, train_subset=256, test_subset=96)


def tiny(tmp_path, name, **overrides):
    return TrainConfig(**{**TINY, "out_dir": tmp_path / name, **overrides})


# ---------------------------------------------------------------- recipes


def test_cifar_recipes_are_the_papers():
    for name in ("cifar10", "cifar100", "CIFAR10"):
        r = recipe_for(name)
        assert r == CIFAR_RECIPE
    r = CIFAR_RECIPE
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.nesterov) == (220, 128, 0.1, 0.9, True)
    assert (r.weight_decay, r.schedule, r.min_lr, r.augment) == (5e-4, "cosine", 1e-6, True)


def test_imagenet_recipe_is_the_papers():
    r = recipe_for("imagenet")
    assert r == IMAGENET_RECIPE
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.nesterov, r.weight_decay) == (100, 512, 0.1, 0.9, False, 1e-4)
    assert (r.schedule, r.milestones, r.gamma) == ("step", (30, 60, 90), 0.1)


def test_digits_recipe_and_unknown_dataset():
    assert recipe_for("digits") == DIGITS_RECIPE and DIGITS_RECIPE.epochs <= 20
    with pytest.raises(RobustCSCError, match="no training recipe"):
        recipe_for("svhn")


def test_cosine_schedule_is_per_iteration_down_to_min_lr():
    r = CIFAR_RECIPE
    ipe = 391  # CIFAR-10 at batch 128
    assert lr_factor(r, 0, ipe, r.epochs) == 1.0
    assert math.isclose(lr_factor(r, r.epochs * ipe, ipe, r.epochs) * r.lr, 1e-6)
    # per iteration: two steps inside one epoch already differ
    assert lr_factor(r, 1, ipe, r.epochs) < lr_factor(r, 0, ipe, r.epochs)
    assert math.isclose(lr_factor(r, r.epochs * ipe // 2, ipe, r.epochs) * r.lr, (0.1 + 1e-6) / 2, rel_tol=1e-4)


def test_step_schedule_drops_tenfold_at_30_60_90():
    r, ipe = IMAGENET_RECIPE, 10
    factors = [lr_factor(r, e * ipe, ipe, r.epochs) for e in (0, 29, 30, 59, 60, 90, 99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_weight_decay_reaches_the_dictionary(tmp_path, monkeypatch):
    seen = {}
    real_sgd = torch.optim.SGD

    def spy(params, **kw):
        opt = real_sgd(params, **kw)
        seen["opt"] = opt
        return opt

    monkeypatch.setattr(torch.optim, "SGD", spy)
    train(tiny(tmp_path, "wd", epochs=1, train_subset=32, test_subset=8))
    opt = seen["opt"]
    (group,) = opt.param_groups
    assert group["weight_decay"] == DIGITS_RECIPE.weight_decay and group["nesterov"] is True
    shapes = {tuple(p.shape) for p in group["params"]}
    assert (4, 3, 3, 3) in shapes  # the stem's CSC dictionary


# ---------------------------------------------------------------- learning and checkpoints


def test_short_run_learns_and_checkpoints_every_epoch(tmp_path):
    out = tmp_path / "learn"
    seen = []

    def on_line(line):
        if line.startswith("epoch "):
            # the epoch's files are already written when its line arrives
            meta = read_metadata(out / "last.safetensors")
            resume = torch.load(out / "resume.pt", weights_only=True)
            seen.append((meta["training"]["epochs_done"], resume["epoch"]))

    config = TrainConfig(
        model="sdnet18", dataset="digits", out_dir=out, width=8, epochs=3, batch_size=32,
        train_subset=640, test_subset=200, lr=0.05,
    )
    summary = train(config, log=on_line)
    assert seen == [(1, 1), (2, 2), (3, 3)]
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] * 0.7, losses
    assert summary["train_acc"] > 0.5 and summary["test_acc"] > 0.3, summary  # chance is 0.1
    assert summary["complete"] and (out / "model.safetensors").is_file()
    model, meta = load_checkpoint(out / "model.safetensors", expect_arch="sdnet18", expect_num_classes=10)
    assert meta["dataset"] == "digits" and meta["training"]["epochs_done"] == 3
    assert meta["training"]["test_acc"] == pytest.approx(summary["test_acc"])
    assert meta["training"]["recipe"]["lr"] == 0.05
    assert state_hash(model) == summary["weights_sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["last.safetensors", "model.safetensors", "resume.pt"]


def _assert_plain(obj, where="resume.pt"):
    """Only tensors, numbers, strings, None, lists and dicts: nothing that needs a pickle class."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), where
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)), (where, type(obj))


def test_resume_gives_bitwise_identical_weights(tmp_path):
    straight = train(tiny(tmp_path, "straight", epochs=2))
    first = train(tiny(tmp_path, "resumed", epochs=2, stop_after=1))  # "interrupted" after epoch 1
    assert not first["complete"] and first["epochs_done"] == 1
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    state = torch.load(tmp_path / "resumed" / "resume.pt", weights_only=True)
    _assert_plain(state)
    assert state["epoch"] == 1 and state["csc_solver"]["stem.0"]  # the warm start travels along

    second = train(tiny(tmp_path, "resumed", epochs=2))
    assert second["resumed_from"] == 1 and second["complete"]
    assert second["weights_sha256"] == straight["weights_sha256"]
    a, _ = load_checkpoint(tmp_path / "straight" / "model.safetensors")
    b, _ = load_checkpoint(tmp_path / "resumed" / "model.safetensors")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert [h["train_loss"] for h in second["history"]] == [h["train_loss"] for h in straight["history"]]


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    done = train(tiny(tmp_path, "done", epochs=1, train_subset=64, test_subset=16))
    again = train(tiny(tmp_path, "done", epochs=1, train_subset=64, test_subset=16))
    assert again["resumed_from"] == 1 and again["weights_sha256"] == done["weights_sha256"]
    assert again["history"] == done["history"]


def test_resume_refuses_a_different_run(tmp_path):
    train(tiny(tmp_path, "run", epochs=2, stop_after=1, train_subset=64, test_subset=16))
    with pytest.raises(RobustCSCError, match="different recipe.*--no-resume"):
        train(tiny(tmp_path, "run", epochs=2, lr=0.5, train_subset=64, test_subset=16))
    # --no-resume starts over
    fresh = train(tiny(tmp_path, "run", epochs=2, lr=0.5, train_subset=64, test_subset=16, resume=False))
    assert fresh["resumed_from"] == 0 and fresh["complete"]


def test_truncated_resume_file_is_a_clear_error(tmp_path):
    train(tiny(tmp_path, "cut", epochs=2, stop_after=1, train_subset=64, test_subset=16))
    path = tmp_path / "cut" / "resume.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RobustCSCError, match="unreadable.*--no-resume"):
        train(tiny(tmp_path, "cut", epochs=2, train_subset=64, test_subset=16))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=-0.1), "learning rate"),
        (dict(batch_size=1000), "fewer than one batch"),
        (dict(amp=True), "CUDA"),
        (dict(dataset="imagenet"), "not supported"),
        (dict(lam=-1.0), "lambda"),
        (dict(num_workers=-1), "workers"),
    ],
)
def test_bad_configs_fail_with_one_sentence(tmp_path, overrides, match):
    with pytest.raises(RobustCSCError, match=match) as exc:
        train(tiny(tmp_path, "bad", **overrides))
    assert "\n" not in str(exc.value)


def test_evaluate_accuracy_restores_the_mode():
    model = create_model("resnet18", width=4)
    images = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        labels = model(images).argmax(1)
    model.train()
    loader = DataLoader(TensorDataset(images, labels), batch_size=3)
    assert evaluate_accuracy(model, loader) == 1.0
    assert model.training


def test_library_prints_nothing(tmp_path, capfd):
    train(tiny(tmp_path, "quiet", epochs=1, train_subset=32, test_subset=8))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ---------------------------------------------------------------- DDP (gloo on the CPU)

DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from robust_csc.training import TrainConfig, train

    out, report = sys.argv[1], sys.argv[2]
    summary = train(TrainConfig(model="sdnet18", dataset="digits", out_dir=out, width=4, epochs=2,
                                batch_size=32, train_subset=192, test_subset=50, resume=False))
    with open(os.path.join(report, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(summary, f)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_train_one_model(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out, report = tmp_path / "out", tmp_path / "report"
    report.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), str(out), str(report),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world_size"] for s in ranks] == [2, 2] and [s["rank"] for s in ranks] == [0, 1]
    # DDP kept both replicas bitwise identical, and the file holds exactly that model
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    model, meta = load_checkpoint(out / "model.safetensors")
    assert state_hash(model) == ranks[0]["weights_sha256"]
    assert meta["training"]["world_size"] == 2 and meta["training"]["epochs_done"] == 2
    # test accuracy is summed over the ranks' shards, so both report the same number
    assert ranks[0]["test_acc"] == ranks[1]["test_acc"]
    # only rank 0 wrote, and no temporary file was left behind
    assert ranks[1]["files"] == [] and len(ranks[0]["files"]) == 3
    assert sorted(p.name for p in out.iterdir()) == ["last.safetensors", "model.safetensors", "resume.pt"]
