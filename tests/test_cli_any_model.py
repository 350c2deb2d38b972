"""Any classifier through the verbs: a torchvision resnet18 and a user-file builder through evaluate, attack,
noise-curve and report from the command line, resumed by their weights hash; bad models refused in one line."""

import importlib.util

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from cli_support import assert_user_error, run_main
from robust_csc.data.generated import generated_suite
from robust_csc.evaluation.harness import evaluate
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models.sources import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = ["--suite", "generated", "--dataset", "digits", "--corruptions", "gaussian_noise,contrast",
         "--severities", "1,5", "--n-examples", "16", "--batch-size", "16"]
ATTACK = ["--dataset", "digits", "--attack", "pgd", "--steps", "2", "--eps", "2/255,8/255", "--n-examples", "16",
          "--no-checks"]

BUILDER = '''
import torch
from torch import nn

def build(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, num_classes))

def sdnet():
    from robust_csc.models import create_model
    torch.manual_seed(0)
    return create_model("sdnet18", width=4, num_classes=10)

def not_a_model(num_classes=10):
    return {"model": None}
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """resnet18 weights (.pt) and a builder file with its weights (.safetensors), trained a little on digits."""
    import torchvision

    root = tmp_path_factory.mktemp("models")
    (root / "tiny_net.py").write_text(BUILDER)
    spec = importlib.util.spec_from_file_location("tiny_net_reference", root / "tiny_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from robust_csc.data import load_dataset

    train = load_dataset("digits", "train")
    x = torch.stack([train[i][0] for i in range(256)])
    y = torch.tensor([int(train[i][1]) for i in range(256)])
    torch.manual_seed(0)
    tiny = module.build(10)
    optimizer = torch.optim.Adam(tiny.parameters(), lr=0.01)
    for _ in range(30):  # a few steps: accuracy well above chance, so attacks have something to break
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(tiny(x), y).backward()
        optimizer.step()
    save_file(tiny.state_dict(), str(root / "tiny.safetensors"))
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "r18.pt")
    return root


def cells(store):
    with ResultsStore(store) as results:
        return results.to_frame()


def through_every_verb(capsys, tmp_path, model_args, name):
    """evaluate, rerun, attack, rerun, report: the store, the printed lines and the report's files."""
    store = tmp_path / "results.sqlite"
    code, out, err = run_main(capsys, "evaluate", *model_args, *SUITE, "--store", store)
    assert code == 0, err
    assert out.splitlines()[-1] == f"store: {store}, cells run 5, skipped 0"
    assert "lambda trained: accuracy in % by corruption and severity; n = 16 images per cell" in out
    code, out, err = run_main(capsys, "evaluate", *model_args, *SUITE, "--store", store)
    assert code == 0 and out.splitlines()[-1] == f"store: {store}, cells run 0, skipped 5"  # resumed by its hash

    code, out, err = run_main(capsys, "attack", *model_args, *ATTACK, "--store", store)
    assert code == 0, err
    assert "cells run 2, skipped 0" in out  # pgd at 2 epsilons (and the worst case at each)
    code, out, err = run_main(capsys, "attack", *model_args, *ATTACK, "--store", store)
    assert code == 0 and "cells run 0, skipped 2" in out

    frame = cells(store)
    assert set(frame["model"]) == {name} and frame["checkpoint_sha256"].nunique() == 1
    report = tmp_path / "report"
    code, out, err = run_main(capsys, "report", "--store", store, "--out", report)
    assert code == 0, err
    summary = pd.read_csv(report / "tables" / "summary.csv")
    assert list(summary["model"]) == [name]
    clean = frame[(frame["corruption"] == "none") & (frame["attack"] == "none")].iloc[0]
    assert summary["clean"].iloc[0] == clean["correct"] / clean["n"]
    worst = frame[(frame["attack"] == "worst-case:Linf") & (frame["epsilon"] == 8 / 255)].iloc[0]
    robustness = pd.read_csv(report / "tables" / "robustness.csv")  # attack columns live there, not in the summary
    assert list(robustness["model"]) == [name]
    assert robustness["worst-case Linf 8/255"].iloc[0] == worst["correct"] / worst["n"]
    return store, frame, report


def test_torchvision_resnet18_through_every_verb(capsys, tmp_path, files):
    args = ["--model", "torchvision:resnet18", "--num-classes", "10", "--weights", files / "r18.pt"]
    store, frame, report = through_every_verb(capsys, tmp_path, args, "torchvision:resnet18")
    # From Python the same model lands on the same store keys: every cell is found.
    loaded = load_model("torchvision:resnet18", num_classes=10, weights=files / "r18.pt")
    assert set(frame["checkpoint_sha256"]) == {loaded.sha256}
    suite = generated_suite("digits", corruptions=["gaussian_noise", "contrast"], severities=[1, 5], n_examples=16)
    again = evaluate(loaded, suite, store=store, dataset=suite.name, split="test[:16]")
    assert (again.cells_run, again.cells_skipped) == (0, 4)
    # RobustBench's files, one entry per series and epsilon
    entries = sorted(p.name for p in (report / "robustbench" / "model_info" / "digits" / "Linf").glob("*.json"))
    assert entries == [f"torchvision-resnet18_{loaded.sha256[:8]}_test-16_eps{e}-255.json" for e in (2, 8)]
    # the report can show the model itself: matched to its cells by the weights hash
    code, out, err = run_main(capsys, "report", "--store", store, "--out", tmp_path / "r2", *(
        "--model", "torchvision:resnet18", "--num-classes", "10", "--weights", files / "r18.pt"))
    assert code == 0, err
    assert f"torchvision:resnet18 (checkpoint {loaded.sha256[:8]}) has no CSC layer" in (tmp_path / "r2" / "report.md").read_text()


def test_user_builder_through_every_verb(capsys, tmp_path, files, monkeypatch):
    monkeypatch.chdir(files)  # the builder file named relative to the working folder, as a user types it
    args = ["--model", "tiny_net.py:build", "--num-classes", "10", "--weights", "tiny.safetensors"]
    store, frame, _ = through_every_verb(capsys, tmp_path, args, "tiny_net.py:build")
    clean = frame[(frame["corruption"] == "none") & (frame["attack"] == "none")].iloc[0]
    assert clean["correct"] / clean["n"] > 0.5  # the trained weights were loaded, not a random init
    code, out, err = run_main(capsys, "noise-curve", *args, "--dataset", "digits", "--kind", "gaussian",
                              "--levels", "0,0.2", "--n-examples", "16", "--eager", "--out", tmp_path / "curve.csv")
    assert code == 0, err
    curve = pd.read_csv(tmp_path / "curve.csv")
    at_zero = curve[curve["level"] == 0]["accuracy"].iloc[0]
    assert at_zero == clean["correct"] / clean["n"]  # level 0 is the clean cell of the same 16 images


def test_tune_lambda_takes_a_builder_with_csc_layers_and_refuses_one_without(capsys, tmp_path, files, monkeypatch):
    monkeypatch.chdir(files)
    store = tmp_path / "t.sqlite"
    tune = ["tune-lambda", "--suite", "generated", "--dataset", "digits", "--corruptions", "gaussian_noise",
            "--severities", "5", "--n-examples", "16", "--grid", "0.1,0.5", "--store", store]
    code, out, err = run_main(capsys, *tune, "--model", "tiny_net.py:sdnet", "--out", tmp_path / "p.json")
    assert code == 0, err
    from robust_csc.tuning import load_policy

    frame = cells(store)
    assert set(frame["model"]) == {"tiny_net.py:sdnet"} and frame["checkpoint_sha256"].nunique() == 1
    assert load_policy(tmp_path / "p.json").checkpoint_sha256 == frame["checkpoint_sha256"].iloc[0]
    code, out, err = run_main(capsys, *tune, "--model", "tiny_net.py:build", "--num-classes", "10", "--out", tmp_path / "q.json")
    assert_user_error(code, out, err, "without CSC layers, so lambda cannot be tuned")
    assert not (tmp_path / "q.json").exists()


def evil_pt(path, marker):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"0.weight": torch.zeros(16, 3, 3, 3), "payload": Payload()}, path)
    return path


@pytest.mark.parametrize(
    "model_args, fragments",
    [
        (["--model", "torchvision:resnet5"], ["torchvision has no classification model 'resnet5'", "did you mean"]),
        (["--model", "tiny_net.py:nothing", "--num-classes", "10"], ["has no function 'nothing'"]),
        (["--model", "missing_net.py:build"], ["builder file missing_net.py does not exist"]),
        (["--model", "no_such_module:build"], ["builder module no_such_module does not import"]),
        (["--model", "tiny_net.py:not_a_model"], ["returned a value of type dict, not a torch nn.Module"]),
        (["--model", "torchvision:resnet18", "--weights", "r18.pt"],
         ["fc.weight has shape (10, 512) in the file but (1000, 512) in the model", "--num-classes"]),
        (["--model", "tiny_net.py:build", "--num-classes", "10", "--weights", "r18.pt"],
         ["r18.pt does not fit the model", "missing from the file (0.weight", "unexpected key(s) in the file (conv1.weight"]),
        (["--model", "tiny_net.py:build", "--num-classes", "10", "--weights", "EVIL"],
         ["evil.pt contains code that would run on load (io.open)"]),
        (["--model", "torchvision:resnet18", "--num-classes", "10", "--lambda", "0.5"], ["without CSC layers"]),
        (["--checkpoint", "torchvision:resnet18"], ["--checkpoint takes a file", "--model"]),
        (["--model", "tiny_net.py:build", "--checkpoint", "x.safetensors"], ["one of them"]),
        ([], ["pass the model as --checkpoint FILE"]),
        (["--model", "torchvision:resnet18", "--num-classes", "100"], ["has 100 classes but the digits-c[cifar] suite has 10"]),
    ],
)
def test_bad_models_exit_2_and_write_nothing(capsys, tmp_path, files, monkeypatch, model_args, fragments):
    monkeypatch.chdir(files)
    marker = tmp_path / "MARKER"
    model_args = [str(evil_pt(tmp_path / "evil.pt", marker)) if a == "EVIL" else a for a in model_args]
    store = tmp_path / "never.sqlite"
    for verb, rest in (("evaluate", SUITE), ("attack", ATTACK)):
        if verb == "attack" and "suite has" in fragments[0]:
            continue  # the suite's message; attack checks the test set instead
        code, out, err = run_main(capsys, verb, *model_args, *rest, "--store", store)
        assert_user_error(code, out, err, *fragments)
        assert not store.exists() and not marker.exists()


def test_robustbench_model_evaluates_from_a_laid_checkpoint(capsys, tmp_path):
    if importlib.util.find_spec("robustbench") is None:
        pytest.skip("robustbench is not installed")
    from robust_csc.errors import RobustCSCError
    from robust_csc.models.robustbench_zoo import import_robustbench

    try:
        zoo = import_robustbench("model_zoo").model_dicts
        enums = import_robustbench("model_zoo.enums")
    except RobustCSCError as err:
        pytest.skip(f"robustbench is not usable here: {err}")
    torch.manual_seed(3)
    net = zoo[enums.BenchmarkDataset("cifar10")][enums.ThreatModel("corruptions")]["Modas2021PRIMEResNet18"]["model"]()
    folder = tmp_path / "models" / "cifar10" / "corruptions"
    folder.mkdir(parents=True)
    torch.save(net.state_dict(), folder / "Modas2021PRIMEResNet18.pt")
    store = tmp_path / "rb.sqlite"
    reference = ["--model", "robustbench:cifar10:corruptions:Modas2021PRIMEResNet18", "--model-dir", tmp_path / "models"]
    code, out, err = run_main(capsys, "evaluate", *reference, *SUITE, "--store", store)
    assert code == 0, err
    assert set(cells(store)["model"]) == {"robustbench:cifar10:corruptions:Modas2021PRIMEResNet18"}
    code, out, err = run_main(capsys, "evaluate", *reference[:2], "--model-dir", tmp_path / "none", *SUITE,
                              "--store", tmp_path / "never.sqlite")
    assert_user_error(code, out, err, "has no checkpoint at", "--allow-download")
    assert not (tmp_path / "never.sqlite").exists()
