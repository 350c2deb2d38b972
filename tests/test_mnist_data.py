"""MNIST / Fashion-MNIST loaders: IDX files written here in the published format, and Debian's real files when installed."""

import functools
import gzip
import hashlib
import http.server
import itertools
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

import robust_csc.data.mnist as mnist
from cli_support import assert_user_error, run_main
from idx_support import NAMES, fake_split, idx_images, idx_labels, write_fake_dataset, write_split
from robust_csc.data import dataset_info, load_dataset
from robust_csc.errors import RobustCSCError

DEBIAN = mnist.debian_folder()
needs_debian = pytest.mark.skipif(DEBIAN is None, reason=f"Debian's {mnist.DEBIAN_PACKAGE} is not installed")


def one_sentence(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message and ". " not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture()
def fake_root(tmp_path):
    raw, splits = write_fake_dataset(tmp_path, "FashionMNIST", n_train=30, n_test=20)
    return tmp_path, raw, splits


@pytest.fixture()
def no_system_files(monkeypatch, tmp_path):
    """No ./data and no Debian folder: only what a test writes is found."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mnist, "debian_folder", lambda: None)


def padded_rgb(raw: np.ndarray) -> torch.Tensor:
    """The documented view, built independently: zero-pad 2 px with torch, then repeat grey to 3 channels."""
    grey = F.pad(torch.from_numpy(raw.astype(np.float32)) / 255, (2, 2, 2, 2))
    return grey.unsqueeze(0).repeat(3, 1, 1)


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("split", ["train", "test"])
def test_items_are_the_written_images_padded_to_32_and_repeated_to_rgb(fake_root, split):
    root, _, splits = fake_root
    images, labels = splits[split]
    data = load_dataset("fashion-mnist", split, root=root, verify_checksums=False)
    assert len(data) == len(labels)
    for i in (0, 7, len(labels) - 1):
        image, label = data[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and image.is_contiguous()
        assert torch.equal(image, padded_rgb(images[i])) and label == int(labels[i])
    assert data.uint8_hwc().shape == (len(labels), 32, 32, 3)
    np.testing.assert_array_equal(data.uint8_hwc(3)[:, 2:30, 2:30, 1], images[:3])


def test_torchvision_reads_the_same_images_and_labels(fake_root):
    # torchvision's own IDX reader (unpacked files in its layout) is the reference.
    root, raw, splits = fake_root
    for split in ("train", "test"):
        for name in NAMES[split]:
            (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
    reference = torchvision.datasets.FashionMNIST(str(root), train=False)
    ours = load_dataset("fashion-mnist", "test", root=root, verify_checksums=False)
    np.testing.assert_array_equal(ours.pixels[:, 2:30, 2:30], reference.data.numpy())
    np.testing.assert_array_equal(ours.targets, reference.targets.numpy())
    assert not ours.pixels[:, :2].any() and not ours.pixels[:, :, -2:].any()  # the black frame


@pytest.mark.parametrize("layout", ["torchvision raw", "class folder", "plain folder", "unpacked"])
def test_every_documented_layout_is_found(tmp_path, layout):
    images, labels = fake_split(12, seed=4)
    folder = {"torchvision raw": tmp_path / "FashionMNIST" / "raw", "class folder": tmp_path / "FashionMNIST"}.get(
        layout, tmp_path
    )
    write_split(folder, "test", images, labels, gz=layout != "unpacked")
    data = load_dataset("fashion-mnist", "test", root=tmp_path, verify_checksums=False)
    assert torch.equal(data[5][0], padded_rgb(images[5])) and data[5][1] == labels[5]


def test_train_transform_is_a_shift_and_flip_of_the_image(fake_root):
    root, _, splits = fake_root
    plain = padded_rgb(splits["train"][0][0])
    framed = F.pad(plain, (4, 4, 4, 4))
    candidates = [framed[:, y : y + 32, x : x + 32] for y, x in itertools.product(range(9), range(9))]
    candidates += [c.flip(-1) for c in candidates]  # brute force: every crop of the padded image, flipped or not
    data = load_dataset("fashion-mnist", "train", root=root, train_transform=True, verify_checksums=False)
    torch.manual_seed(0)
    draws = [data[0][0] for _ in range(12)]
    assert all(any(torch.equal(d, c) for c in candidates) for d in draws)
    assert any(not torch.equal(d, plain) for d in draws)


def test_dataset_info_and_the_padded_statistics():
    for name in ("fashion-mnist", "mnist"):
        info = dataset_info(name)
        assert (info.num_classes, info.image_size, info.stem) == (10, 32, "cifar")
        assert len(set(info.mean)) == len(set(info.std)) == 1 and len(info.mean) == 3
    # MNIST: the 28x28 (0.1307, 0.3081) carried to 32x32 by brute force on a synthetic image set with those moments.
    rng = np.random.default_rng(0)
    x = rng.normal(0.1307, 0.3081, size=(4000, 28, 28))
    x = (x - x.mean()) / x.std() * 0.3081 + 0.1307
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    info = dataset_info("mnist")
    assert info.mean[0] == pytest.approx(padded.mean(), abs=1e-9)
    assert info.std[0] == pytest.approx(padded.std(), abs=1e-9)


# ---------------------------------------------------------------- bad files


def _bad(kind: str, images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    """(image file bytes, label file bytes), unpacked, broken as `kind` says."""
    good_images, good_labels = idx_images(images), idx_labels(labels)
    return {
        "truncated images": (good_images[:-100], good_labels),
        "trailing bytes": (good_images + b"\0" * 784, good_labels),
        "header only": (good_images[:6], good_labels),
        "labels as images": (good_labels, good_labels),
        "wrong magic": (idx_images(images, magic=2050), good_labels),
        "count disagrees": (good_images, idx_labels(labels[:-1])),
        "header count": (idx_images(images, count=len(images) + 1), good_labels),
        "27x27 images": (idx_images(images[:, :27, :27]), good_labels),
        "label 10": (good_images, idx_labels(np.where(np.arange(len(labels)) == 3, 10, labels))),
    }[kind]


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("truncated images", ["is truncated", "header promises 20 items"]),
        ("trailing bytes", ["has trailing bytes"]),
        ("header only", ["too few for an IDX header"]),
        ("labels as images", ["magic number 2049 (a label file), not 2051 (an image file)"]),
        ("wrong magic", ["magic number 2050, not 2051"]),
        ("count disagrees", ["hold 20 images but 19 labels"]),
        ("header count", ["is truncated", "promises 21 items"]),
        ("27x27 images", ["27x27 images, not 28x28"]),
        ("label 10", ["class ids up to 10, outside 0..9"]),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_malformed_files_are_refused_in_one_sentence(tmp_path, kind, fragments, gz):
    images, labels = fake_split(20, seed=2)
    image_bytes, label_bytes = _bad(kind, images, labels)
    names = NAMES["test"]
    for name, data in zip(names, (image_bytes, label_bytes)):
        path = tmp_path / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("fashion-mnist", "test", root=tmp_path, verify_checksums=False)
    one_sentence(exc_info, *fragments)


def test_a_cut_gzip_file_is_refused(tmp_path):
    images, labels = fake_split(20, seed=2)
    write_split(tmp_path, "test", images, labels)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("fashion-mnist", "test", root=tmp_path, verify_checksums=False)
    one_sentence(exc_info, "not a complete gzip file", str(path))


def test_checked_loading_wants_the_published_counts_and_md5s(fake_root, monkeypatch):
    root, raw, _ = fake_root
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("fashion-mnist", "test", root=root)
    one_sentence(exc_info, "holds 20 items, not the published 10000", "--no-verify-checksums")
    # With the counts of these files published, the MD5 check is what refuses them.
    variant = mnist.VARIANTS["fashion-mnist"]
    monkeypatch.setitem(variant.counts, "test", 20)
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("fashion-mnist", "test", root=root)
    one_sentence(exc_info, "has MD5", f"not the published {variant.md5['t10k-images-idx3-ubyte']}")


def _publish_fake_files_as_fashion_mnist(monkeypatch, raw):
    """Make the written test files the 'published' Fashion-MNIST ones: their counts and content MD5s."""
    variant = mnist.VARIANTS["fashion-mnist"]
    monkeypatch.setitem(variant.counts, "test", 20)
    for name in NAMES["test"]:
        md5 = hashlib.md5(gzip.decompress((raw / f"{name}.gz").read_bytes())).hexdigest()
        monkeypatch.setitem(variant.md5, name, md5)
    monkeypatch.setattr(mnist, "_KNOWN_FILES", {m: (v.title, n) for v in mnist.VARIANTS.values() for n, m in v.md5.items()})
    monkeypatch.setitem(mnist.VARIANTS["mnist"].counts, "test", 20)


def test_a_fashion_mnist_folder_given_as_mnist_is_named_as_such(fake_root, monkeypatch, capsys):
    root, raw, _ = fake_root
    _publish_fake_files_as_fashion_mnist(monkeypatch, raw)
    assert len(load_dataset("fashion-mnist", "test", root=raw)) == 20  # verified
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("mnist", "test", root=raw)
    one_sentence(exc_info, "is Fashion-MNIST's t10k-images-idx3-ubyte", "not MNIST's", "--dataset fashion-mnist")
    # Through the CLI: one error line, exit 2, nothing written.
    out = root / "mnist-c"
    code, stdout, err = run_main(capsys, "corrupt", "--dataset", "mnist", "--data-root", raw, "--out", out)
    assert_user_error(code, stdout, err, "Fashion-MNIST's", "not MNIST's")
    assert sorted(p.name for p in root.iterdir()) == ["FashionMNIST"]


def test_missing_files_name_both_ways_to_get_them(tmp_path, no_system_files):
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("fashion-mnist", "test")
    one_sentence(exc_info, "apt-get install dataset-fashion-mnist", "--download", "data/FashionMNIST/raw")
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("mnist", "test", root=tmp_path / "elsewhere")
    one_sentence(exc_info, "--download", "elsewhere/MNIST/raw")
    assert "apt-get" not in str(exc_info.value)  # Debian has no MNIST package


def test_no_root_searches_data_then_debian(tmp_path, no_system_files, monkeypatch):
    images, labels = fake_split(10, seed=5)
    system = write_split(tmp_path / "usr-share", "test", images, labels)
    monkeypatch.setattr(mnist, "debian_folder", lambda: system)
    assert torch.equal(load_dataset("fashion-mnist", "test", verify_checksums=False)[0][0], padded_rgb(images[0]))
    local, _ = fake_split(10, seed=6)
    write_split(tmp_path / "data" / "FashionMNIST" / "raw", "test", local, labels)  # ./data comes first
    assert torch.equal(load_dataset("fashion-mnist", "test", verify_checksums=False)[0][0], padded_rgb(local[0]))
    with pytest.raises(RobustCSCError, match="not found"):
        load_dataset("mnist", "test", verify_checksums=False)  # the Debian folder is Fashion-MNIST's only


@pytest.fixture()
def http_mirror(tmp_path):
    """An HTTP server on localhost serving a folder: torchvision's download runs as it does online."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_goes_through_torchvision(tmp_path, monkeypatch, http_mirror):
    # torchvision's own download code fetches the files, checks their .gz MD5s and unpacks them.
    folder, url = http_mirror
    _, splits = write_fake_dataset(folder, "x", n_train=10, n_test=10)
    files = folder / "x" / "raw"
    resources = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(files.iterdir())]
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url + "x/raw/"])
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    root = tmp_path / "root"
    data = load_dataset("fashion-mnist", "test", root=root, download=True, verify_checksums=False)
    assert (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
    assert torch.equal(data[3][0], padded_rgb(splits["test"][0][3]))

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url + "nowhere/"])
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("fashion-mnist", "test", root=tmp_path / "other", download=True)
    one_sentence(exc_info, "could not download Fashion-MNIST", "apt-get install dataset-fashion-mnist")


# ---------------------------------------------------------------- Debian's real files


@needs_debian
def test_debian_package_holds_the_published_fashion_mnist():
    train = load_dataset("fashion-mnist", "train", root=DEBIAN)  # counts, magic numbers, shapes and MD5s checked
    test = load_dataset("fashion-mnist", "test", root=DEBIAN)
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.targets).tolist() == [6000] * 10 and np.bincount(test.targets).tolist() == [1000] * 10
    for split in ("train", "test"):
        for name in NAMES[split]:
            content = gzip.decompress((DEBIAN / f"{name}.gz").read_bytes())
            assert hashlib.md5(content).hexdigest() == mnist.VARIANTS["fashion-mnist"].md5[name]
    assert test.pixels.shape == (10000, 32, 32)
    mean, std = dataset_info("fashion-mnist").mean[0], dataset_info("fashion-mnist").std[0]
    counts = np.bincount(train.pixels.ravel(), minlength=256)  # the moments from the histogram of byte values
    levels = np.arange(256) / 255
    true_mean = (counts * levels).sum() / counts.sum()
    true_std = np.sqrt((counts * (levels - true_mean) ** 2).sum() / counts.sum())
    assert mean == pytest.approx(true_mean, abs=1e-5) and std == pytest.approx(true_std, abs=1e-5)


@needs_debian
def test_debian_files_agree_with_torchvision_and_published_archives(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    published = dict(torchvision.datasets.FashionMNIST.resources)
    for name in NAMES["test"]:
        packed = (DEBIAN / f"{name}.gz").read_bytes()
        (raw / name).write_bytes(gzip.decompress(packed))
        # Debian's .gz differs from the published one only in its header: the deflate data is the same.
        assert hashlib.md5(packed).hexdigest() != published[f"{name}.gz"] and packed[:2] == b"\x1f\x8b"
    images = read_image_file(str(raw / "t10k-images-idx3-ubyte")).numpy()
    labels = read_label_file(str(raw / "t10k-labels-idx1-ubyte")).numpy()
    ours = load_dataset("fashion-mnist", "test", root=DEBIAN)
    np.testing.assert_array_equal(ours.pixels[:, 2:30, 2:30], images)
    np.testing.assert_array_equal(ours.targets, labels)


@needs_debian
def test_debian_fashion_mnist_given_as_mnist_is_refused_by_checksum(tmp_path, capsys):
    with pytest.raises(RobustCSCError) as exc_info:
        load_dataset("mnist", "test", root=DEBIAN)
    one_sentence(exc_info, "Fashion-MNIST's t10k-images-idx3-ubyte", "not MNIST's")
    code, out, err = run_main(capsys, "corrupt", "--dataset", "mnist", "--data-root", DEBIAN, "--out", tmp_path / "x")
    assert_user_error(code, out, err, "Fashion-MNIST's", "--dataset fashion-mnist")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- training


def test_train_verb_uses_the_fashion_mnist_recipe_and_normalisation(capsys, fake_root, one_thread):
    from robust_csc.models.checkpoints import read_metadata
    from robust_csc.training import CIFAR_RECIPE, recipe_for

    recipe = recipe_for("fashion-mnist")
    assert recipe.augment and (recipe.lr, recipe.batch_size, recipe.schedule) == (
        CIFAR_RECIPE.lr, CIFAR_RECIPE.batch_size, CIFAR_RECIPE.schedule)
    assert recipe.epochs < CIFAR_RECIPE.epochs and not recipe_for("mnist").augment
    root, _, _ = fake_root
    out = root / "run"
    code, stdout, err = run_main(capsys, "train", "--arch", "sdnet18", "--dataset", "fashion-mnist", "--width", 4,
                                 "--epochs", 1, "--batch-size", 8, "--data-root", root, "--no-verify-checksums",
                                 "--out", out, "--no-progress")
    assert code == 0, err
    assert stdout.splitlines()[-1].startswith(f"done {out / 'model.safetensors'} test_acc ")
    meta = read_metadata(out / "model.safetensors")
    info = dataset_info("fashion-mnist")
    assert meta["dataset"] == "fashion-mnist" and meta["num_classes"] == 10
    assert tuple(meta["arguments"]["mean"]) == info.mean and tuple(meta["arguments"]["std"]) == info.std
    # Without the flag the hand-made files are refused by their counts, in one line.
    code, stdout, err = run_main(capsys, "train", "--arch", "sdnet18", "--dataset", "fashion-mnist", "--width", 4,
                                 "--epochs", 1, "--data-root", root, "--out", root / "run2")
    assert_user_error(code, stdout, err, "not the published 60000", "--no-verify-checksums")
