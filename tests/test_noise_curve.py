"""noise_curve (accuracy against a continuous noise level per lambda setting) and `robust-csc noise-curve`."""

import csv

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from cli_support import assert_user_error, run_main
from robust_csc.corruptions import add_noise
from robust_csc.csc import CSCConv2d
from robust_csc.data.generated import generated_clean
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.noise_curve import best_per_level, curve_table, noise_curve
from robust_csc.models import create_model
from robust_csc.models.checkpoints import load_checkpoint, save_checkpoint
from robust_csc.reports.plots import accuracy_vs_noise_level
from robust_csc.tuning import CellPolicy

pytestmark = pytest.mark.usefixtures("one_thread")
N = 48


class Probe(nn.Module):
    """One CSC layer and a linear head fitted to digits by least squares: its answers move with noise and lambda."""

    def __init__(self):
        super().__init__()
        self.csc = CSCConv2d(3, 8, 3, stride=2, padding=1, lam=0.1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(8 * 16, 10)

    def features(self, x):
        return self.pool(self.csc(x)).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def clean():
    return generated_clean("digits", "test", None, N)


@pytest.fixture(scope="module")
def probe(clean):
    torch.manual_seed(0)
    model = Probe().eval()
    images = torch.stack([clean[i][0] for i in range(N)])
    labels = torch.tensor([clean[i][1] for i in range(N)])
    with torch.no_grad():
        feats = torch.cat([model.features(images), torch.ones(N, 1)], dim=1).double()
        fit = torch.linalg.lstsq(feats, nn.functional.one_hot(labels, 10).double()).solution.float()
        model.head.weight.copy_(fit[:-1].T)
        model.head.bias.copy_(fit[-1])
    return model


def hand_curve(model, clean, kind, levels, lambdas, seed, flags=None):
    """The reference: one image at a time, eager noise, lambda set by hand on the layer.

    flags, when a dict: filled with {(level, setting): {test-set index: right}}.
    """
    counts = {}
    trained = model.csc.lam
    for level in levels:
        for setting in lambdas:
            correct = 0
            name = "trained" if setting is None else f"{setting:g}"
            for i in range(len(clean)):
                image, label, index = clean[i]
                noisy = add_noise(image[None], kind, level, seed, [index])
                model.csc.lam = trained if setting is None else setting
                with torch.no_grad():
                    right = int(model(noisy).argmax(dim=1).item() == label)
                correct += right
                if flags is not None:
                    flags.setdefault((level, name), {})[int(index)] = bool(right)
                model.csc.lam = trained
            counts[(level, name)] = correct
    return counts


def as_counts(frame):
    return {(row.level, row.lambda_setting): row.correct for row in frame.itertuples()}


@pytest.mark.parametrize("kind, levels", [("gaussian", [0.0, 0.15, 0.4]), ("impulse", [0.05, 0.3])])
def test_curve_equals_a_hand_loop_over_single_images(probe, clean, kind, levels):
    lambdas = [None, 0.5, 2.0]
    frame = noise_curve(probe, clean, kind, levels, lambdas, seed=3, batch_size=10, compiled=False)
    flags = {}
    expected = hand_curve(probe, clean, kind, levels, lambdas, seed=3, flags=flags)
    assert as_counts(frame) == expected
    assert list(frame.columns) == ["kind", "level", "lambda_setting", "n", "correct", "accuracy", "low", "high", "outcomes"]
    for row in frame.itertuples():  # the per-example outcomes are the hand loop's, image by image
        assert dict(zip(row.outcomes.index.tolist(), row.outcomes.correct.tolist())) == flags[(row.level, row.lambda_setting)]
    assert all((frame["low"] <= frame["accuracy"]) & (frame["accuracy"] <= frame["high"]))
    assert (frame["n"] == N).all() and (frame["accuracy"] == frame["correct"] / N).all()
    assert probe.csc.lam == 0.1 and not probe.training  # lambdas restored, mode kept
    # The curve is not flat: noise and lambda both change the answers.
    assert len(set(expected.values())) > 2


def test_curve_does_not_depend_on_batching_indexing_or_compiling(probe, clean):
    levels = [0.1, 0.3]
    frame = noise_curve(probe, clean, "gaussian", levels, [None, "stem=0.4"], batch_size=N, compiled=False)
    for batch_size in (1, 7):
        again = noise_curve(probe, clean, "gaussian", levels, [None, "stem=0.4"], batch_size=batch_size, compiled=False)
        assert as_counts(again) == as_counts(frame)
    # Items without an index are seeded by their position, which is the index here.
    images = torch.stack([clean[i][0] for i in range(N)])
    labels = torch.tensor([clean[i][1] for i in range(N)])
    unindexed = noise_curve(probe, TensorDataset(images, labels), "gaussian", levels, [None, "stem=0.4"], batch_size=5,
                            compiled=False)
    assert as_counts(unindexed) == as_counts(frame)
    compiled = noise_curve(probe, clean, "gaussian", levels, [None, "stem=0.4"], batch_size=16, compiled=True)
    assert as_counts(compiled) == as_counts(frame)


def test_accuracy_falls_with_the_gaussian_level(probe, clean):
    frame = noise_curve(probe, clean, "gaussian_noise", [0.0, 0.3, 1.0], [None], compiled=False)
    accuracy = frame["accuracy"].tolist()
    images = torch.stack([clean[i][0] for i in range(N)])
    labels = torch.tensor([clean[i][1] for i in range(N)])
    with torch.no_grad():
        clean_accuracy = (probe(images).argmax(dim=1) == labels).float().mean().item()
    assert accuracy[0] == pytest.approx(clean_accuracy)  # sigma 0 is the clean image
    assert accuracy[0] > accuracy[2] and accuracy[2] < 0.5


def test_a_stored_curve_reads_back_level_by_level_with_its_outcomes(probe, clean, tmp_path):
    from robust_csc.evaluation.noise_curve import curve_dataset, curve_level, store_curve
    from robust_csc.evaluation.store import ResultsStore

    levels = [0.0, 0.1, 1 / 3]  # 1/3 has no short decimal: the key must still give back the exact float
    frame = noise_curve(probe, clean, "gaussian", levels, [None, "stem=0.4"], seed=1, batch_size=16, compiled=False)
    store = tmp_path / "r.sqlite"
    written, kept = store_curve(frame, store, model_name="probe", checkpoint_sha256="ab" * 32,
                                dataset=curve_dataset("digits", 1), split=f"test[:{N}]", seed=1, batch_size=16)
    assert (written, kept) == (6, 0)
    with ResultsStore(store) as results:
        stored = results.to_frame()
    assert set(stored["dataset"]) == {"digits-noise[seed=1]"} and set(stored["severity"]) == {0}
    read = {(curve_level(c)[1], s): (k, o) for c, s, k, o in
            zip(stored["corruption"], stored["lambda_setting"], stored["correct"], stored["outcomes"])}
    assert sorted({level for level, _ in read}) == sorted(levels)  # exactly the floats given
    from robust_csc.evaluation.outcomes import Outcomes

    for row in frame.itertuples():
        correct, outcomes = read[(row.level, row.lambda_setting)]
        assert correct == row.correct
        back = Outcomes.from_json(outcomes)
        assert back.index.tolist() == row.outcomes.index.tolist() and back.correct.tolist() == row.outcomes.correct.tolist()
    # a rerun keeps the stored cells; recompute replaces them
    assert store_curve(frame, store, model_name="probe", checkpoint_sha256="ab" * 32, dataset=curve_dataset("digits", 1),
                       split=f"test[:{N}]", seed=1) == (0, 6)
    assert store_curve(frame, store, model_name="probe", checkpoint_sha256="ab" * 32, dataset=curve_dataset("digits", 1),
                       split=f"test[:{N}]", seed=1, recompute=True) == (6, 0)
    assert curve_level("gaussian_noise") is None and curve_level("none") is None


def test_tables_and_plot_from_a_small_fixed_frame():
    import pandas as pd

    frame = pd.DataFrame(
        [("gaussian", level, setting, 10, correct, correct / 10)
         for level, row in ((0.2, (7, 8)), (0.0, (9, 9)), (0.5, (2, 6))) for setting, correct in zip(("trained", "0.5"), row)],
        columns=["kind", "level", "lambda_setting", "n", "correct", "accuracy"],
    )
    table = curve_table(frame)
    assert list(table.index) == [0.2, 0.0, 0.5] and list(table.columns) == ["trained", "0.5"]
    assert table.loc[0.5, "0.5"] == 0.6
    best = best_per_level(frame)
    assert best["best_lambda_setting"].tolist() == ["0.5", "trained", "0.5"]  # a tie goes to the first listed
    assert best["accuracy"].tolist() == [0.8, 0.9, 0.6]
    figure = accuracy_vs_noise_level(frame, "t")
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["trained λ", "λ = 0.50"]  # the report's readable setting names
    # in percent, each line shifted sideways by one small constant so that equal points stay visible
    xs, ys = np.asarray(lines[1].get_xdata()), np.asarray(lines[1].get_ydata())
    shift = xs - np.array([0.0, 0.2, 0.5])
    assert np.allclose(shift, shift[0]) and 0 < abs(shift[0]) < 0.1 and np.allclose(ys, [90.0, 80.0, 60.0])
    with pytest.raises(RobustCSCError, match="lacks column 'accuracy'"):
        curve_table(frame.drop(columns="accuracy"))


class Empty(Dataset):
    def __len__(self):
        return 0


@pytest.mark.parametrize("kind, levels, lambdas, match", [
    ("blur", [0.1], [None], "unknown noise kind 'blur'"),
    ("gaussian", [-0.1], [None], "negative"),
    ("gaussian", [], [None], "no noise levels"),
    ("gaussian", [0.1, 0.1], [None], "listed twice"),
    ("gaussian", "0.1", [None], "list of numbers"),
    ("shot", [0.0], [None], "outside"),
    ("impulse", [1.5], [None], "outside"),
    ("gaussian", [0.1], [], "no lambda settings"),
    ("gaussian", [0.1], [0.5, "0.5"], "listed twice"),
    ("gaussian", [0.1], ["stem=x"], "not understood|no number"),
])
def test_bad_input_is_refused(probe, clean, kind, levels, lambdas, match):
    with pytest.raises(RobustCSCError, match=match):
        noise_curve(probe, clean, kind, levels, lambdas, compiled=False)


def test_models_and_policies_that_cannot_take_the_setting_are_refused(probe, clean):
    torch.manual_seed(0)
    resnet = create_model("resnet18", num_classes=10, width=4)
    with pytest.raises(RobustCSCError, match="no CSC layers"):
        noise_curve(resnet, clean, "gaussian", [0.1], [0.5], model_name="resnet18")
    from policy_support import policy_meta

    policy = CellPolicy({("gaussian_noise", 1): 0.5}, policy_meta(arch="probe"), [])
    with pytest.raises(RobustCSCError, match="per .corruption, severity. cell, not per noise level"):
        noise_curve(probe, clean, "gaussian", [0.1], [policy])
    with pytest.raises(RobustCSCError, match="empty"):
        noise_curve(probe, Empty(), "gaussian", [0.1])
    with pytest.raises(RobustCSCError, match="batch_size"):
        noise_curve(probe, clean, "gaussian", [0.1], batch_size=0)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    sdnet = save_checkpoint(folder / "sdnet.safetensors", create_model("sdnet18", width=4, num_classes=10), dataset="digits")
    resnet = save_checkpoint(folder / "resnet.safetensors", create_model("resnet18", width=4, num_classes=10), dataset="digits")
    return {"sdnet": sdnet, "resnet": resnet}


def test_command_prints_and_writes_the_curve_of_the_api(capsys, checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --store, results.sqlite, goes here
    out = tmp_path / "curve.csv"
    code, stdout, err = run_main(capsys, "noise-curve", "--checkpoint", checkpoints["sdnet"], "--kind", "speckle",
                                 "--levels", "0:0.4:3", "--lambda", "trained,stem=0.5", "--n-examples", "20",
                                 "--seed", "2", "--out", out)
    assert code == 0, err
    assert "store: results.sqlite, cells written 6, kept 0" in stdout
    assert "speckle noise, seed 2" in stdout and "best lambda setting per level: 0 " in stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    model, _ = load_checkpoint(checkpoints["sdnet"])
    api = noise_curve(model, generated_clean("digits", "test", None, 20), "speckle", [0.0, 0.2, 0.4],
                      [None, "stem=0.5"], seed=2)
    assert [(float(r["level"]), r["lambda_setting"], int(r["correct"])) for r in rows] == [
        (r.level, r.lambda_setting, r.correct) for r in api.itertuples()]
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".pdf").stat().st_size > 0

    # An existing --out is refused without --force, and every file is kept.
    before = {p: p.read_bytes() for p in (out, out.with_suffix(".png"))}
    code, stdout, err = run_main(capsys, "noise-curve", "--checkpoint", checkpoints["sdnet"], "--kind", "speckle",
                                 "--levels", "0.1", "--out", out)
    assert_user_error(code, stdout, err, "already exists", "--force")
    assert {p: p.read_bytes() for p in before} == before
    code, stdout, err = run_main(capsys, "noise-curve", "--checkpoint", checkpoints["sdnet"], "--kind", "speckle",
                                 "--levels", "0.1", "--n-examples", "4", "--out", out, "--force", "--eager")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 2  # the header and one level


@pytest.mark.parametrize("args, fragments", [
    (["--kind", "fog", "--levels", "0.1"], ["unknown noise kind 'fog'"]),
    (["--kind", "gaussian", "--levels", "a,b"], ["noise levels value 'a' is not a number"]),
    (["--kind", "gaussian", "--levels", "0.3:0.1:3"], ["runs backwards"]),
    (["--kind", "gaussian", "--levels", "-0.1"], ["negative"]),
    (["--kind", "gaussian", "--levels", "0.1", "--out", "curve.txt"], ["not a .csv file"]),
    (["--kind", "gaussian", "--levels", "0.1", "--n-examples", "0"], ["--n-examples 0 is not positive"]),
    (["--kind", "gaussian", "--levels", "0.1", "--lambda", "stem=0.5", "--resnet"], ["without CSC layers"]),
])
def test_command_refuses_bad_input_in_one_line(capsys, checkpoints, tmp_path, args, fragments):
    args = list(args)
    checkpoint = checkpoints["resnet"] if "--resnet" in args else checkpoints["sdnet"]
    args = [a for a in args if a != "--resnet"]
    args = [str(tmp_path / a) if a.endswith((".txt", ".csv")) else a for a in args]
    code, stdout, err = run_main(capsys, "noise-curve", "--checkpoint", checkpoint, *args, "--store",
                                 tmp_path / "results.sqlite")
    assert_user_error(code, stdout, err, *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written
