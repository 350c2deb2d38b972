"""benchmarks/bench_suite.py: the synthetic CIFAR-10-C it writes, its store check, verdict, and a small CPU run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_csc.corruptions.names import COMMON
from robust_csc.data.corrupted import load_cifar_c
from robust_csc.evaluation.harness import evaluate
from robust_csc.models import create_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_suite.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def test_help_gives_the_h100_and_cpu_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "    python benchmarks/bench_suite.py\n" in out
    assert "OMP_NUM_THREADS=2 python benchmarks/bench_suite.py --images-per-severity 40 --width 8" in out


def test_written_folder_loads_with_the_pixels_and_labels_written(tmp_path):
    n, seed = 6, 3
    folder = bench.write_synthetic_cifar_c(tmp_path / "CIFAR-10-C", n, seed=seed)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{c}.npy" for c in COMMON] + ["labels.npy"])
    labels = np.load(folder / "labels.npy")
    assert labels.dtype == np.uint8 and labels.shape == (5 * n,)
    assert (labels.reshape(5, n) == labels[:n]).all() and labels.max() <= 9

    suite = load_cifar_c(tmp_path, "cifar10-c", corruptions=COMMON, images_per_severity=n)
    assert suite.corruptions == COMMON and len(suite) == 75 and suite.images_per_cell == n
    for corruption, severity in [("gaussian_noise", 1), ("fog", 3), ("jpeg_compression", 5)]:
        array = np.load(folder / f"{corruption}.npy")  # read back with numpy, not through the loader
        assert array.dtype == np.uint8 and array.shape == (5 * n, 32, 32, 3)
        block = array[(severity - 1) * n : severity * n]
        # The documented rule, drawn here independently: one generator per (seed, corruption number, severity).
        expected = np.random.default_rng([seed, COMMON.index(corruption), severity]).integers(
            0, 256, size=(n, 32, 32, 3), dtype=np.uint8
        )
        np.testing.assert_array_equal(block, expected)
        data = suite.dataset(corruption, severity)
        for i in (0, n - 1):
            image, label, index = data[i]
            np.testing.assert_array_equal((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), block[i])
            assert label == int(labels[i]) and index == i
    # Blocks are distinct draws, not one block repeated.
    gaussian = np.load(folder / "gaussian_noise.npy")
    assert not np.array_equal(gaussian[:n], gaussian[n : 2 * n])
    assert not np.array_equal(gaussian, np.load(folder / "shot_noise.npy"))


def test_data_root_is_written_once_then_reused(tmp_path):
    root = tmp_path / "suite"
    assert bench._prepare_data_root(root, 2, seed=0) is True
    assert len(list(root.glob("*.npy"))) == 16 and [p.name for p in tmp_path.iterdir()] == ["suite"]
    before = (root / "fog.npy").stat().st_mtime_ns
    assert bench._prepare_data_root(root, 2, seed=1) is False  # reused as it is
    assert (root / "fog.npy").stat().st_mtime_ns == before


def test_store_check_refuses_missing_cells_and_short_cells(tmp_path, one_thread):
    n = 4
    bench.write_synthetic_cifar_c(tmp_path / "CIFAR-10-C", n)
    model = create_model("sdnet18", num_classes=10, width=4)
    store = tmp_path / "results.sqlite"
    short = load_cifar_c(tmp_path, corruptions=COMMON[:1], severities=[1, 2], n_examples=n - 1, images_per_severity=n)
    evaluate(model, short, store=store, model_name="sdnet18", checkpoint_sha256="0" * 64, dataset="cifar10")

    full_cells = load_cifar_c(tmp_path, corruptions=COMMON[:1], severities=[1, 2], images_per_severity=n)
    with pytest.raises(AssertionError, match=rf"n != {n} images"):
        bench.check_store(store, full_cells, "sdnet18")
    more_cells = load_cifar_c(tmp_path, corruptions=COMMON[:1], severities=[1, 2, 3], n_examples=n - 1,
                              images_per_severity=n)
    with pytest.raises(AssertionError, match="holds 2 cells, not the suite's 3"):
        bench.check_store(store, more_cells, "sdnet18")
    bench.check_store(store, short, "sdnet18")  # the suite it was run on passes


def test_verdict_judges_only_cuda_runs_and_names_a_non_h100():
    cpu = bench.verdict(torch.device("cpu"), "cpu", 900.0)
    assert cpu.startswith("verdict: not judged") and "only checks the script" in cpu
    cuda = torch.device("cuda")  # a device object only; nothing runs on it
    assert "target MET" in bench.verdict(cuda, "NVIDIA H100 80GB HBM3", 59.9)
    missed = bench.verdict(cuda, "NVIDIA H100 80GB HBM3", 60.0)
    assert "target MISSED" in missed and "not an H100" not in missed
    assert "not an H100" in bench.verdict(cuda, "NVIDIA A100-SXM4-40GB", 30.0)


def test_small_cpu_run_counts_every_image_and_cleans_its_scratch(tmp_path, capsys, one_thread):
    code = bench.main(["--images-per-severity", "8", "--width", "4", "--device", "cpu",
                       "--scratch-parent", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"75 cells x 8 = (\d+) images", out).group(1) == "600"  # 15 x 5 x 8
    assert re.search(r"harness \(evaluate\): (\d+) images in", out).group(1) == "600"
    assert re.search(r"data side alone \(DataLoader, no model\): (\d+) images", out).group(1) == "600"
    assert "75 cells stored, each n=8" in out
    assert re.search(r"^verdict: not judged -- the target \(750,000 images in under 60 s on one H100\)", out, re.M)
    assert list(tmp_path.iterdir()) == []  # the scratch folder (suite, stores) is gone


def _load_ratio_script():
    path = SCRIPT.with_name("bench_suite_ratio.py")
    spec = importlib.util.spec_from_file_location("bench_suite_ratio", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_benchmark_small_run_times_every_candidate_on_the_same_images(tmp_path, capsys, one_thread):
    ratio = _load_ratio_script()
    code = ratio.main(["--images-per-severity", "8", "--width", "4", "--rounds", "2", "--warmup", "1",
                       "--batch-size", "3", "--scratch-parent", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "rounds of 5 cells x 8 images = 40 images" in out
    for name in ("model", "harness", "data", "model+stats"):
        assert re.search(rf"^{re.escape(name)} +[\d,]+ images/s", out, re.M), out
    assert re.search(r"^harness / model: \d+\.\d{3} \(target >= 0\.9: (MET|MISSED)\); 3 harness calls", out, re.M)
    assert list(tmp_path.iterdir()) == []


def test_ratio_benchmark_reads_a_stored_fashion_mnist_suite(tmp_path, capsys, one_thread):
    from cli_support import run_main
    from idx_support import write_fake_dataset

    ratio = _load_ratio_script()
    write_fake_dataset(tmp_path / "data", n_train=10, n_test=6)
    suite = tmp_path / "fmc"
    assert run_main(capsys, "corrupt", "--dataset", "fashion-mnist", "--data-root", tmp_path / "data", "--out", suite,
                    "--corruptions", "fog,contrast", "--no-verify-checksums")[0] == 0
    capsys.readouterr()
    assert ratio.main(["--suite-root", str(suite), "--width", "4", "--rounds", "2", "--warmup", "0",
                       "--scratch-parent", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CorruptionSuite('fashion-mnist-c[cifar]', 2 corruptions x 5 severities, 6 images per cell)" in out
    assert "; 2 harness calls" in out
