"""Hostile and broken inputs (issue 17): no code runs, nothing hangs, nothing is written before it is checked.

Every row of the issue's table is replayed through the CLI in this process:
one `error:` line, exit code 2, no traceback or warning, every file under the
test's folders byte for byte as before, and the malicious pickles' marker
file never written. A SIGALRM guard turns a hang into a failure.

What already held and must stay true is covered here and elsewhere:
- kill -9 of the `evaluate` verb mid-run, then a rerun: the same store as an
  uninterrupted run (here); the harness and the store on their own:
  tests/test_harness.py::test_resume_after_sigkill_completes_the_same_cells and
  tests/test_store.py::test_sigkill_midway_loses_nothing_committed_and_a_rerun_completes;
  the attacks: tests/test_attacks.py (resume after SIGKILL);
- several writers on one store lose and duplicate nothing:
  tests/test_store.py::test_processes_creating_and_filling_one_new_store_together (three processes),
  tests/test_harness.py::test_torchrun_shards_cells_over_ranks (two ranks);
- reruns with other batch sizes and worker counts give the same cells (here; the
  images themselves: tests/test_harness.py::test_generated_cells_do_not_depend_on_batch_size_or_workers).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cli_support import assert_user_error, run_main
from robust_csc.data import load_dataset
from robust_csc.data.corrupted import write_cifar_c
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint
from robust_csc.scratch import build_folder
from robust_csc.safe_pickle import UnsafePickleError, load_numpy_pickle
from test_cli_suites import _accept_written_checksums, _write_cifar10
from test_data import _Py2Pickler

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
N_TEST = 12  # images in the written CIFAR-10 test batch
HANG_LIMIT_S = 60  # far above the few seconds each case takes: only a hang reaches it


# ---------------------------------------------------------------- helpers


class Payload:
    """Pickles as a call that writes the marker file: proof that code of a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


def snapshot(*roots: Path) -> dict:
    """Every entry under roots: kind, and size and sha256 for files (a FIFO is never opened)."""
    seen = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                seen[path] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[path] = ("dir",)
            elif path.is_file():
                seen[path] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                seen[path] = ("special",)
    return seen


@contextlib.contextmanager
def hang_guard(seconds=HANG_LIMIT_S):
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hostile input made the command hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(capsys, *args, fragments=(), roots=()):
    """Run the CLI in this process: one `error:` line naming fragments, exit 2, nothing under roots changed."""
    before = snapshot(*roots)
    with hang_guard():
        code, out, err = run_main(capsys, *args)
    assert_user_error(code, out, err, *fragments)
    assert "Warning" not in err, err  # no warning printed before the error line
    assert snapshot(*roots) == before
    return err.strip()


def read_only(monkeypatch, folder: Path) -> None:
    """Make folder refuse new entries: chmod for ordinary users; for root (whom chmod does not stop),
    the calls that create files and folders fail with EACCES under it, as on a read-only mount."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    inside = str(folder.resolve())

    def denied(path):
        target = os.path.abspath(os.fspath(path))
        return target == inside or target.startswith(inside + os.sep)

    def guard(real, write_mode):
        def call(path, *args, **kwargs):
            if denied(path) and write_mode(args, kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    creates = os.O_CREAT | os.O_WRONLY | os.O_RDWR
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, lambda a, k: True))
    monkeypatch.setattr(os, "open", guard(os.open, lambda a, k: bool((a[0] if a else k.get("flags", 0)) & creates)))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, lambda a, k: any(c in (a[0] if a else k.get("mode", "r")) for c in "wax+")))


def doctored(src: Path, dst: Path, change=None, text=None, tensors=None) -> Path:
    """A copy of checkpoint src whose robust_csc metadata is changed by change(meta), or replaced by text."""
    with safe_open(str(src), framework="pt") as f:
        found = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["robust_csc"])
    if change is not None:
        change(meta)
    save_file(tensors if tensors is not None else found, str(dst), metadata={"robust_csc": text or json.dumps(meta)})
    return dst


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: a tiny file, a huge image once decoded (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def policy_json(checkpoint: Path, rule: str = "grid", cells=None, fit=None) -> dict:
    """A lambda policy as tune-lambda writes it, for a doctored copy."""
    from policy_support import policy_meta

    data = {"format": "robust-csc lambda policy", "version": 2, "rule": rule, "calibration": [],
            **policy_meta(n=4, checkpoint_sha256=checkpoint_hash(checkpoint))}
    if rule == "grid":
        data["cells"] = cells if cells is not None else [{"corruption": "gaussian_noise", "severity": 1, "lambda": 0.3}]
    else:
        data["fit"] = fit or {"slope": 1.0, "intercept": 0.0, "clip": [0.1, 0.5], "per": "sample"}
    return data


def rows_of(store: Path) -> dict:
    """{(lambda setting, corruption, severity): (n, correct, recon error, code density)}, None for a missing statistic."""
    with ResultsStore(store) as results:
        frame = results.to_frame()

    def stat(value):
        return None if value is None or value != value else value  # NaN != NaN

    return {
        (r.lambda_setting, r.corruption, r.severity): (r.n, r.correct, stat(r.mean_recon_error), stat(r.mean_code_density))
        for r in frame.itertuples()
    }


# ---------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Checkpoints and folders every case may read (checked unchanged after each)."""
    root = tmp_path_factory.mktemp("shared")
    torch.manual_seed(0)
    digits = save_checkpoint(root / "digits.safetensors", create_model("sdnet18", width=4, num_classes=10), dataset="digits")
    cifar = save_checkpoint(root / "cifar.safetensors", create_model("sdnet18", width=4, num_classes=10), dataset="cifar10")
    inet = save_checkpoint(  # a ResNet: ImageNet-size CSC layers would only cost time here
        root / "inet.safetensors", create_model("resnet18", width=4, num_classes=2, stem="imagenet"), dataset="imagenet"
    )
    store = root / "kept.sqlite"
    with ResultsStore(store) as results:
        results.add(CellKey("sdnet18", checkpoint_hash(digits), "digits", "test"), {"n": 1, "correct": 1, "seconds": 0.0})
    return {"root": root, "digits": digits, "cifar": cifar, "inet": inet, "store": store}


def malicious_cifar(root: Path, marker: Path, protocol: int, where: str = "test_batch") -> Path:
    """A cifar-10-batches-py folder (plus CIFAR-10-C beside it) whose `where` file runs code when unpickled."""
    rng = np.random.default_rng(0)
    _, labels = _write_cifar10(root, rng)
    write_cifar_c(root / "CIFAR-10-C", "cifar10-c", {"fog": rng.integers(0, 256, (5 * N_TEST, 32, 32, 3), np.uint8)},
                  labels.astype(np.uint8))
    path = root / "cifar-10-batches-py" / where
    content = {"batch_label": "x", "labels": [0] * N_TEST, "data": Payload(marker)}
    if where == "batches.meta":
        content = {"label_names": Payload(marker)}
    if protocol == 2:
        with open(path, "wb") as f:  # as the published files: Python 2 str keys
            _Py2Pickler(f, protocol=2).dump({k.encode(): v for k, v in content.items()})
    else:
        path.write_bytes(pickle.dumps(content, protocol=protocol))
    return root


# ---------------------------------------------------------------- 1. code execution


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("verb", ["evaluate-generated", "evaluate-cifar10-c", "noise-curve"])
def test_malicious_cifar_batches_never_run(capsys, tmp_path, shared, verb, protocol):
    marker = tmp_path.parent / f"ran-{tmp_path.name}"
    data = malicious_cifar(tmp_path / "data", marker, protocol)
    common = ["--data-root", data, "--no-verify-checksums", "--n-examples", 4]
    args = {
        "evaluate-generated": ["evaluate", "--checkpoint", shared["cifar"], "--suite", "generated", "--dataset", "cifar10",
                               "--corruptions", "fog", "--severities", "1", "--store", tmp_path / "s.sqlite", *common],
        # the clean cell is read implicitly from the folder beside CIFAR-10-C
        "evaluate-cifar10-c": ["evaluate", "--checkpoint", shared["cifar"], "--suite", "cifar10-c", "--severities", "1",
                               "--images-per-severity", N_TEST, "--store", tmp_path / "s.sqlite", *common],
        "noise-curve": ["noise-curve", "--checkpoint", shared["cifar"], "--kind", "gaussian", "--levels", "0,0.1",
                        "--dataset", "cifar10", *common],
    }[verb]
    err = refused(capsys, *args, fragments=("test_batch", ".exec", "refused"), roots=(tmp_path, shared["root"]))
    assert "code that would run on load" in err
    assert not marker.exists()


def test_malicious_meta_file_and_the_checksummed_path_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    data = malicious_cifar(tmp_path / "data", marker, 2, where="batches.meta")
    with pytest.raises(UnsafePickleError, match="batches.meta"):
        load_dataset("cifar10", "test", root=data, verify_checksums=False)
    # Files whose md5s match the checksum table (a collision, or a doctored table) are read restricted too.
    _accept_written_checksums(monkeypatch, data / "cifar-10-batches-py")
    with pytest.raises(UnsafePickleError, match=r"__builtin__\.exec"):  # protocol 2 spells builtins the Python 2 way
        load_dataset("cifar10", "test", root=data)
    assert not marker.exists()
    # The payload is real: an unrestricted load runs it.
    with open(data / "cifar-10-batches-py" / "batches.meta", "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_reads_what_numpy_and_pickle_write(tmp_path, protocol):
    content = {
        "data": np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072) % 251,
        "floats": np.linspace(0, 1, 7, dtype=np.float32).reshape(7, 1),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        "scalar": np.float64(2.5), "count": np.int32(-3), "labels": [1, 2, 3], "names": [b"a", "b"],
        "nested": {"x": (1, 2.0, None, True)}, "raw": bytes(range(256)),
    }
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    got = load_numpy_pickle(path, what="test file", fix="fix it")
    want = pickle.loads(path.read_bytes())  # the standard library's reading is the reference
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], np.ndarray):
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
            assert got[key].flags.f_contiguous == want[key].flags.f_contiguous
        else:
            assert got[key] == want[key] and type(got[key]) is type(want[key])


@pytest.mark.parametrize(
    "payload, named",
    [
        (lambda m: Payload(m), r"__builtin__\.exec"),
        (lambda m: {"a": os.getcwd}, "posix.getcwd"),  # naming any callable is refused, not only calling it
        (lambda m: np.array([Payload(m)], dtype=object), "Python objects"),  # object arrays hold pickles
        (lambda m: io.BytesIO(b"x"), "_io.BytesIO"),
    ],
)
def test_restricted_unpickler_refuses_any_other_global(tmp_path, payload, named):
    marker = tmp_path / "ran"
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match=named):
        load_numpy_pickle(path, what="test file", fix="fix it")
    assert not marker.exists()
    # _codecs.encode is admitted for latin1 text only (protocol 2 bytes), not as a general codec call.
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(UnsafePickleError, match="codec 'zlib'"):
        load_numpy_pickle(path, what="test file", fix="fix it")


# ---------------------------------------------------------------- 2. checkpoint and policy metadata


def _set(*path_and_value):
    *keys, value = path_and_value

    def change(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "verb, change, fragments",
    [
        ("evaluate", _set("arguments", "n_steps", 100_000_000), ("n_steps 100000000", "from 1 to 100")),
        ("info", _set("arguments", "width", 4096), ("width 4096", "from 1 to 1024")),
        ("info", _set("arguments", "width", 256), ("does not fit the model its metadata describes", "stem.0.weight")),
        ("info", _set("arguments", "num_classes", 10**12), ("num_classes",)),
        ("info", _set("arguments", "lam", float("nan")), ("lam nan",)),
        ("info", _set("arguments", "stem", {"a": 1}), ("stem",)),
        ("info", _set("arguments", "evil", 1), ("unknown arguments", "evil")),
        ("info", _set("arch", "os.system"), ("unknown architecture",)),
        ("evaluate", _set("lambda", "stem.0", 1e30), ("lambda 1e+30", "layer stem.0")),
    ],
    ids=["n_steps-1e8", "width-4096", "width-256-vs-tensors", "classes-1e12", "nan-lam", "stem-dict", "extra-argument",
         "arch", "lambda-1e30"],
)
def test_checkpoint_metadata_is_checked_before_anything_is_built(capsys, tmp_path, shared, verb, change, fragments):
    bad = doctored(shared["digits"], tmp_path / "bad.safetensors", change)
    args = ["info", bad] if verb == "info" else [
        "evaluate", "--checkpoint", bad, "--suite", "generated", "--corruptions", "fog", "--severities", "1",
        "--n-examples", 4, "--store", tmp_path / "s.sqlite"]
    refused(capsys, *args, fragments=fragments, roots=(tmp_path, shared["root"]))


def test_deeply_nested_json_is_refused_without_recursion(capsys, tmp_path, shared):
    deep = "[" * 200_000 + "]" * 200_000
    text = '{"format_version": 1, "arch": "sdnet18", "arguments": {}, "x": ' + deep + "}"
    bad = doctored(shared["digits"], tmp_path / "deep.safetensors", text=text)
    refused(capsys, "info", bad, fragments=("nests JSON 200001 levels deep",), roots=(tmp_path, shared["root"]))
    policy = policy_json(shared["digits"])
    policy["calibration"] = "@"
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(policy).replace('"@"', deep))
    refused(capsys, "evaluate", "--checkpoint", shared["digits"], "--suite", "generated", "--n-examples", 4,
            "--lambda-policy", path, "--store", tmp_path / "s.sqlite", fragments=("nests JSON",),
            roots=(tmp_path, shared["root"]))


def test_non_finite_weights_are_refused_at_load(capsys, tmp_path, shared):
    with safe_open(str(shared["digits"]), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["linear.weight"][0, 0] = float("nan")
    tensors["stem.0.weight"][1, 0, 0, 0] = float("inf")
    bad = doctored(shared["digits"], tmp_path / "nan.safetensors", tensors=tensors)
    refused(capsys, "info", bad, fragments=("NaN or infinite values in 2 tensor(s)", "linear.weight"),
            roots=(tmp_path, shared["root"]))


def test_non_finite_outputs_store_no_cell(capsys, tmp_path, shared):
    with safe_open(str(shared["digits"]), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["stem.1.weight"].fill_(3e38)  # finite weights whose activations overflow to infinity
    tensors["linear.weight"] *= 3e38
    huge = doctored(shared["digits"], tmp_path / "huge.safetensors", tensors=tensors)
    store = tmp_path / "s.sqlite"
    with ResultsStore(store) as results:
        results.add(CellKey("other", "0" * 64, "digits", "test"), {"n": 1, "correct": 1, "seconds": 0.0})
    before = rows_of(store)
    with hang_guard():
        code, out, err = run_main(capsys, "evaluate", "--checkpoint", huge, "--suite", "generated", "--corruptions", "fog",
                                  "--severities", "1", "--n-examples", 4, "--store", store)
    assert_user_error(code, out, err, "NaN or infinite outputs", "cell none 0")
    assert rows_of(store) == before  # the clean cell ran first and was not stored


# ---------------------------------------------------------------- 3. one line instead of a traceback


DEVICE_VERBS = {
    "evaluate": lambda s, t: ["evaluate", "--checkpoint", s["digits"], "--suite", "generated", "--n-examples", 4,
                              "--store", t / "s.sqlite"],
    "attack": lambda s, t: ["attack", "--checkpoint", s["digits"], "--attack", "pgd", "--eps", "1/255",
                            "--n-examples", 4, "--store", t / "s.sqlite"],
    "tune-lambda": lambda s, t: ["tune-lambda", "--checkpoint", s["digits"], "--suite", "generated", "--n-examples", 4,
                                 "--out", t / "p.json", "--store", t / "s.sqlite"],
    "noise-curve": lambda s, t: ["noise-curve", "--checkpoint", s["digits"], "--kind", "gaussian", "--levels", "0,0.1",
                                 "--n-examples", 4, "--out", t / "c.csv"],
}
MISSING_GPU = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize("verb", sorted(DEVICE_VERBS))
@pytest.mark.parametrize("device, fragment", [(MISSING_GPU, "GPU"), ("foo", "unknown device 'foo'"), ("meta", "not a device")])
def test_devices_this_machine_lacks(capsys, tmp_path, shared, verb, device, fragment):
    args = DEVICE_VERBS[verb](shared, tmp_path) + ["--device", device]
    refused(capsys, *args, fragments=(fragment, "--device"), roots=(tmp_path, shared["root"]))


INT_OPTIONS = {**DEVICE_VERBS, "corrupt": lambda s, t: ["corrupt", "--dataset", "digits", "--out", t / "c"]}


@pytest.mark.parametrize("verb", sorted(INT_OPTIONS))
def test_a_bad_option_value_is_one_line(capsys, tmp_path, shared, verb):
    args = [a for a in INT_OPTIONS[verb](shared, tmp_path) if a != 4 and a != "--n-examples"]
    refused(capsys, *args, "--n-examples", "abc", fragments=("'--n-examples'", "integer", f"{verb} --help"),
            roots=(tmp_path, shared["root"]))


@pytest.mark.parametrize("verb, option", [("noise-curve", "--levels"), ("tune-lambda", "--grid")])
def test_a_list_of_a_hundred_million_values_is_refused_not_run(capsys, tmp_path, shared, verb, option):
    args = [a for a in DEVICE_VERBS[verb](shared, tmp_path)]
    if option in args:
        args[args.index(option) + 1] = "0:1:100000000"
    else:
        args += [option, "0:1:100000000"]
    refused(capsys, *args, fragments=("100000000 values", "from 1 to 10000"), roots=(tmp_path, shared["root"]))


def test_report_out_in_a_read_only_folder(capsys, tmp_path, shared, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    refused(capsys, "report", "--store", shared["store"], "--out", locked / "report",
            fragments=("--out", "cannot be written", "Permission denied"), roots=(tmp_path, shared["root"]))


def test_corrupt_out_in_a_read_only_folder(capsys, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    refused(capsys, "corrupt", "--dataset", "digits", "--out", locked / "c", "--n-examples", 3, "--corruptions", "fog",
            fragments=("cannot be written", "Permission denied"), roots=(tmp_path,))


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["blocks", "labels"])
def test_corrupt_on_a_full_disk(capsys, tmp_path, monkeypatch, where):
    out = tmp_path / "c"
    out.mkdir()
    (out / "fog.npy").write_bytes(b"an earlier suite")  # replaced only by a complete new one
    if where == "blocks":
        monkeypatch.setattr(os, "posix_fallocate", _no_space)  # reserving the block files' disk space
    else:
        monkeypatch.setattr(np, "save", _no_space)  # writing labels.npy, the last file
    # The earlier suite stays byte for byte; the run's finished blocks wait in the hidden .c.partial to resume.
    refused(capsys, "corrupt", "--dataset", "digits", "--out", out, "--n-examples", 3, "--corruptions", "fog", "--force",
            fragments=("No space left on device",), roots=(out,))
    assert not any(p.name == "c" and p != out for p in tmp_path.iterdir())


def imagenet_c(root: Path, bad: bytes) -> Path:
    """<root>/ImageNet-C/fog/1/<wnid>/*.JPEG for two classes; the first image (read first) is `bad`."""
    rng = np.random.default_rng(3)
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        folder = root / "ImageNet-C" / "fog" / "1" / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img{c}{i}.JPEG", quality=90)
    victim = root / "ImageNet-C" / "fog" / "1" / "n01440764" / "img00.JPEG"
    victim.write_bytes(bad if bad else victim.read_bytes()[:3000])  # b"": a truncated JPEG
    return root


@pytest.mark.parametrize(
    "bad, workers, fragments",
    [
        (png_header(100_000, 100_000), 0, ("decompression bomb", "img00.JPEG")),  # PIL raises
        (png_header(10_000, 10_000), 0, ("decompression bomb",)),  # PIL only warns
        (b"", 2, ("could not read ImageNet-C image", "img00.JPEG", "truncated")),  # raised in a worker
    ],
    ids=["bomb-error", "bomb-warning", "truncated-jpeg-workers-2"],
)
def test_broken_images_in_an_imagenet_c_folder(capsys, tmp_path, shared, bad, workers, fragments):
    data = imagenet_c(tmp_path / "data", bad)
    store = tmp_path / "s.sqlite"
    with ResultsStore(store):
        pass
    before = snapshot(data)
    with hang_guard():
        code, out, err = run_main(capsys, "evaluate", "--checkpoint", shared["inet"], "--suite", "imagenet-c",
                                  "--data-root", data, "--severities", "1", "--batch-size", 2, "--workers", workers,
                                  "--store", store)
    assert_user_error(code, out, err, *fragments)
    assert "Warning" not in err and "worker process" not in err
    assert snapshot(data) == before
    assert rows_of(store) == {}  # the broken image is in the only corrupted cell


def test_a_worker_failure_is_one_sentence_for_library_callers_too(tmp_path, shared):
    from robust_csc.data.corrupted import load_imagenet_c
    from robust_csc.evaluation.harness import evaluate_checkpoint

    data = imagenet_c(tmp_path / "data", b"")
    suite = load_imagenet_c(data, severities=[1])
    with pytest.raises(RobustCSCError) as info:
        evaluate_checkpoint(shared["inet"], suite, store=tmp_path / "s.sqlite", batch_size=2, num_workers=2)
    message = str(info.value)
    assert message.startswith("could not read ImageNet-C image") and "\n" not in message and "DataLoader" not in message


# ---------------------------------------------------------------- 4. checked before written


def test_policies_that_cannot_apply_are_refused_before_the_store_opens(capsys, tmp_path, shared):
    store = shared["store"]
    common = ["evaluate", "--checkpoint", shared["digits"], "--suite", "generated", "--corruptions", "gaussian_noise",
              "--severities", "1", "--n-examples", 4, "--store", store]
    cases = {
        "clip-below-zero": (policy_json(shared["digits"], "recon", fit={"slope": 1, "intercept": 0, "clip": [-0.5, 0.5],
                                                                         "per": "sample"}), ("clip is -0.5",)),
        "clip-backwards": (policy_json(shared["digits"], "recon", fit={"slope": 1, "intercept": 0, "clip": [0.9, 0.1],
                                                                        "per": "sample"}), ("runs backwards",)),
        "no-clean-cell": (policy_json(shared["digits"]), ("no lambda for cell (none, 0)",)),
        "no-such-cell": (policy_json(shared["digits"], cells=[{"corruption": "none", "severity": 0, "lambda": 0.2}]),
                         ("no lambda for cell (gaussian_noise, 1)",)),
        "lambda-1e30": (policy_json(shared["digits"], cells=[{"corruption": "none", "severity": 0, "lambda": 1e30}]),
                        ("1e+30", "absurdly large")),
        "severity-text": (policy_json(shared["digits"], cells=[{"corruption": "fog", "severity": "x", "lambda": 1}]),
                          ("integer severity",)),
    }
    for name, (policy, fragments) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(policy))
        refused(capsys, *common, "--lambda-policy", path, fragments=fragments, roots=(tmp_path, shared["root"]))
    for value in ("1e30", "scale=1e30", "stem=inf"):
        refused(capsys, *common, "--lambda", value, fragments=(value,), roots=(tmp_path, shared["root"]))


def test_tune_lambda_checks_out_before_the_sweep(capsys, tmp_path, shared, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    store = tmp_path / "s.sqlite"
    refused(capsys, "tune-lambda", "--checkpoint", shared["digits"], "--suite", "generated", "--corruptions", "fog",
            "--severities", "1", "--n-examples", 4, "--grid", "0.1,0.5", "--out", locked / "p.json", "--store", store,
            fragments=("--out", "cannot be written"), roots=(tmp_path, shared["root"]))
    assert not store.exists()  # no cell of a policy that could never be saved


# ---------------------------------------------------------------- 5. the rest


def _hold_build_folder(out: Path, ready) -> None:
    with build_folder(out) as folder:
        (folder / "index.html").write_text("half a report")
        ready.set()
        time.sleep(120)


def test_report_removes_the_build_folders_of_killed_runs_only(capsys, tmp_path, shared):
    out = tmp_path / "report"
    fork = multiprocessing.get_context("fork")
    holders = []
    for _ in range(2):  # one to be killed, one that stays alive and building
        ready = fork.Event()
        process = fork.Process(target=_hold_build_folder, args=(out, ready), daemon=True)
        process.start()
        assert ready.wait(60)
        holders.append(process)
    killed, alive = holders
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(30)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report.build-") and p.is_dir())
    assert len(folders) == 2
    try:
        code, _, err = run_main(capsys, "report", "--store", shared["store"], "--out", out)
        assert code == 0, err
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report.build-"))
        assert len(left) == 2 and len({name.removesuffix(".lock") for name in left}) == 1  # the live build and its lock
        assert (tmp_path / left[0].removesuffix(".lock") / "index.html").read_text() == "half a report"
    finally:
        alive.kill()
        alive.join(30)
    code, _, err = run_main(capsys, "report", "--store", shared["store"], "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the next run found the second one abandoned too


@pytest.mark.parametrize("form", ["legacy-2", "legacy-4", "legacy-5", "zip"])
def test_malicious_pt_is_named_without_a_warning(capsys, tmp_path, form):
    marker = tmp_path.parent / f"ran-{tmp_path.name}"
    path = tmp_path / "official.pth"
    content = {"state_dict": {"w": torch.zeros(2)}, "hook": Payload(marker)}
    if form == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=int(form[-1])))
    refused(capsys, "convert-official", path, tmp_path / "out.safetensors", "--arch", "sdnet18",
            fragments=("contains code that would run on load", ".exec"), roots=(tmp_path,))
    assert not marker.exists()


def test_a_plain_protocol_4_pt_is_not_called_truncated(capsys, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2)}, path, pickle_protocol=4)
    err = refused(capsys, "convert-official", path, tmp_path / "out.safetensors", "--arch", "sdnet18",
                  fragments=("pickle protocol 4", "re-save"), roots=(tmp_path,))
    assert "truncated" not in err


def test_fifos_are_named_and_never_opened(capsys, tmp_path, shared):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    generated = ["--suite", "generated", "--n-examples", 4]
    for args, fragment in [
        (["info", fifo], "is a FIFO, not a checkpoint file"),
        (["evaluate", "--checkpoint", fifo, *generated, "--store", tmp_path / "s.sqlite"], "is a FIFO"),
        (["evaluate", "--checkpoint", shared["digits"], *generated, "--lambda-policy", fifo, "--store",
          tmp_path / "s.sqlite"], "is a FIFO, not a lambda policy file"),
        (["evaluate", "--checkpoint", shared["digits"], *generated, "--store", fifo], "is a FIFO, not a results store"),
        (["report", "--store", fifo, "--out", tmp_path / "r"], "is a FIFO"),
        (["convert-official", fifo, tmp_path / "o.safetensors", "--arch", "sdnet18"], "is a FIFO"),
    ]:
        refused(capsys, *args, fragments=(fragment,), roots=(tmp_path, shared["root"]))


# ---------------------------------------------------------------- what already held: kill -9, determinism

SLOW_EVALUATE = """
import sys, time
import robust_csc.evaluation.harness as harness
run_cell = harness._run_cell
def slow(*args, **kwargs):  # the same cell, slowly: the test kills the process between cells
    time.sleep(0.5)
    return run_cell(*args, **kwargs)
harness._run_cell = slow
from robust_csc.cli import main
main(sys.argv[1:])
"""


def test_kill_9_during_evaluate_then_a_rerun_gives_the_uninterrupted_store(capsys, tmp_path, shared):
    args = ["evaluate", "--checkpoint", shared["digits"], "--suite", "generated", "--corruptions", "fog",
            "--severities", "1,3", "--n-examples", 6, "--lambda", "trained,0.3", "--batch-size", 4]
    interrupted = tmp_path / "interrupted.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", SLOW_EVALUATE, *map(str, args), "--store", str(interrupted)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(RobustCSCError):  # a store still being created
                if interrupted.exists() and interrupted.stat().st_size and len(rows_of(interrupted)) >= 2:
                    break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    kept = rows_of(interrupted)
    assert 2 <= len(kept) < 6  # (clean + 2 cells) x 2 settings
    code, out, err = run_main(capsys, *args, "--store", interrupted)
    assert code == 0, err
    assert f"cells run {6 - len(kept)}, skipped {len(kept)}" in out
    code, _, err = run_main(capsys, *args, "--store", tmp_path / "fresh.sqlite")
    assert code == 0, err
    resumed, fresh = rows_of(interrupted), rows_of(tmp_path / "fresh.sqlite")
    assert resumed == fresh and len(fresh) == 6
    assert all(resumed[key] == value for key, value in kept.items())  # the cells stored before the kill stay


def test_reruns_with_other_batch_sizes_and_workers_store_the_same_cells(capsys, tmp_path, shared):
    args = ["evaluate", "--checkpoint", shared["digits"], "--suite", "generated", "--corruptions", "gaussian_noise,fog",
            "--severities", "2", "--n-examples", 7]
    stores = []
    for batch_size, workers in ((7, 0), (3, 0), (2, 2)):
        store = tmp_path / f"b{batch_size}w{workers}.sqlite"
        code, _, err = run_main(capsys, *args, "--batch-size", batch_size, "--workers", workers, "--store", store)
        assert code == 0, err
        stores.append(rows_of(store))
    reference = stores[0]
    assert len(reference) == 3
    for other in stores[1:]:
        assert other.keys() == reference.keys()
        for key, (n, correct, recon, density) in other.items():
            assert (n, correct) == reference[key][:2]
            assert recon == pytest.approx(reference[key][2], rel=1e-6)
            assert density == pytest.approx(reference[key][3], rel=1e-6)
