"""Stored suites: `corrupt` writes resumably, block by block; `evaluate --suite fashion-mnist-c` reads them."""

import json

import numpy as np
import pytest
import torch

import robust_csc.data.stored as stored
from cli_support import assert_user_error, run_main
from idx_support import write_fake_dataset
from robust_csc.corruptions import corrupt_images
from robust_csc.data import load_dataset
from robust_csc.data.corrupted import load_cifar_c
from robust_csc.data.generated import generated_suite
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import save_checkpoint

N = 12  # test images of the fake data set
PICKED = ("gaussian_noise", "fog")


@pytest.fixture()
def data_root(tmp_path):
    write_fake_dataset(tmp_path / "data", "FashionMNIST", n_train=20, n_test=N)
    return tmp_path / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "fashion.safetensors"
    save_checkpoint(path, create_model("sdnet18", width=4, num_classes=10), dataset="fashion-mnist")
    return path


def corrupt_args(data_root, out, *more):
    return ["corrupt", "--dataset", "fashion-mnist", "--data-root", data_root, "--out", out,
            "--corruptions", ",".join(PICKED), "--no-verify-checksums", "--seed", 5, *more]


def files_of(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_corrupt_writes_the_pixels_the_models_see_with_a_manifest(capsys, tmp_path, data_root):
    out = tmp_path / "fmc"
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out))
    assert code == 0, err
    assert stdout.splitlines()[-1] == (
        f"wrote {out}: 2 corruptions x 5 severities x {N} images (cifar10-c layout --images-per-severity {N}; "
        "10 blocks written now)"
    )
    assert sorted(files_of(out)) == ["fog.npy", "gaussian_noise.npy", "labels.npy", "suite.json"]
    assert not list(tmp_path.glob(".fmc*"))  # the partial folder became the suite
    test = load_dataset("fashion-mnist", "test", root=data_root, verify_checksums=False)
    seen = test.uint8_hwc()  # padded grey, repeated to RGB
    manifest = json.loads((out / "suite.json").read_text())
    assert manifest["dataset"] == "fashion-mnist" and manifest["seed"] == 5 and manifest["images_per_severity"] == N
    assert manifest["test_size"] == N and manifest["corruptions"] == list(PICKED)
    suite = load_cifar_c(out, images_per_severity=N)
    live = generated_suite("fashion-mnist", root=data_root, corruptions=PICKED, seed=5, verify_checksums=False)
    for corruption in PICKED:
        array = np.load(out / f"{corruption}.npy")
        for severity in (1, 5):
            block = array[(severity - 1) * N : severity * N]
            np.testing.assert_array_equal(block, corrupt_images(seen, corruption, severity, seed=5))
            for i in (0, N - 1):  # the generated suite corrupts the same pixels on the fly
                assert torch.equal(suite.dataset(corruption, severity)[i][0], live.dataset(corruption, severity)[i][0])
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.tile(test.targets, 5))

    # The same command again: nothing to do; other settings on a finished folder: --force.
    before = files_of(out)
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out))
    assert code == 0 and "already holds this suite; nothing to do" in stdout
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out, "--profile", "imagenet"))
    assert_user_error(code, stdout, err, "not empty", "--force")
    assert files_of(out) == before


def test_a_killed_run_resumes_and_ends_with_the_bytes_of_an_uninterrupted_one(capsys, tmp_path, data_root, monkeypatch):
    whole = tmp_path / "whole"
    assert run_main(capsys, *corrupt_args(data_root, whole))[0] == 0

    out = tmp_path / "resumed"
    partial = tmp_path / ".resumed.partial"
    real_write = stored._write_block
    calls = []

    def killed_mid_block(path, start, block):
        calls.append(start)
        if len(calls) == 4:  # the 4th block: half its rows on disk, then the process dies
            real_write(path, start, block[: len(block) // 2])
            raise KeyboardInterrupt
        real_write(path, start, block)

    monkeypatch.setattr(stored, "_write_block", killed_mid_block)
    code, _, err = run_main(capsys, *corrupt_args(data_root, out))
    assert code == 130  # Ctrl-C
    assert not out.exists() and partial.is_dir()
    assert json.loads((partial / "blocks.json").read_text())["complete"] == [["gaussian_noise", s] for s in (1, 2, 3)]
    with pytest.raises(RobustCSCError, match="not found"):  # readers refuse the unfinished folder
        load_cifar_c(partial, images_per_severity=N)
    with pytest.raises(RobustCSCError, match="is unfinished"):
        stored.load_stored_suite("fashion-mnist-c", partial, verify_checksums=False)

    # Other settings are refused while a partial run waits; nothing is touched.
    before = files_of(partial)
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out, "--profile", "imagenet"))
    assert_user_error(code, stdout, err, "unfinished suite with another profile", "--force")
    assert files_of(partial) == before

    monkeypatch.setattr(stored, "_write_block", real_write)
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out))
    assert code == 0, err
    assert f"resuming {out}: 3 of 10 blocks already written" in stdout and "7 blocks written now" in stdout
    assert files_of(out) == files_of(whole)  # every byte, the half-written block included
    assert not partial.exists()


def test_force_starts_a_partial_run_over_and_workers_write_the_same_bytes(capsys, tmp_path, data_root, monkeypatch):
    whole = tmp_path / "whole"
    assert run_main(capsys, *corrupt_args(data_root, whole))[0] == 0
    out = tmp_path / "out"

    def dies(path, start, block):
        raise KeyboardInterrupt

    monkeypatch.setattr(stored, "_write_block", dies)
    assert run_main(capsys, *corrupt_args(data_root, out, "--profile", "imagenet"))[0] == 130
    monkeypatch.undo()
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out, "--force", "--workers", "2"))
    assert code == 0, err
    assert files_of(out) == files_of(whole)


def test_evaluate_reads_a_stored_suite_and_shares_cells_with_the_generated_one(capsys, tmp_path, data_root, checkpoint):
    out = data_root / "fashion-mnist-c"
    assert run_main(capsys, *corrupt_args(data_root, out, "--seed", 0))[0] == 0
    store = tmp_path / "S.sqlite"
    code, stdout, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "fashion-mnist-c",
                                 "--data-root", data_root, "--no-verify-checksums", "--store", store, "--batch-size", 5)
    assert code == 0, err
    assert "on fashion-mnist-c[cifar]: 2 corruptions x 5 severities" in stdout.splitlines()[0]
    assert stdout.splitlines()[-1] == f"store: {store}, cells run 11, skipped 0"  # clean + 2 x 5
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert set(frame["n"]) == {N} and set(frame["dataset"]) == {"fashion-mnist-c[cifar]"}

    # The generated suite holds the same pixels, so it finds its cells done, and they agree.
    code, stdout, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "generated",
                                 "--dataset", "fashion-mnist", "--data-root", data_root, "--no-verify-checksums",
                                 "--corruptions", "fog", "--store", store)
    assert code == 0 and stdout.splitlines()[-1] == f"store: {store}, cells run 0, skipped 6"
    fresh = tmp_path / "G.sqlite"
    run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "generated", "--dataset", "fashion-mnist",
             "--data-root", data_root, "--no-verify-checksums", "--corruptions", "fog", "--store", fresh)
    with ResultsStore(store) as a, ResultsStore(fresh) as b:
        key = ["corruption", "severity", "n", "correct"]
        stored_rows = a.to_frame()
        stored_rows = stored_rows[stored_rows["corruption"].isin(["fog", "none"])][key].sort_values(key)
        assert stored_rows.reset_index(drop=True).equals(b.to_frame()[key].sort_values(key).reset_index(drop=True))


def test_evaluate_refuses_a_stored_suite_of_another_size_in_one_line(capsys, tmp_path, data_root, checkpoint):
    out = data_root / "fashion-mnist-c"
    assert run_main(capsys, *corrupt_args(data_root, out, "--n-examples", 5))[0] == 0
    store = tmp_path / "S.sqlite"
    args = ["evaluate", "--checkpoint", checkpoint, "--suite", "fashion-mnist-c", "--no-verify-checksums",
            "--store", store]
    code, stdout, err = run_main(capsys, *args, "--data-root", data_root)
    assert_user_error(code, stdout, err, "holds 5 images per cell but the fashion-mnist test split has 12",
                      "without --n-examples")
    assert not store.exists()
    # The folder itself as --data-root, but asked for as MNIST.
    code, stdout, err = run_main(capsys, *args, "--data-root", out, "--suite", "mnist-c")
    assert_user_error(code, stdout, err, "holds a suite of fashion-mnist, not mnist", "--suite fashion-mnist-c")
    code, stdout, err = run_main(capsys, *args, "--data-root", tmp_path / "nothing")
    assert_user_error(code, stdout, err, "not found", "robust-csc corrupt --dataset fashion-mnist")
    assert not store.exists()


def test_evaluate_refuses_a_suite_made_from_other_test_images(capsys, tmp_path, data_root, checkpoint):
    out = data_root / "fashion-mnist-c"
    assert run_main(capsys, *corrupt_args(data_root, out))[0] == 0
    write_fake_dataset(tmp_path / "data", "FashionMNIST", n_train=20, n_test=N, seed=9)  # new images, same count
    store = tmp_path / "S.sqlite"
    code, stdout, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "fashion-mnist-c",
                                 "--data-root", data_root, "--no-verify-checksums", "--store", store)
    assert_user_error(code, stdout, err, "was made from 12 other fashion-mnist test images", "--force")
    assert not store.exists()


def test_corrupt_refuses_bad_options_before_writing(capsys, tmp_path, data_root):
    out = tmp_path / "x"
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out, "--workers", "-1"))
    assert_user_error(code, stdout, err, "--workers -1")
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out, "--n-examples", 13))
    assert_user_error(code, stdout, err, "exceeds the 12 fashion-mnist test images")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_damaged_block_file_is_written_again_with_its_blocks(capsys, tmp_path, data_root, monkeypatch):
    whole = tmp_path / "whole"
    assert run_main(capsys, *corrupt_args(data_root, whole))[0] == 0
    out, partial = tmp_path / "out", tmp_path / ".out.partial"

    def dies_after_gaussian(path, start, block, real=stored._write_block, seen=[]):
        seen.append(start)
        if len(seen) > 5:
            raise KeyboardInterrupt
        real(path, start, block)

    monkeypatch.setattr(stored, "_write_block", dies_after_gaussian)
    assert run_main(capsys, *corrupt_args(data_root, out))[0] == 130
    monkeypatch.undo()
    assert len(json.loads((partial / "blocks.json").read_text())["complete"]) == 5
    damaged = partial / "gaussian_noise.npy"
    damaged.write_bytes(damaged.read_bytes()[: 5000])  # cut short, its 5 blocks recorded as done
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, out))
    assert code == 0 and "10 blocks written now" in stdout and "resuming" not in stdout
    assert files_of(out) == files_of(whole)


def test_corrupt_refuses_when_the_disk_cannot_hold_the_suite(capsys, tmp_path, data_root, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    code, stdout, err = run_main(capsys, *corrupt_args(data_root, tmp_path / "out"))
    assert_user_error(code, stdout, err, "GB more in", "free some space")
    assert not (tmp_path / "out").exists()
