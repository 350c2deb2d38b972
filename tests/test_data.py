"""Data package tests; CIFAR and ImageNet folders are written here in their published formats."""

import pickle
import struct
import urllib.error
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets.cifar
from PIL import Image
from sklearn.datasets import load_digits

from robust_csc.constants import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from robust_csc.data import (
    dataset_info,
    digits_split_indices,
    digits_stats,
    load_dataset,
    load_digits_split,
    make_loader,
)
from robust_csc.errors import RobustCSCError

PER_BATCH = 3  # images per fake CIFAR file


def assert_one_sentence(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message and ". " not in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------- digits


def test_digits_split_shapes_and_range():
    train, test = load_digits_split("train"), load_digits_split("test")
    assert len(train) == 1347 and len(test) == 450
    for ds in (train, test):
        images, labels = ds.tensors
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert images.max() > 0.9  # scaled by 16, not by 255
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
        assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


def test_digits_split_indices_disjoint_covering_and_stratified():
    train_idx, test_idx = digits_split_indices()
    assert set(train_idx).isdisjoint(test_idx)
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(1797))
    targets = load_digits().target
    totals, in_test = Counter(targets.tolist()), Counter(targets[test_idx].tolist())
    for cls, total in totals.items():
        assert abs(in_test[cls] - 0.25 * total) <= 1


def test_digits_images_follow_the_index_split():
    raw = load_digits()
    train_idx, _ = digits_split_indices()
    images, labels = load_digits_split("train").tensors
    for i in (0, 100, 1346):
        source = torch.from_numpy(raw.images[train_idx[i]]).float()[None, None] / 16
        expected = F.interpolate(source, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        assert torch.allclose(images[i, 0], expected.clamp(0, 1))
        assert labels[i].item() == raw.target[train_idx[i]]


def test_digits_cached_and_stats():
    assert load_digits_split("train").tensors[0] is load_digits_split("train").tensors[0]
    mean, std = digits_stats()
    images = load_digits_split("train").tensors[0]
    assert len(mean) == len(std) == 3
    assert mean == pytest.approx([images.mean().item()] * 3, abs=1e-5)
    assert std == pytest.approx([images.std().item()] * 3, abs=1e-5)
    info = dataset_info("digits")
    assert (info.num_classes, info.image_size, info.stem) == (10, 32, "cifar")
    assert (info.mean, info.std) == (mean, std)


def test_digits_bad_split():
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("digits", "val")
    assert_one_sentence(exc_info, "train or test")


# ---------------------------------------------------------------- CIFAR


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str`, as in the published CIFAR files.

    The archives were written by Python 2: their keys read back as b"data" with
    encoding="bytes" and as "data" with torchvision's encoding="latin1". Python 3's
    own pickle of b"data" would stay bytes under latin1, which the real files never do.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _pickle(path, obj):
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)
    with open(path, "rb") as f:  # the layout the CIFAR web page documents
        assert set(pickle.load(f, encoding="bytes")) == set(obj)


def _fake_batch(rng, num_classes, label_key):
    data = rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8)
    batch = {
        b"batch_label": b"fake batch",
        b"data": data,
        label_key: rng.integers(0, num_classes, size=PER_BATCH).tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(PER_BATCH)],
    }
    return data, batch


@pytest.fixture
def cifar10_root(tmp_path):
    """A CIFAR-10 folder in the published python-pickle format; returns (root, expected)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        parts = []
        for name in files:
            data, batch = _fake_batch(rng, 10, b"labels")
            _pickle(folder / name, batch)
            parts.append((data, batch[b"labels"]))
        expected[split] = (np.concatenate([d for d, _ in parts]), sum((l for _, l in parts), []))
    meta = {
        b"label_names": [f"class{i}".encode() for i in range(10)],
        b"num_cases_per_batch": PER_BATCH,
        b"num_vis": 3072,
    }
    _pickle(folder / "batches.meta", meta)
    return tmp_path, expected


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    expected = {}
    for split in ("train", "test"):
        data, batch = _fake_batch(rng, 100, b"fine_labels")
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        _pickle(folder / split, batch)
        expected[split] = (data, batch[b"fine_labels"])
    _pickle(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return tmp_path, expected


def _assert_exact(ds, data, labels):
    assert len(ds) == len(labels)
    for i in range(len(ds)):
        image, label = ds[i]
        # Rows are row-major CHW uint8; the loader gives the same pixels as [0, 1] floats.
        want = torch.from_numpy(data[i].reshape(3, 32, 32)).float() / 255
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert torch.allclose(image, want, atol=1e-6)
        assert isinstance(label, int) and label == labels[i]


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_returns_written_pixels(cifar10_root, split):
    root, expected = cifar10_root
    ds = load_dataset("cifar10", split, root=root, verify_checksums=False)
    _assert_exact(ds, *expected[split])
    assert ds.classes == [f"class{i}" for i in range(10)]


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_returns_written_pixels(cifar100_root, split):
    root, expected = cifar100_root
    ds = load_dataset("cifar100", split, root=root, verify_checksums=False)
    _assert_exact(ds, *expected[split])
    assert len(ds.classes) == 100 and ds.classes[7] == "fine7"


def test_cifar_train_transform_augments(cifar10_root):
    root, expected = cifar10_root
    torch.manual_seed(0)
    ds = load_dataset("cifar10", "train", root=root, train_transform=True, verify_checksums=False)
    plain = torch.from_numpy(expected["train"][0][0].reshape(3, 32, 32)).float() / 255
    views = [ds[0][0] for _ in range(8)]
    assert all(v.shape == (3, 32, 32) and 0 <= v.min() and v.max() <= 1 for v in views)
    assert any(not torch.allclose(v, plain) for v in views)  # crops/flips actually happen


@pytest.mark.parametrize(
    "name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_cifar_missing_folder(tmp_path, name, folder):
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset(name, "train", root=tmp_path)
    assert_one_sentence(exc_info, str(tmp_path / folder), "--download")


def test_cifar_checksums_refuse_fake_files(cifar10_root, cifar100_root):
    for name, root in (("cifar10", cifar10_root[0]), ("cifar100", cifar100_root[0])):
        with pytest.raises(RobustCSCError) as exc_info:
            load_dataset(name, "test", root=root)
        assert_one_sentence(exc_info, "checksums", "verify_checksums=False")


def test_cifar_missing_file_without_checksums(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(RobustCSCError):
        load_dataset("cifar10", "train", root=root, verify_checksums=False)


def test_cifar_corrupt_file_without_checksums(cifar10_root):
    root, _ = cifar10_root
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("cifar10", "test", root=root, verify_checksums=False)
    assert_one_sentence(exc_info, "corrupt")


def test_cifar_download_failure_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("cifar10", "train", root=tmp_path, download=True)
    assert_one_sentence(exc_info, "could not download CIFAR-10", "network")


# ---------------------------------------------------------------- ImageNet

# Two real wnids; solid colours so each image's class can be read off its pixels.
WNIDS = {"n01443537": (0, 0, 255), "n01440764": (255, 0, 0)}


@pytest.fixture
def imagenet_parent(tmp_path):
    """`tmp/val/<wnid>/*.JPEG` with two images of different sizes per class."""
    for wnid, colour in WNIDS.items():
        folder = tmp_path / "val" / wnid
        folder.mkdir(parents=True)
        for i, size in enumerate([(300, 260), (120, 500)]):
            Image.new("RGB", size, colour).save(folder / f"ILSVRC2012_val_{wnid}_{i}.JPEG")
    return tmp_path


@pytest.mark.parametrize("use_parent", [True, False])
def test_imagenet_val_classes_and_crop(imagenet_parent, use_parent):
    root = imagenet_parent if use_parent else imagenet_parent / "val"
    ds = load_dataset("imagenet", "val", root=root)
    assert ds.classes == sorted(WNIDS)  # sorted wnids: the standard class order
    assert len(ds) == 4
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1
        colour = torch.tensor(WNIDS[ds.classes[label]], dtype=torch.float32) / 255
        assert torch.allclose(image[:, 112, 112], colour, atol=0.05)
    assert sorted(label for _, label in ds.samples) == [0, 0, 1, 1]
    assert len(load_dataset("imagenet", "test", root=root)) == 4  # "test" means val


def test_imagenet_missing_or_empty(tmp_path):
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("imagenet", "val", root=tmp_path / "nowhere")
    assert_one_sentence(exc_info, str(tmp_path / "nowhere"), "<wnid>")
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("imagenet", "val", root=tmp_path)
    assert_one_sentence(exc_info, "no class sub-folders")
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(RobustCSCError):
        load_dataset("imagenet", "val", root=tmp_path)


def test_imagenet_has_no_train_split(tmp_path):
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("imagenet", "train", root=tmp_path)
    assert_one_sentence(exc_info, "val")


# ---------------------------------------------------------------- registry and loader


def test_unknown_dataset_name():
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("svhn", "train")
    assert_one_sentence(exc_info, "svhn", "digits", "cifar10", "cifar100", "imagenet", "fashion-mnist", "mnist")
    with pytest.raises(RobustCSCError):
        dataset_info("svhn")


def test_dataset_info():
    assert dataset_info("cifar10") == dataset_info("CIFAR10")
    c10, c100, inet = dataset_info("cifar10"), dataset_info("cifar100"), dataset_info("imagenet")
    assert (c10.num_classes, c10.image_size, c10.stem) == (10, 32, "cifar")
    assert (c10.mean, c10.std) == (CIFAR_MEAN, CIFAR_STD)
    assert (c100.num_classes, c100.stem) == (100, "cifar")
    assert (inet.num_classes, inet.image_size, inet.mean, inet.std, inet.stem) == (
        1000,
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "imagenet",
    )


def test_make_loader_batches_and_seeded_order():
    ds = load_digits_split("test")

    def first_labels(seed):
        return next(iter(make_loader(ds, 32, shuffle=True, seed=seed)))[1]

    images, labels = next(iter(make_loader(ds, 32, shuffle=False)))
    assert images.shape == (32, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(labels, ds.tensors[1][:32])
    assert torch.equal(first_labels(3), first_labels(3))
    assert not torch.equal(first_labels(3), first_labels(4))
    assert len(make_loader(ds, 100, shuffle=False, drop_last=True)) == 4  # 450 // 100
    # Without an initialised process group, distributed=True falls back to one process.
    loader = make_loader(ds, 100, shuffle=False, distributed=True)
    assert len(loader) == 5 and not isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    with pytest.raises(RobustCSCError):
        make_loader(ds, 0, shuffle=False)
