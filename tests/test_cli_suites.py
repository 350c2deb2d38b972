"""`robust-csc evaluate` end to end on stored suites written in their published layouts.

CIFAR-10-C beside a real CIFAR-10 python-pickle folder (the clean cell comes
from the test batch through the real loader), and an ImageNet-C folder tree
for a 1000-class ImageNet-stem checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from cli_support import run_main
from robust_csc.data.corrupted import load_imagenet_c, write_cifar_c
from robust_csc.evaluation.stats import format_accuracy
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import load_checkpoint, save_checkpoint
from test_data import _pickle  # pickles bytes as Python 2 str, as the published CIFAR files do

N_TEST = 12  # images in the written CIFAR-10 test batch (and per CIFAR-10-C severity block)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-batches-py as published: data_batch_1..5, test_batch, batches.meta; returns the test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    test = None
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", N_TEST)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: 1024 R, 1024 G, 1024 B values
        labels = rng.integers(0, 10, size=n).tolist()
        _pickle(
            folder / name,
            {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]},
        )
        if name == "test_batch":
            test = (data, np.asarray(labels, dtype=np.int64))
    _pickle(folder / "batches.meta",
            {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": N_TEST, b"num_vis": 3072})
    return test


def _accept_written_checksums(monkeypatch, folder: Path) -> None:
    """Make torchvision's md5 table name the written files, so its checksum check runs and passes.

    The CLI loads CIFAR-10 with checksums on; the published md5s cannot match
    files a test writes, and everything else (pickle layout, loader) stays real.
    """
    cls = datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[name, _md5(folder / name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, _md5(folder / name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def test_cifar10_c_clean_cell_comes_from_the_written_test_batch(capsys, tmp_path, monkeypatch, one_thread):
    torch.manual_seed(0)
    checkpoint = tmp_path / "sdnet.safetensors"
    save_checkpoint(checkpoint, create_model("sdnet18", width=4, num_classes=10), dataset="cifar10")
    rng = np.random.default_rng(5)
    data_root = tmp_path / "data"
    test_pixels, test_labels = _write_cifar10(data_root, rng)
    _accept_written_checksums(monkeypatch, data_root / "cifar-10-batches-py")
    corrupted = {"fog": rng.integers(0, 256, size=(5 * N_TEST, 32, 32, 3), dtype=np.uint8)}
    write_cifar_c(data_root / "CIFAR-10-C", "cifar10-c", corrupted, test_labels.astype(np.uint8))

    store = tmp_path / "S.sqlite"
    code, out, err = run_main(capsys, "evaluate", "--checkpoint", checkpoint, "--suite", "cifar10-c", "--data-root",
                              data_root, "--images-per-severity", N_TEST, "--severities", "2", "--store", store)
    assert code == 0, err
    assert "no clean cell" not in out
    assert out.splitlines()[-1] == f"store: {store}, cells run 2, skipped 0"  # clean + fog severity 2

    # The direct evaluation: the written rows decoded by hand (channel planes), the model called as is.
    model, _ = load_checkpoint(checkpoint)
    x = torch.from_numpy(test_pixels.reshape(N_TEST, 3, 32, 32)).float().div(255)
    with torch.no_grad():
        correct = int((model(x).argmax(1) == torch.from_numpy(test_labels)).sum())
    with ResultsStore(store) as results:
        frame = results.to_frame()
    clean = frame[frame["corruption"] == "none"]
    assert len(clean) == 1 and clean["n"].item() == N_TEST and clean["correct"].item() == correct
    assert clean["severity"].item() == 0 and clean["dataset"].item() == "cifar10-c"
    assert f"clean accuracy {format_accuracy(correct, N_TEST)}" in out.splitlines()


WNIDS = [f"n{10000000 + 7 * i:08d}" for i in range(1000)]  # sorted: class index = position


def _write_imagenet_c(root: Path, cells: list[tuple[str, int]]) -> None:
    """<root>/<corruption>/<severity>/<wnid>/<file>.JPEG, one 224x224 image per class and cell."""
    rng = np.random.default_rng(2)
    for corruption, severity in cells:
        for c, wnid in enumerate(WNIDS):
            folder = root / corruption / str(severity) / wnid
            folder.mkdir(parents=True)
            # Two colour halves per image, different per class and cell: models see varied inputs.
            pixels = np.empty((224, 224, 3), dtype=np.uint8)
            pixels[:112], pixels[112:] = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
            Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{c + 1:08d}.JPEG", quality=90)


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("inet") / "sdnet_imagenet.safetensors"
    model = create_model("sdnet18", width=4, num_classes=1000, stem="imagenet")
    save_checkpoint(path, model, dataset="imagenet")
    return path


def test_imagenet_c_tree_evaluates_end_to_end(capsys, tmp_path, imagenet_checkpoint, one_thread):
    root = tmp_path / "ImageNet-C"
    cells = [("gaussian_noise", 1), ("gaussian_noise", 3), ("fog", 1), ("fog", 3)]
    _write_imagenet_c(root, cells)
    store = tmp_path / "S.sqlite"
    args = ["evaluate", "--checkpoint", imagenet_checkpoint, "--suite", "imagenet-c", "--data-root", tmp_path,
            "--corruptions", "gaussian_noise,fog", "--severities", "1,3", "--n-examples", 6, "--batch-size", 3,
            "--store", store]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert "imagenet-c" in lines[0]
    assert "lambda trained: accuracy in % by corruption and severity; n = 6 images per cell; ± half the 95% Wilson interval" in lines
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["gaussian_noise"], ["fog"])}
    assert set(rows) == {"gaussian_noise", "fog"}
    for values in rows.values():  # severities 1 and 3 filled, 2, 4, 5 blank
        assert values[1] == values[3] == values[4] == "-"
        assert all(0 <= float(values[i].split("±")[0]) <= 100 for i in (0, 2))
    assert lines[-1] == f"store: {store}, cells run 4, skipped 0"  # no clean cell for ImageNet-C

    # The stored counts are the model's on the same 6 fixed images of each cell.
    model, _ = load_checkpoint(imagenet_checkpoint)
    suite = load_imagenet_c(root, corruptions=["gaussian_noise", "fog"], severities=[1, 3], subset=6, seed=0)
    with ResultsStore(store) as results:
        frame = results.to_frame()
    assert len(frame) == 4 and set(frame["n"]) == {6} and set(frame["dataset"]) == {"imagenet-c"}
    assert set(frame["split"]) == {"test[subset=6,seed=0]"}
    for corruption, severity in cells:
        items = list(suite.dataset(corruption, severity))
        x = torch.stack([image for image, _, _ in items])
        labels = torch.tensor([label for _, label, _ in items])
        assert set(labels.tolist()) <= set(range(1000)) and len(items) == 6
        with torch.no_grad():
            correct = int((model(x).argmax(1) == labels).sum())
        row = frame[(frame["corruption"] == corruption) & (frame["severity"] == severity)]
        assert row["correct"].item() == correct
        assert any(text.startswith(f"{correct / 6 * 100:.1f}±") for text in rows[corruption])

    # A rerun skips all four cells and the store keeps them once each.
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert out.splitlines()[-1] == f"store: {store}, cells run 0, skipped 4"
    with ResultsStore(store) as results:
        assert len(results.to_frame()) == 4
    assert os.path.isdir(root / "fog" / "3" / WNIDS[-1])


def test_a_cifar_copy_that_fails_the_checksums_gets_its_clean_cell_with_the_flag(capsys, tmp_path, one_thread):
    # The written pickles are not the published files: torchvision's MD5s refuse them
    # (no clean cell, with a note naming the flag), and --no-verify-checksums takes them.
    torch.manual_seed(0)
    checkpoint = tmp_path / "sdnet.safetensors"
    save_checkpoint(checkpoint, create_model("sdnet18", width=4, num_classes=10), dataset="cifar10")
    rng = np.random.default_rng(6)
    data_root = tmp_path / "data"
    _, test_labels = _write_cifar10(data_root, rng)
    corrupted = {"fog": rng.integers(0, 256, size=(5 * N_TEST, 32, 32, 3), dtype=np.uint8)}
    write_cifar_c(data_root / "CIFAR-10-C", "cifar10-c", corrupted, test_labels.astype(np.uint8))
    common = ["evaluate", "--checkpoint", checkpoint, "--suite", "cifar10-c", "--data-root", data_root,
              "--images-per-severity", N_TEST, "--severities", "2"]

    code, out, err = run_main(capsys, *common, "--store", tmp_path / "a.sqlite")
    assert code == 0, err
    assert "no clean cell" in out and "--no-verify-checksums" in out
    assert out.splitlines()[-1].endswith("cells run 1, skipped 0")  # fog severity 2 only

    code, out, err = run_main(capsys, *common, "--no-verify-checksums", "--store", tmp_path / "b.sqlite")
    assert code == 0, err
    assert "no clean cell" not in out
    assert out.splitlines()[-1].endswith("cells run 2, skipped 0")  # clean + fog severity 2
