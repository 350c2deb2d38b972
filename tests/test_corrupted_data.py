"""Corruption benchmark loaders; every suite is written here in its published layout, only smaller.

CIFAR-C files are uint8 (5 * N, 32, 32, 3), severity-major, with labels.npy
repeating the N test labels 5 times; the published N is 10000, the tests use
N = PER_SEVERITY through the loader's images_per_severity argument.
"""

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import robust_csc.data.corrupted as corrupted
from robust_csc.data.corrupted import (
    ALL_CORRUPTIONS,
    COMMON_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    CorruptionCell,
    cifar_c_url,
    load_cifar_c,
    load_imagenet_c,
    write_cifar_c,
)
from robust_csc.errors import RobustCSCError

PER_SEVERITY = 20


def assert_one_sentence(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message and ". " not in message, message
    for fragment in fragments:
        assert fragment in message, message


def pattern(corruption: str, n: int) -> np.ndarray:
    """Distinct pixels per (corruption, severity, index): pixel (0, 0) holds them, the rest is seeded noise."""
    k = ALL_CORRUPTIONS.index(corruption)
    rng = np.random.default_rng(1000 + k)
    images = rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8)
    for s in SEVERITIES:
        for i in range(n):
            images[(s - 1) * n + i, 0, 0] = (k, s, i)
    return images


def make_labels(n: int, num_classes: int) -> np.ndarray:
    return ((np.arange(n) * 7 + 3) % num_classes).astype(np.uint8)




def write_published(folder: Path, n: int = PER_SEVERITY, num_classes: int = 10, corruptions=ALL_CORRUPTIONS):
    """The published layout written directly with np.save (independent of write_cifar_c)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for c in corruptions:
        images[c] = pattern(c, n)
        np.save(folder / f"{c}.npy", images[c])
    labels = make_labels(n, num_classes)
    np.save(folder / "labels.npy", np.tile(labels, 5))
    return images, labels


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def expected_image(images: np.ndarray, n: int, severity: int, i: int) -> torch.Tensor:
    return torch.from_numpy(images[(severity - 1) * n + i].copy()).permute(2, 0, 1).float().div(255)


@pytest.fixture(scope="module")
def cifar10c(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10c")
    images, labels = write_published(root / "CIFAR-10-C")
    return root, images, labels


# ---------------------------------------------------------------- names


def test_corruption_names_and_urls():
    assert len(COMMON_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4 and len(set(ALL_CORRUPTIONS)) == 19
    assert COMMON_CORRUPTIONS[0] == "gaussian_noise" and COMMON_CORRUPTIONS[-1] == "jpeg_compression"
    assert COMMON_CORRUPTIONS.index("frost") < COMMON_CORRUPTIONS.index("fog")
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert cifar_c_url("cifar10-c") == "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
    assert cifar_c_url("cifar100-c") == "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1"


# ---------------------------------------------------------------- CIFAR-10-C reading


def test_all_19_load_exactly(cifar10c):
    root, images, labels = cifar10c
    suite = load_cifar_c(root, "cifar10-c", images_per_severity=PER_SEVERITY)
    assert suite.name == "cifar10-c" and suite.num_classes == 10 and suite.images_per_cell == PER_SEVERITY
    assert suite.corruptions == ALL_CORRUPTIONS and suite.severities == SEVERITIES
    cells = suite.cells()
    assert len(cells) == 95 == len(suite)
    assert cells[:6] == [CorruptionCell("gaussian_noise", s) for s in SEVERITIES] + [CorruptionCell("shot_noise", 1)]
    assert cells[-1] == CorruptionCell("saturate", 5)
    for cell in cells:
        ds = suite.dataset(cell.corruption, cell.severity)
        assert len(ds) == PER_SEVERITY
        k = ALL_CORRUPTIONS.index(cell.corruption)
        for i in (0, 7, PER_SEVERITY - 1):
            image, label, index = ds[i]
            assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
            assert torch.equal(image, expected_image(images[cell.corruption], PER_SEVERITY, cell.severity, i))
            # pixel (0, 0) encodes (corruption, severity, index): the severity blocks line up
            assert torch.equal((image[:, 0, 0] * 255).round().long(), torch.tensor([k, cell.severity, i]))
            assert label == int(labels[i]) and type(label) is int
            assert index == i and type(index) is int
    with pytest.raises(IndexError):
        ds[PER_SEVERITY]


def test_whole_cell_through_a_dataloader(cifar10c):
    root, images, labels = cifar10c
    suite = load_cifar_c(root / "CIFAR-10-C", images_per_severity=PER_SEVERITY)  # the folder itself as root
    ds = suite.dataset("fog", 4)
    batches = list(DataLoader(ds, batch_size=8))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    idx = torch.cat([b[2] for b in batches])
    block = torch.from_numpy(images["fog"][3 * PER_SEVERITY : 4 * PER_SEVERITY]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(x, block)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(idx, torch.arange(PER_SEVERITY))


def test_cells_are_memory_mapped_and_pickle_small(cifar10c):
    root, images, _ = cifar10c
    ds = load_cifar_c(root, images_per_severity=PER_SEVERITY).dataset("snow", 2)
    ds[0]
    assert isinstance(ds._images(), np.memmap)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < images["snow"].nbytes // 4  # the array is not pickled
    assert torch.equal(clone[3][0], ds[3][0])


def test_selection_of_corruptions_severities_and_examples(cifar10c):
    root, images, labels = cifar10c
    suite = load_cifar_c(
        root, corruptions=["fog", "saturate", "gaussian_noise", "fog"], severities=[5, 2], n_examples=6,
        images_per_severity=PER_SEVERITY,
    )
    assert suite.corruptions == ("gaussian_noise", "fog", "saturate")  # Hendrycks' order, extras last
    assert suite.severities == (2, 5)
    assert [(c.corruption, c.severity) for c in suite.cells()] == [
        ("gaussian_noise", 2), ("gaussian_noise", 5), ("fog", 2), ("fog", 5), ("saturate", 2), ("saturate", 5)
    ]
    assert suite.images_per_cell == 6
    ds = suite.dataset("saturate", 5)
    assert len(ds) == 6
    for i in range(6):
        image, label, index = ds[i]
        assert torch.equal(image, expected_image(images["saturate"], PER_SEVERITY, 5, i))
        assert (label, index) == (int(labels[i]), i)
    single = load_cifar_c(root, corruptions="contrast", severities=3, images_per_severity=PER_SEVERITY)
    assert single.corruptions == ("contrast",) and single.severities == (3,)
    with pytest.raises(RobustCSCError) as err:
        suite.dataset("snow", 2)
    assert_one_sentence(err, "snow")
    with pytest.raises(RobustCSCError) as err:
        suite.dataset("fog", 3)
    assert_one_sentence(err, "severity 3")


def test_none_selects_the_corruption_files_present(tmp_path):
    write_published(tmp_path / "CIFAR-10-C", corruptions=("saturate", "snow", "gaussian_noise"))
    suite = load_cifar_c(tmp_path, images_per_severity=PER_SEVERITY)
    assert suite.corruptions == ("gaussian_noise", "snow", "saturate")


# ---------------------------------------------------------------- bad inputs


def _bad_dtype(folder):
    np.save(folder / "fog.npy", pattern("fog", PER_SEVERITY).astype(np.float32))


def _bad_shape(folder):
    np.save(folder / "fog.npy", pattern("fog", PER_SEVERITY)[: 4 * PER_SEVERITY])


def _bad_channels(folder):
    np.save(folder / "fog.npy", pattern("fog", PER_SEVERITY)[..., :1])


def _not_npy(folder):
    (folder / "fog.npy").write_bytes(b"this is not a numpy file at all")


def _truncated(folder):
    data = (folder / "fog.npy").read_bytes()
    (folder / "fog.npy").write_bytes(data[: len(data) // 2])


def _labels_shape(folder):
    np.save(folder / "labels.npy", np.tile(make_labels(PER_SEVERITY, 10), 4))


def _labels_dtype(folder):
    np.save(folder / "labels.npy", np.tile(make_labels(PER_SEVERITY, 10), 5).astype(np.float32))


def _labels_range(folder):
    labels = np.tile(make_labels(PER_SEVERITY, 10), 5)
    labels[::PER_SEVERITY] = 10
    np.save(folder / "labels.npy", labels)


def _labels_blocks(folder):
    labels = np.tile(make_labels(PER_SEVERITY, 10), 5)
    labels[2 * PER_SEVERITY + 4] = (labels[4] + 1) % 10  # severity 3 disagrees
    np.save(folder / "labels.npy", labels)


def _labels_missing(folder):
    (folder / "labels.npy").unlink()


def _files_missing(folder):
    (folder / "fog.npy").unlink()
    (folder / "snow.npy").unlink()


BAD_FOLDERS = {
    "dtype": (_bad_dtype, {}, ("fog.npy", "float32", "uint8")),
    "shape": (_bad_shape, {}, ("fog.npy", "shape", "(100, 32, 32, 3)")),
    "channels": (_bad_channels, {}, ("fog.npy", "shape")),
    "not npy": (_not_npy, {}, ("fog.npy", "not a readable .npy")),
    "truncated": (_truncated, {}, ("fog.npy", "not a readable .npy")),
    "labels shape": (_labels_shape, {}, ("labels.npy", "shape", "(100,)")),
    "labels dtype": (_labels_dtype, {}, ("labels.npy", "float32")),
    "labels range": (_labels_range, {}, ("labels.npy", "0..9")),
    "labels blocks": (_labels_blocks, {}, ("labels.npy", "5 severity blocks")),
    "labels missing": (_labels_missing, {}, ("labels.npy",)),
    "files missing": (_files_missing, {}, ("fog.npy", "snow.npy", "CIFAR-10-C.tar")),
    "severity 0": (None, {"severities": [1, 0]}, ("severity 0", "1..5")),
    "severity 6": (None, {"severities": 6}, ("severity 6", "1..5")),
    "severity numpy": (None, {"severities": np.array([2, 7])}, ("severity 7 ", "1..5")),
    "unknown corruption": (None, {"corruptions": ["fog", "gaussian_noize"]}, ("'gaussian_noize'", "gaussian_noise")),
    "no corruption": (None, {"corruptions": []}, ("no corruption",)),
    "n_examples 0": (None, {"n_examples": 0}, ("n_examples 0", "1..20")),
    "n_examples too many": (None, {"n_examples": PER_SEVERITY + 1}, ("n_examples 21",)),
    "unknown name": (None, {"name": "cifar10"}, ("'cifar10'", "cifar10-c")),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_inputs_raise_one_sentence_and_touch_nothing(tmp_path, case):
    damage, kwargs, fragments = BAD_FOLDERS[case]
    folder = tmp_path / "CIFAR-10-C"
    write_published(folder, corruptions=("gaussian_noise", "snow", "fog"))
    if damage is not None:
        damage(folder)
    before = snapshot(folder)
    kwargs = {"corruptions": ["gaussian_noise", "snow", "fog"], "images_per_severity": PER_SEVERITY, **kwargs}
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(tmp_path, **kwargs)
    assert_one_sentence(err, *fragments)
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CIFAR-10-C"]


def test_missing_folder_names_download_and_archive(tmp_path):
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(tmp_path / "data", "cifar100-c")
    assert_one_sentence(err, "CIFAR-100-C", "--download", "CIFAR-100-C.tar")
    assert not (tmp_path / "data").exists()
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(tmp_path / "data" / "CIFAR-10-C")
    assert_one_sentence(err, f"folder {tmp_path / 'data' / 'CIFAR-10-C'} not found")


def test_folder_without_corruption_files(tmp_path):
    (tmp_path / "CIFAR-10-C").mkdir()
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(tmp_path, images_per_severity=PER_SEVERITY)
    assert_one_sentence(err, "no corruption .npy files")


def test_published_size_is_the_default(tmp_path):
    """Small files are refused unless the caller says how many images a severity block has."""
    write_published(tmp_path / "CIFAR-10-C", corruptions=("fog",))
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(tmp_path)
    assert_one_sentence(err, "(50000,)")


# ---------------------------------------------------------------- CIFAR-100-C


def test_cifar100c_label_range(tmp_path):
    folder = tmp_path / "CIFAR-100-C"
    n = 120
    images, labels = write_published(folder, n=n, num_classes=100, corruptions=("gaussian_noise", "frost"))
    assert labels.max() == 99
    suite = load_cifar_c(tmp_path, "cifar100-c", images_per_severity=n)
    assert suite.name == "cifar100-c" and suite.num_classes == 100
    ds = suite.dataset("frost", 5)
    assert [ds[i][1] for i in range(n)] == labels.astype(int).tolist()
    assert torch.equal(ds[n - 1][0], expected_image(images["frost"], n, 5, n - 1))
    with pytest.raises(RobustCSCError) as err:  # CIFAR-100 labels are no CIFAR-10 labels
        load_cifar_c(folder, "cifar10-c", images_per_severity=n)
    assert_one_sentence(err, "0..9", "CIFAR-10-C")


# ---------------------------------------------------------------- writing


def test_write_cifar_c_round_trip(tmp_path):
    n = 6
    images = {c: pattern(c, n) for c in ("spatter", "gaussian_noise", "pixelate")}
    labels = np.array([3, 0, 99, 42, 7, 7], dtype=np.uint8)
    out = write_cifar_c(tmp_path / "out" / "CIFAR-100-C", "cifar100-c", images, labels)
    assert out == tmp_path / "out" / "CIFAR-100-C"
    assert sorted(p.name for p in out.iterdir()) == ["gaussian_noise.npy", "labels.npy", "pixelate.npy", "spatter.npy"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["CIFAR-100-C"]  # no temporary folder left
    stored = np.load(out / "labels.npy")
    assert stored.dtype == np.uint8 and stored.shape == (5 * n,) and np.array_equal(stored, np.tile(labels, 5))
    for c, array in images.items():
        on_disk = np.load(out / f"{c}.npy")
        assert on_disk.dtype == np.uint8 and np.array_equal(on_disk, array)
    suite = load_cifar_c(out, "cifar100-c", images_per_severity=n)
    assert suite.corruptions == ("gaussian_noise", "pixelate", "spatter")
    for cell in suite.cells():
        ds = suite.dataset(cell.corruption, cell.severity)
        for i in range(n):
            image, label, index = ds[i]
            assert torch.equal(image, expected_image(images[cell.corruption], n, cell.severity, i))
            assert (label, index) == (int(labels[i]), i)


def test_write_cifar_c_refuses_to_overwrite(tmp_path):
    n = 4
    first = {"fog": pattern("fog", n)}
    folder = write_cifar_c(tmp_path / "suite", "cifar10-c", first, np.arange(n, dtype=np.uint8))
    before = snapshot(folder)
    second = {"snow": pattern("snow", n)}
    with pytest.raises(RobustCSCError) as err:
        write_cifar_c(folder, "cifar10-c", second, np.zeros(n, dtype=np.uint8))
    assert_one_sentence(err, str(folder), "--force")
    assert snapshot(folder) == before
    write_cifar_c(folder, "cifar10-c", second, np.zeros(n, dtype=np.uint8), overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["labels.npy", "snow.npy"]
    assert np.array_equal(np.load(folder / "snow.npy"), second["snow"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_cifar_c(empty, "cifar10-c", first, np.arange(n, dtype=np.uint8))  # an empty folder is fine
    assert (empty / "fog.npy").is_file()


def test_interrupted_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    n = 4
    images = {"fog": pattern("fog", n), "snow": pattern("snow", n)}
    labels = np.arange(n, dtype=np.uint8)
    old = write_cifar_c(tmp_path / "suite", "cifar10-c", {"frost": pattern("frost", n)}, labels)
    before = snapshot(old)
    real_save, calls = corrupted._save_npy, []

    def interrupted(path, array):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(corrupted, "_save_npy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_cifar_c(tmp_path / "new", "cifar10-c", images, labels)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_cifar_c(old, "cifar10-c", images, labels, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite"]  # no "new", no temporary folders
    assert snapshot(old) == before


def test_write_cifar_c_checks_its_arguments(tmp_path):
    n = 4
    with pytest.raises(ValueError):
        write_cifar_c(tmp_path / "a", "cifar10-c", {"fog": pattern("fog", n)[:-1]}, np.zeros(n, np.uint8))
    with pytest.raises(ValueError):
        write_cifar_c(tmp_path / "a", "cifar10-c", {"fog": pattern("fog", n)}, np.full(n, 10, np.uint8))
    with pytest.raises(ValueError):
        write_cifar_c(tmp_path / "a", "cifar10-c", {"fgo": pattern("fog", n)}, np.zeros(n, np.uint8))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- download (offline, file:// URLs)


def make_archive(tmp_path: Path, n: int, damage=None) -> tuple[Path, str, dict, np.ndarray]:
    staging = tmp_path / "staging"
    images, labels = write_published(staging / "CIFAR-10-C", n=n)
    if damage is not None:
        damage(staging / "CIFAR-10-C")
    archive = tmp_path / "served" / "CIFAR-10-C.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(staging / "CIFAR-10-C", arcname="CIFAR-10-C")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), images, labels


def test_download_offline_success(tmp_path, monkeypatch):
    n = 3
    archive, md5, images, labels = make_archive(tmp_path, n)
    urls = []
    monkeypatch.setattr(corrupted, "cifar_c_url", lambda name: urls.append(name) or archive.as_uri())
    root = tmp_path / "data"
    suite = load_cifar_c(root, "cifar10-c", download=True, md5=md5, images_per_severity=n)
    assert urls == ["cifar10-c"]
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-10-C"]  # archive and temporary folder removed
    assert sorted(p.name for p in (root / "CIFAR-10-C").iterdir()) == sorted(
        [f"{c}.npy" for c in ALL_CORRUPTIONS] + ["labels.npy"]
    )
    assert suite.corruptions == ALL_CORRUPTIONS
    image, label, index = suite.dataset("zoom_blur", 3)[2]
    assert torch.equal(image, expected_image(images["zoom_blur"], n, 3, 2)) and (label, index) == (int(labels[2]), 2)
    # root may name the folder itself
    direct = load_cifar_c(tmp_path / "other" / "CIFAR-10-C", download=True, md5=md5, images_per_severity=n)
    assert direct.corruptions == ALL_CORRUPTIONS and urls == ["cifar10-c"] * 2
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["CIFAR-10-C"]
    # a second call finds the folder and downloads nothing
    load_cifar_c(root, "cifar10-c", download=True, md5="0" * 32, images_per_severity=n)
    assert urls == ["cifar10-c"] * 2


def test_download_checksum_mismatch_leaves_no_folder(tmp_path, monkeypatch):
    n = 3
    archive, _, _, _ = make_archive(tmp_path, n)
    monkeypatch.setattr(corrupted, "cifar_c_url", lambda name: archive.as_uri())
    root = tmp_path / "data"
    with pytest.raises(RobustCSCError) as err:  # the published MD5 cannot match the test archive
        load_cifar_c(root, "cifar10-c", download=True, images_per_severity=n)
    assert_one_sentence(err, "MD5", "56bf5dcef84df0e2308c6dcbcbbd8499")
    assert list(root.iterdir()) == []
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(root, "cifar10-c", download=True, md5="f" * 32, images_per_severity=n)
    assert_one_sentence(err, "MD5")
    assert list(root.iterdir()) == []


def test_download_of_bad_files_leaves_no_folder(tmp_path, monkeypatch):
    n = 3
    archive, md5, _, _ = make_archive(tmp_path, n, damage=_bad_dtype_n3)
    monkeypatch.setattr(corrupted, "cifar_c_url", lambda name: archive.as_uri())
    root = tmp_path / "data"
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(root, "cifar10-c", download=True, md5=md5, images_per_severity=n)
    assert_one_sentence(err, "fog.npy", "uint8")
    assert list(root.iterdir()) == []


def _bad_dtype_n3(folder):
    np.save(folder / "fog.npy", pattern("fog", 3).astype(np.int16))


def test_download_unreachable(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "CIFAR-10-C.tar"
    monkeypatch.setattr(corrupted, "cifar_c_url", lambda name: missing.as_uri())
    root = tmp_path / "data"
    with pytest.raises(RobustCSCError) as err:
        load_cifar_c(root, "cifar10-c", download=True, images_per_severity=3)
    assert_one_sentence(err, "could not download", "CIFAR-10-C.tar")
    assert list(root.iterdir()) == []


# ---------------------------------------------------------------- ImageNet-C

WNIDS = ("n01440764", "n01443537")
FILES = ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000007.JPEG", "ILSVRC2012_val_00000023.JPEG")


def colour(corruption: str, severity: int, wnid: int, file: int) -> tuple[int, int, int]:
    return (40 + 60 * wnid + 20 * file, 30 + 100 * ALL_CORRUPTIONS.index(corruption) // 10, 40 * severity)


def write_imagenet_c(root: Path, corruptions=("fog", "gaussian_noise"), severities=(1, 2), size=(224, 224)):
    for c in corruptions:
        for s in severities:
            for w, wnid in enumerate(WNIDS):
                folder = root / c / str(s) / wnid
                folder.mkdir(parents=True)
                for f, name in enumerate(FILES):
                    Image.new("RGB", size, colour(c, s, w, f)).save(folder / name, quality=95)


@pytest.fixture(scope="module")
def imagenet_c(tmp_path_factory):
    root = tmp_path_factory.mktemp("inc") / "ImageNet-C"
    write_imagenet_c(root)
    (root / "README").mkdir()  # not a corruption: ignored
    return root


def test_imagenet_c_loads_classes_and_pixels(imagenet_c):
    suite = load_imagenet_c(imagenet_c.parent, severities=[1, 2])  # parent holding ImageNet-C/ works too
    assert suite.name == "imagenet-c" and suite.num_classes == 2
    assert suite.corruptions == ("gaussian_noise", "fog") and suite.severities == (1, 2)
    assert suite.cells() == [CorruptionCell(c, s) for c in ("gaussian_noise", "fog") for s in (1, 2)]
    assert suite.images_per_cell == 6
    for cell in suite.cells():
        ds = suite.dataset(cell.corruption, cell.severity)
        assert len(ds) == 6
        for i in range(6):
            image, label, index = ds[i]
            assert image.shape == (3, 224, 224) and image.dtype == torch.float32
            assert index == i and label == i // 3 and type(label) is int
            want = torch.tensor(colour(cell.corruption, cell.severity, i // 3, i % 3), dtype=torch.float32) / 255
            assert torch.allclose(image.mean(dim=(1, 2)), want, atol=3 / 255)


def test_imagenet_c_subset_is_fixed(imagenet_c):
    def chosen(seed, **kwargs):
        suite = load_imagenet_c(imagenet_c, severities=[1, 2], subset=4, seed=seed, **kwargs)
        return {
            (cell.corruption, cell.severity): [item[1:] for item in suite.dataset(cell.corruption, cell.severity)]
            for cell in suite.cells()
        }

    first = chosen(0)
    picks = list(first.values())
    assert all(p == picks[0] for p in picks) and len(picks[0]) == 4  # same (label, index) in every cell
    assert len({index for _, index in picks[0]}) == 4
    assert chosen(0) == first  # same on every call
    assert chosen(0, corruptions=["fog"])[("fog", 2)] == picks[0]  # and whatever else is selected
    assert any(chosen(seed)[("fog", 1)] != picks[0] for seed in range(1, 6))
    with pytest.raises(RobustCSCError) as err:
        load_imagenet_c(imagenet_c, severities=[1], subset=7)
    assert_one_sentence(err, "subset 7", "1..6")


def test_imagenet_c_resizes_uncropped_images(tmp_path):
    write_imagenet_c(tmp_path, corruptions=("snow",), severities=(3,), size=(300, 260))
    image, label, index = load_imagenet_c(tmp_path, severities=3).dataset("snow", 3)[4]
    assert image.shape == (3, 224, 224) and (label, index) == (1, 4)


def _drop_severity(root):
    for p in (root / "fog" / "2").rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted((root / "fog" / "2").rglob("*"), reverse=True):
        p.rmdir()
    (root / "fog" / "2").rmdir()


def _empty_cell(root):
    for p in (root / "fog" / "2").rglob("*.JPEG"):
        p.unlink()


def _empty_class(root):
    for p in (root / "fog" / "2" / WNIDS[1]).glob("*.JPEG"):
        p.unlink()


def _other_wnid(root):
    (root / "fog" / "2" / WNIDS[1]).rename(root / "fog" / "2" / "n99999999")


def _missing_file(root):
    (root / "fog" / "1" / WNIDS[0] / FILES[1]).unlink()


BAD_TREES = {
    "missing severity": (_drop_severity, {}, ("fog/2",)),
    "all severities by default": (None, {"severities": None}, ("fog/3", "gaussian_noise/5")),
    "empty cell": (_empty_cell, {}, ("fog/2", "no images")),
    "empty class": (_empty_class, {}, ("fog/2", WNIDS[1])),
    "other wnids": (_other_wnid, {}, ("fog/2", "n99999999", "same wnids")),
    "missing file": (_missing_file, {}, ("fog/1", "different image files")),
    "missing corruption": (None, {"corruptions": ["fog", "snow"]}, ("snow",)),
    "unknown corruption": (None, {"corruptions": ["fogg"]}, ("'fogg'",)),
    "severity 9": (None, {"severities": [9]}, ("severity 9",)),
}


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_imagenet_c_bad_trees(tmp_path, case):
    damage, kwargs, fragments = BAD_TREES[case]
    write_imagenet_c(tmp_path)
    if damage is not None:
        damage(tmp_path)
    with pytest.raises(RobustCSCError) as err:
        load_imagenet_c(tmp_path, **{"severities": [1, 2], **kwargs})
    assert_one_sentence(err, *fragments)


def test_imagenet_c_missing_or_empty_root(tmp_path):
    with pytest.raises(RobustCSCError) as err:
        load_imagenet_c(tmp_path / "ImageNet-C-missing")
    assert_one_sentence(err, "not found", "<corruption>/<severity>/<wnid>")
    (tmp_path / "other").mkdir()
    with pytest.raises(RobustCSCError) as err:
        load_imagenet_c(tmp_path)
    assert_one_sentence(err, "no known corruption folders")
