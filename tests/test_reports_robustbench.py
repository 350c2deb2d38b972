"""RobustBench's own result files from a report: the store's cells, cell for cell, read back by robustbench's code."""

import importlib.util
import json
import math
import shutil
import sys
import types

import pandas as pd
import pytest
import torch

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.reports import write_report
from robust_csc.reports.cells import Cells
from robust_csc.reports.robustbench import FIELDS, write_robustbench
from test_reports_store import add_corruption_cells

pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SD, RN = "c3" * 32, "d4" * 32
EPS = 8 / 255


def add_attack(store, model, sha, chain, robust, checks_pass=True):
    """An attack chain at 8/255 on 100 CIFAR-10 test images, cells as the attack runner stores them."""
    n = 100
    for i, attack in enumerate(chain):
        store.add(CellKey(model, sha, "cifar10", "test[:100]", attack=attack, epsilon=EPS),
                  {"n": n, "correct": robust[i], "seconds": 1.0,
                   "extra": {"chain": chain[: i + 1], "clean_correct": 95, "seed": 0}})
    checks = {"gradients": {"passed": checks_pass, "detail": "finite, non-zero"},
              "monotone_in_epsilon": {"passed": True, "detail": "falls"}}
    store.add(CellKey(model, sha, "cifar10", "test[:100]", attack="worst-case:Linf", epsilon=EPS),
              {"n": n, "correct": robust[-1], "seconds": 2.0,
               "extra": {"attacks": chain, "clean_correct": 95, "checks": checks, "seed": 0}})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("rb")
    with ResultsStore(root / "results.sqlite") as store:
        add_corruption_cells(store, "sdnet18", SD, corruptions=COMMON, dataset="cifar10-c", split="test", n=10000)
        add_corruption_cells(store, "sdnet18", SD, lam="stem=0.5", corruptions=("gaussian_noise", "fog"),
                             dataset="cifar10-c", split="test", n=10000)
        add_corruption_cells(store, "resnet18", RN, corruptions=COMMON, dataset="cifar10-c", split="test", n=10000)
        add_corruption_cells(store, "resnet18", RN, corruptions=("contrast",), severities=(5,))  # digits-c[cifar]
        add_attack(store, "sdnet18", SD, ["autoattack-standard:Linf", "pgd-50x3:Linf"], [41, 38])
        add_attack(store, "resnet18", RN, ["pgd:Linf"], [3], checks_pass=False)
        frame = store.to_frame()
    write_report(root / "results.sqlite", root / "report")
    return root / "report" / "robustbench" / "model_info", frame


def accuracy(frame, model, lam, corruption, severity, dataset="cifar10-c"):
    row = frame[(frame["model"] == model) & (frame["lambda_setting"] == lam) & (frame["corruption"] == corruption)
                & (frame["severity"] == severity) & (frame["dataset"] == dataset) & (frame["attack"] == "none")].iloc[0]
    return row["correct"] / row["n"]


def test_files_for_every_series_in_robustbench_layout(report):
    root, _ = report
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == [
        "cifar10/Linf/resnet18_d4d4d4d4_test-100_eps8-255.json",
        "cifar10/Linf/sdnet18_c3c3c3c3_test-100_eps8-255.json",
        "cifar10/corruptions/resnet18_d4d4d4d4.json",
        "cifar10/corruptions/sdnet18_c3c3c3c3.json",
        "cifar10/corruptions/sdnet18_c3c3c3c3_stem-0.5.json",
        "cifar10/corruptions/unaggregated_results.csv",
        "digits-c-cifar/corruptions/resnet18_d4d4d4d4_test-200.json",
        "digits-c-cifar/corruptions/unaggregated_results.csv",
    ]


def test_leaderboard_entries_hold_the_stores_numbers_as_robustbench_spells_them(report):
    root, frame = report
    entry = json.loads((root / "cifar10" / "corruptions" / "sdnet18_c3c3c3c3.json").read_text())
    assert set(entry) <= set(FIELDS) and entry["dataset"] == "cifar10" and entry["eps"] is None
    mean75 = sum(accuracy(frame, "sdnet18", "trained", c, s) for c in COMMON for s in range(1, 6)) / 75
    assert entry["corruptions_acc"] == str(round(mean75 * 100, 2))  # RobustBench's update_json spelling
    assert entry["clean_acc"] == str(round(accuracy(frame, "sdnet18", "trained", "none", 0) * 100, 2))
    assert "corruptions_mce" not in entry or entry["corruptions_mce"] is None  # CIFAR: no AlexNet reference
    assert SD in entry["footnote"]
    partial = json.loads((root / "cifar10" / "corruptions" / "sdnet18_c3c3c3c3_stem-0.5.json").read_text())
    mean10 = sum(accuracy(frame, "sdnet18", "stem=0.5", c, s) for c in ("gaussian_noise", "fog") for s in range(1, 6)) / 10
    assert partial["corruptions_acc"] == str(round(mean10 * 100, 2))
    assert "mean over the 10 common cells run, not all 75" in partial["footnote"]

    aa = json.loads((root / "cifar10" / "Linf" / "sdnet18_c3c3c3c3_test-100_eps8-255.json").read_text())
    # AutoAttack ran first: its own robust accuracy; the worst case with PGD after it is the stronger figure
    assert (aa["autoattack_acc"], aa["external"], aa["eps"], aa["clean_acc"]) == ("41.0", "38.0", "8/255", "95.0")
    assert aa["unreliable"] is False
    pgd = json.loads((root / "cifar10" / "Linf" / "resnet18_d4d4d4d4_test-100_eps8-255.json").read_text())
    assert "autoattack_acc" not in pgd and pgd["external"] == "3.0" and pgd["unreliable"] is True
    assert "not AutoAttack standard" in pgd["footnote"]


def test_results_csv_equals_the_store_cell_for_cell(report):
    root, frame = report
    table = pd.read_csv(root / "cifar10" / "corruptions" / "unaggregated_results.csv", header=[0, 1], index_col=0)
    assert list(table.index) == ["resnet18_d4d4d4d4", "sdnet18_c3c3c3c3", "sdnet18_c3c3c3c3_stem-0.5"]
    assert list(table.columns) == [(c, str(s)) for c in COMMON for s in range(1, 6)]  # Hendrycks' order
    for name, model, lam in [("resnet18_d4d4d4d4", "resnet18", "trained"), ("sdnet18_c3c3c3c3", "sdnet18", "trained")]:
        for c in COMMON:
            for s in range(1, 6):
                assert table.loc[name, (c, str(s))] == accuracy(frame, model, lam, c, s)  # full precision
    stem = table.loc["sdnet18_c3c3c3c3_stem-0.5"]
    assert stem[("fog", "3")] == accuracy(frame, "sdnet18", "stem=0.5", "fog", 3)
    assert math.isnan(stem[("snow", "1")])  # not run: an empty cell
    digits = pd.read_csv(root / "digits-c-cifar" / "corruptions" / "unaggregated_results.csv", header=[0, 1], index_col=0)
    assert digits.loc["resnet18_d4d4d4d4_test-200", ("contrast", "5")] == accuracy(
        frame, "resnet18", "trained", "contrast", 5, "digits-c[cifar]")


def test_no_cells_no_files(tmp_path):
    frame = pd.DataFrame(columns=["model", "checkpoint_sha256", "dataset", "split", "corruption", "severity",
                                  "lambda_setting", "attack", "epsilon", "n", "correct", "extra"])
    assert write_robustbench(Cells.from_frame(frame), tmp_path) == []


# ---------------------------------------------------------------- robustbench's own readers


@pytest.fixture(scope="module")
def robustbench():
    if importlib.util.find_spec("robustbench") is None:  # not importorskip: robustbench's own __init__ fails here
        pytest.skip("robustbench is not installed")
    from robust_csc.models.robustbench_zoo import import_robustbench

    try:
        import_robustbench("utils")
    except RobustCSCError as err:
        pytest.skip(f"robustbench is not usable here: {err}")
    return import_robustbench


def test_robustbench_reads_the_leaderboard_entries(report, robustbench, monkeypatch):
    root, _ = report
    utils = robustbench("utils")
    fields = {f.name for f in __import__("dataclasses").fields(utils.ModelInfo)}
    for path in root.rglob("*.json"):
        entry = json.loads(path.read_text())
        utils.ModelInfo(**{k: v for k, v in entry.items() if k in fields})  # RobustBench's schema, by name
        assert set(entry) - fields <= {"external", "unreliable"}  # fields of RobustBench's own Linf files
    monkeypatch.chdir(root.parent)  # its readers look in ./model_info
    keys = ["clean_acc", "corruptions_acc", "additional_data", "architecture", "venue", "modelzoo_id"]
    rows = utils.get_leaderboard_latex("cifar10", "corruptions", l_keys=keys, sort_by="corruptions_acc").splitlines()
    assert [row.split(" &", 1)[0] for row in rows] == ["1", "2", "3"]
    values = [float(row.split(" & ")[2]) for row in rows]
    assert values == sorted(values, reverse=True)
    sd = json.loads((root / "cifar10" / "corruptions" / "sdnet18_c3c3c3c3.json").read_text())
    expected = f"\\citet{{sdnet18}} & {sd['clean_acc']} & {sd['corruptions_acc']} & N & sdnet18 & N/A & N/A\\\\"
    assert expected in [row.split(" &", 1)[1] for row in rows]
    linf = utils.get_leaderboard_latex("cifar10", "Linf").splitlines()  # sorted by "external", as RobustBench does
    assert [row.split(" & ")[2] for row in linf] == ["38.0", "3.0"]


def test_robustbench_corruption_evaluation_reads_and_extends_the_results_csv(report, robustbench, monkeypatch, tmp_path):
    root, frame = report
    # robustbench.eval imports the GitHub-only `autoattack` and robustbench.data imports pkg_resources; the
    # function under test uses neither, so stand-ins let the module import.
    stub = types.ModuleType("autoattack")
    stub.AutoAttack = object
    stub.state = types.ModuleType("autoattack.state")
    stub.state.EvaluationState = object
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is None:
        monkeypatch.setitem(sys.modules, "autoattack", stub)
        monkeypatch.setitem(sys.modules, "autoattack.state", stub.state)
    if importlib.util.find_spec("pkg_resources") is None:
        monkeypatch.setitem(sys.modules, "pkg_resources", types.ModuleType("pkg_resources"))
    rb_eval = robustbench("eval")
    enums = robustbench("model_zoo.enums")
    cifar10, corruptions = enums.BenchmarkDataset.cifar_10, enums.ThreatModel.corruptions

    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()

    def loader(n_examples, severity, data_dir, shuffle=False, corruptions=(), prepr=None):
        return images[:n_examples] * (1 - 0.1 * severity), labels[:n_examples]  # no CIFAR-10-C files here

    monkeypatch.setitem(rb_eval.CORRUPTION_DATASET_LOADERS[cifar10], corruptions, loader)
    work = tmp_path  # a copy: the function rewrites the file
    shutil.copytree(root, work / "model_info")
    monkeypatch.chdir(work)  # it reads and writes ./model_info/cifar10/corruptions/unaggregated_results.csv
    # RobustBench's CIFAR-10 results hold no AlexNet row (nor do its own), so its mCE step fails after the
    # results are read, extended and written back: that reading and writing is what is checked here.
    with pytest.raises(KeyError, match="AlexNet"):
        rb_eval.corruptions_evaluation(8, "data", cifar10, corruptions, torch.device("cpu"), model, 8, True, None, "new")
    merged = pd.read_csv(work / "model_info" / "cifar10" / "corruptions" / "unaggregated_results.csv", header=[0, 1], index_col=0)
    assert list(merged.index) == ["resnet18_d4d4d4d4", "sdnet18_c3c3c3c3", "sdnet18_c3c3c3c3_stem-0.5", "new"]
    assert merged.shape[1] == 75  # its new row fell into our columns: no column was added
    with torch.no_grad():
        for s in range(1, 6):
            expected = (model(images * (1 - 0.1 * s)).argmax(1) == labels).float().mean().item()
            assert merged.loc["new", ("gaussian_noise", str(s))] == pytest.approx(expected)
    for c in COMMON:
        for s in range(1, 6):
            assert merged.loc["sdnet18_c3c3c3c3", (c, str(s))] == accuracy(frame, "sdnet18", "trained", c, s)


def test_imagenet_c_entry_has_the_mce_against_alexnets_published_errors(tmp_path):
    # AlexNet's ImageNet-C errors (Hendrycks & Dietterich), summed over severities / 5, in Hendrycks' order
    alexnet = dict(zip(COMMON, (.886428, .894468, .922640, .819880, .826268, .785948, .798360, .866816, .826572,
                                .819324, .564592, .853204, .646056, .717840, .606500)))
    with ResultsStore(tmp_path / "in.sqlite") as store:
        add_corruption_cells(store, "resnet18", RN, corruptions=COMMON, dataset="imagenet-c", split="test", n=50)
        frame = store.to_frame()
    write_robustbench(Cells.from_frame(frame), tmp_path)
    entry = json.loads((tmp_path / "robustbench" / "model_info" / "imagenet" / "corruptions" / "resnet18_d4d4d4d4.json").read_text())
    errors = {c: [1 - accuracy(frame, "resnet18", "trained", c, s, "imagenet-c") for s in range(1, 6)] for c in COMMON}
    mce = sum(sum(errors[c]) / (5 * alexnet[c]) for c in COMMON) / 15
    assert entry["corruptions_mce"] == str(round(mce * 100, 2)) and "AlexNet's published" in entry["footnote"]
    assert entry["dataset"] == "imagenet"
