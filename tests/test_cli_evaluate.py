"""The evaluate and corrupt verbs: tables, the results store, the CIFAR-10-C layout, one-line errors."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_support import assert_user_error, cli, run_main
from robust_csc.corruptions import corrupt_images
from robust_csc.data import load_dataset
from robust_csc.data.corrupted import load_cifar_c, write_cifar_c
from robust_csc.data.generated import from_uint8_hwc, generated_suite, to_uint8_hwc
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import load_checkpoint, save_checkpoint

GENERATED = ["--suite", "generated", "--dataset", "digits", "--corruptions", "gaussian_noise,contrast",
             "--severities", "1,5", "--n-examples", "20"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, create_model("sdnet18", width=4, num_classes=10), dataset="digits")
    return path


@pytest.fixture()
def store_with_a_row(tmp_path):
    """A valid store holding one cell, and its bytes: refused calls must leave it as it is."""
    path = tmp_path / "kept.sqlite"
    with ResultsStore(path) as store:
        store.add(CellKey("sdnet18", "0" * 64, "digits", "test"), {"n": 1, "correct": 1, "seconds": 0.0})
    return path, path.read_bytes()


# ---------------------------------------------------------------- evaluate


def test_generated_suite_prints_the_table_and_a_rerun_skips_every_cell(capsys, checkpoint, tmp_path, one_thread):
    store = tmp_path / "S.sqlite"
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, *GENERATED, "--store", store)
    assert code == 0, err
    lines = out.splitlines()
    assert "lambda trained: accuracy in % by corruption and severity; n = 20 images per cell; ± half the 95% Wilson interval" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["gaussian_noise"], ["contrast"])}
    assert set(rows) == {"gaussian_noise", "contrast"}
    # selected severities 1 and 5 carry a percentage and half its interval; the others are blank
    for values in rows.values():
        assert values[1] == "-" and values[2] == "-" and values[3] == "-"
        for text in (values[0], values[4]):
            accuracy, half = map(float, text.split("±"))
            assert 0 <= accuracy <= 100 and 0 < half < 50
    assert any(re.fullmatch(r"clean accuracy \d+\.\d% \[\d+\.\d, \d+\.\d\] \(n=20\)", line) for line in lines)
    assert not any("75 common" in line for line in lines)  # a partial suite has no 75-cell mean, and no line for it
    assert any(line.startswith("mean over the cells run (4 cells): ") for line in lines)
    # clean + 2 corruptions x 2 severities
    assert lines[-1] == f"store: {store}, cells run 5, skipped 0"
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert len(frame) == 5 and set(frame["n"]) == {20} and set(frame["dataset"]) == {"digits-c[cifar]"}

    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, *GENERATED, "--store", store)
    assert code == 0, err
    assert out.splitlines()[-1] == f"store: {store}, cells run 0, skipped 5"


def test_lambdas_repeat_or_comma_list(capsys, checkpoint, tmp_path, one_thread):
    store = tmp_path / "S.sqlite"
    args = ["--suite", "generated", "--corruptions", "contrast", "--severities", "5", "--n-examples", "8"]
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, *args, "--store", store,
                              "--lambda", "trained,0.5", "--lambda", "2")
    assert code == 0, err
    for setting in ("trained", "0.5", "2"):
        assert f"lambda {setting}: accuracy in % by corruption and severity; n = 8 images per cell" in out
    assert out.splitlines()[-1] == f"store: {store}, cells run 6, skipped 0"


def test_stored_cifar10_c_folder_evaluates(capsys, checkpoint, tmp_path, one_thread):
    n = 8
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8) for c in ("gaussian_noise", "contrast")}
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    folder = write_cifar_c(tmp_path / "CIFAR-10-C", "cifar10-c", images, labels)
    store = tmp_path / "S.sqlite"
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "cifar10-c",
                              "--data-root", folder, "--images-per-severity", n, "--store", store)
    assert code == 0, err
    assert out.splitlines()[-1] == f"store: {store}, cells run 10, skipped 0"  # 2 x 5, no clean cell
    assert out.splitlines()[1].startswith("no clean cell: CIFAR-10 folder")  # no clean CIFAR-10 here: said, not fatal
    # The stored counts are what the model gives on the written pixels.
    model, _ = load_checkpoint(checkpoint)
    with ResultsStore(store) as results:
        frame = results.to_frame()
    with torch.no_grad():
        for corruption, block in images.items():
            for severity in (1, 3, 5):
                pixels = block[(severity - 1) * n : severity * n]
                x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
                correct = int((model(x).argmax(1) == torch.from_numpy(labels.astype(np.int64))).sum())
                row = frame[(frame["corruption"] == corruption) & (frame["severity"] == severity)]
                assert row["n"].item() == n and row["correct"].item() == correct
    assert set(frame["dataset"]) == {"cifar10-c"}


def test_missing_cifar10_c_folder(checkpoint, tmp_path, store_with_a_row):
    store, before = store_with_a_row
    proc = cli("evaluate", "--checkpoint", checkpoint, "--suite", "cifar10-c", "--data-root", tmp_path / "nowhere",
               "--store", store)
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, "CIFAR-10-C folder", "not found", "--download")
    assert store.read_bytes() == before


def test_generated_suite_options_are_refused_for_stored_suites(capsys, checkpoint, tmp_path, store_with_a_row):
    store, before = store_with_a_row
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "cifar10-c", "--profile",
                              "imagenet", "--data-root", tmp_path, "--store", store)
    assert_user_error(code, out, err, "--profile", "--suite generated")
    assert store.read_bytes() == before


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--corruptions", "gaussian_noise,fog_of_war"], ["Unknown corruption 'fog_of_war'"]),
        (["--severities", "1,6"], ["Severity 6", "1 to 5"]),
        (["--severities", "one"], ["severity 'one' is not an integer"]),
        (["--n-examples", "0"], ["--n-examples 0", "at least 1"]),
        (["--lambda", "-1"], ["lambda '-1'"]),
    ],
)
def test_bad_selection_is_one_line_and_touches_nothing(capsys, checkpoint, tmp_path, store_with_a_row, options,
                                                       fragments):
    # In this process (main() is what the console script runs; test_missing_cifar10_c_folder runs the script).
    store, before = store_with_a_row
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "generated", "--store", store,
                              *options)
    assert_user_error(code, out, err, *fragments)
    assert store.read_bytes() == before
    # a store that did not exist is not created by a refused call
    fresh = tmp_path / "fresh.sqlite"
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "generated", "--store", fresh,
                              *options)
    assert code == 2 and not fresh.exists()


def test_lambda_on_a_model_without_csc_layers(capsys, tmp_path):
    resnet = save_checkpoint(tmp_path / "resnet.safetensors", create_model("resnet18", width=4), dataset="digits")
    store = tmp_path / "fresh.sqlite"
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", resnet, *GENERATED, "--store", store, "--lambda", "0.5")
    assert_user_error(code, out, err, "without CSC layers", "--lambda")
    assert not store.exists()


def test_class_count_mismatch(capsys, checkpoint, tmp_path, store_with_a_row):
    store, before = store_with_a_row
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "cifar100-c", "--data-root",
                              tmp_path, "--store", store)
    assert_user_error(code, out, err, "10 classes", "cifar100-c has 100")
    assert store.read_bytes() == before


def test_store_that_is_a_text_file(capsys, checkpoint, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    before = text.read_bytes()
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, *GENERATED, "--store", text)
    assert_user_error(code, out, err, "not a robust-csc results store")
    assert text.read_bytes() == before


# ---------------------------------------------------------------- corrupt


def test_corrupt_writes_the_cifar10_c_layout_and_refuses_to_overwrite(capsys, tmp_path):
    out_dir, n, seed = tmp_path / "digits-c", 6, 3
    args = ["corrupt", "--dataset", "digits", "--out", out_dir, "--corruptions", "gaussian_noise,contrast",
            "--n-examples", n, "--seed", seed]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"wrote {out_dir}: 2 corruptions x 5 severities x {n} images")
    assert sorted(p.name for p in out_dir.iterdir()) == ["contrast.npy", "gaussian_noise.npy", "labels.npy", "suite.json"]

    test = load_dataset("digits", "test")
    base = np.stack([to_uint8_hwc(test[i][0]) for i in range(n)])
    suite = load_cifar_c(out_dir, images_per_severity=n)
    generated = generated_suite("digits", corruptions=["gaussian_noise", "contrast"], seed=seed, n_examples=n)
    assert suite.corruptions == ("gaussian_noise", "contrast") and suite.images_per_cell == n
    for corruption in suite.corruptions:
        for severity in (1, 2, 3, 4, 5):
            expected = corrupt_images(base, corruption, severity, seed=seed)
            cell, live = suite.dataset(corruption, severity), generated.dataset(corruption, severity)
            for i in range(n):
                image, label, index = cell[i]
                pixels = image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                assert np.array_equal(pixels, expected[i]) and index == i and label == int(test[i][1])
                # the same pixels the generated suite corrupts on the fly
                assert torch.equal(image, from_uint8_hwc(expected[i])) and torch.equal(image, live[i][0])

    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    code, out, err = run_main(capsys, *args[:-2], "--seed", 4)
    assert_user_error(code, out, err, "not empty", "--force")
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    code, out, err = run_main(capsys, *args[:-2], "--seed", 4, "--force")
    assert code == 0, err
    assert (out_dir / "gaussian_noise.npy").read_bytes() != before["gaussian_noise.npy"]


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--dataset", "imagenet"], ["32x32 images only", "224x224"]),
        (["--dataset", "digits", "--severities", "1,2"], ["all 5 severity blocks", "1,2,3,4,5"]),
        (["--dataset", "digits", "--corruptions", "rain"], ["Unknown corruption 'rain'"]),
        (["--dataset", "digits", "--n-examples", "451"], ["exceeds the 450 digits test images"]),
    ],
)
def test_corrupt_refuses_what_the_layout_cannot_hold(capsys, tmp_path, options, fragments):
    code, out, err = run_main(capsys, "corrupt", "--out", tmp_path / "x", *options)
    assert_user_error(code, out, err, *fragments)
    assert not (tmp_path / "x").exists()


def test_stored_suite_takes_the_clean_test_set_when_there_is_one(capsys, checkpoint, tmp_path, monkeypatch, one_thread):
    import robust_csc.data.generated as generated

    n = 4
    rng = np.random.default_rng(1)
    images = {"fog": rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8)}
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    folder = write_cifar_c(tmp_path / "CIFAR-10-C", "cifar10-c", images, labels)
    asked = []

    def fake_clean(dataset, split, root, n_examples, verify_checksums=True):
        # No CIFAR-10 download here: stand in with the severity-1 pixels as "clean".
        asked.append((dataset, split, Path(root), n_examples))
        assert verify_checksums  # on unless --no-verify-checksums
        return [(from_uint8_hwc(images["fog"][i]), int(labels[i]), i) for i in range(n_examples or n)]

    monkeypatch.setattr(generated, "generated_clean", fake_clean)
    store = tmp_path / "S.sqlite"
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "cifar10-c", "--data-root",
                              folder, "--images-per-severity", n, "--n-examples", 3, "--store", store)
    assert code == 0, err
    assert asked == [("cifar10", "test", folder, 3)]
    assert out.splitlines()[-1] == f"store: {store}, cells run 6, skipped 0"  # clean + 5 severities
    with ResultsStore(store) as results:
        frame = results.to_frame()
    clean_row, fog1 = frame[frame["corruption"] == "none"], frame[(frame["corruption"] == "fog") & (frame["severity"] == 1)]
    assert clean_row["correct"].item() == fog1["correct"].item() and set(frame["split"]) == {"test[:3]"}
