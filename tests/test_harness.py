"""Generated corruption suites and the evaluation harness: determinism, one row per cell, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import nullcontext
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from robust_csc.csc import lambda_override
from robust_csc.data.corrupted import CorruptionSuite
from robust_csc.data.generated import generated_clean, generated_suite
from robust_csc.data.registry import load_dataset
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.harness import evaluate, evaluate_checkpoint, lambda_setting_name
from robust_csc.evaluation.store import ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SHA = "cd" * 32
N = 12  # images per cell: small, but more than one batch at the batch sizes used
CORRUPTIONS = ["gaussian_noise", "fog", "pixelate"]
SEVERITIES = [1, 4]
ROOT = Path(__file__).resolve().parents[1]


def suite(seed=0, n=N):
    return generated_suite("digits", corruptions=CORRUPTIONS, severities=SEVERITIES, seed=seed, n_examples=n)


def tiny(arch="sdnet18", seed=0):
    torch.manual_seed(seed)  # untrained but fixed weights: accuracies do not matter, equality does
    return create_model(arch, num_classes=10, width=4).eval()


def collect(dataset, batch_size, num_workers=0):
    """Every item of a dataset through a DataLoader, concatenated."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    images, labels, indices = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(indices)


def run(model, store, lambdas=(None,), clean=True, model_name="sdnet18", s=None, **kw):
    return evaluate(
        model,
        s if s is not None else suite(),  # an empty suite is falsy
        store=store,
        model_name=model_name,
        checkpoint_sha256=SHA,
        dataset="digits",
        lambdas=lambdas,
        clean=generated_clean("digits", n_examples=N) if clean else None,
        batch_size=kw.pop("batch_size", 5),
        **kw,
    )


def rows(frame):
    """{(lambda setting, corruption, severity): (n, correct)} of a store frame."""
    return {
        (r.lambda_setting, r.corruption, r.severity): (r.n, r.correct)
        for r in frame.itertuples()
    }


# ---------------------------------------------------------------- generated suites


def test_generated_suite_shape_and_name():
    s = suite()
    assert s.name == "digits-c[cifar]" and s.num_classes == 10 and s.images_per_cell == N
    assert [(c.corruption, c.severity) for c in s.cells()] == [(c, v) for c in CORRUPTIONS for v in SEVERITIES]
    assert suite(seed=3).name == "digits-c[cifar,seed=3]"  # another generation never shares a name
    image, label, index = s.dataset("fog", 4)[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int) and index == 5
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_generated_cells_do_not_depend_on_batch_size_or_workers():
    s = suite()
    for corruption in ("gaussian_noise", "fog"):
        data = s.dataset(corruption, 4)
        reference = collect(data, batch_size=1)
        for batch_size, workers in ((7, 0), (N, 0), (7, 2)):
            got = collect(data, batch_size, workers)
            for a, b in zip(reference, got):
                assert torch.equal(a, b), (corruption, batch_size, workers)
        assert reference[2].tolist() == list(range(N))
    # Reading one item alone gives what the batches gave.
    assert torch.equal(s.dataset("gaussian_noise", 1)[9][0], collect(s.dataset("gaussian_noise", 1), 5)[0][9])


def test_generated_seeds_differ_and_clean_is_uint8_rounded():
    a = collect(suite(seed=0).dataset("gaussian_noise", 4), N)[0]
    b = collect(suite(seed=1).dataset("gaussian_noise", 4), N)[0]
    assert not torch.equal(a, b)
    clean_images, clean_labels, _ = collect(generated_clean("digits", n_examples=N), N)
    base = load_dataset("digits", "test")
    base_images = torch.stack([base[i][0] for i in range(N)])
    assert torch.equal(clean_images, base_images.mul(255).round().div(255))
    assert torch.equal(clean_labels, torch.stack([base[i][1] for i in range(N)]))
    # Clean and corrupted share one pixel grid: every value is k / 255.
    for images in (clean_images, a):
        assert torch.allclose(images * 255, (images * 255).round(), atol=1e-4)


def test_generated_arguments_are_checked():
    with pytest.raises(RobustCSCError, match="n_examples"):
        generated_suite("digits", n_examples=0)
    with pytest.raises(RobustCSCError, match="unknown corruption"):
        generated_suite("digits", corruptions=["rain"])
    with pytest.raises(RobustCSCError, match="profile"):
        generated_suite("digits", profile="mnist")
    with pytest.raises(RobustCSCError, match="seed"):
        generated_suite("digits", seed=-1)


# ---------------------------------------------------------------- evaluate


def hand_counts(model, data, lam=None, batch_size=5):
    """(n, correct) counted here, the way the harness should count them."""
    n = correct = 0
    with torch.inference_mode(), (lambda_override(model, lam) if lam is not None else nullcontext()):
        for images, labels, _ in DataLoader(data, batch_size=batch_size):
            correct += int((model(images).argmax(1) == labels).sum())
            n += len(labels)
    return n, correct


def test_lambda_setting_name():
    assert lambda_setting_name(None) == "trained"
    assert lambda_setting_name(0.5) == "0.5" and lambda_setting_name(2) == "2" and lambda_setting_name(1e-3) == "0.001"


def test_evaluate_one_row_per_cell_matching_a_hand_loop(tmp_path):
    model = tiny()
    s = suite()
    path = tmp_path / "results.sqlite"
    result = run(model, path, lambdas=(None, 0.5))
    cells = 2 * (1 + len(CORRUPTIONS) * len(SEVERITIES))
    assert result.cells_run == cells and result.cells_skipped == 0
    got = rows(result.frame)
    assert len(got) == len(result.frame) == cells
    clean = generated_clean("digits", n_examples=N)
    for lam in (None, 0.5):
        name = lambda_setting_name(lam)
        assert got[(name, "none", 0)] == hand_counts(model, clean, lam)
        for c in CORRUPTIONS:
            for v in SEVERITIES:
                assert got[(name, c, v)] == hand_counts(model, s.dataset(c, v), lam)
    # Lambda settings are distinct rows with distinct codes.
    frame = result.frame
    dens = frame.groupby("lambda_setting")["mean_code_density"].mean()
    assert dens["trained"] != dens["0.5"]
    assert frame["mean_recon_error"].notna().all() and frame["mean_code_density"].between(0, 1).all()
    assert set(result.tables) == set(result.summaries) == {"trained", "0.5"}
    assert result.tables["trained"].loc["fog", 4] == got[("trained", "fog", 4)][1] / N
    assert result.summaries["0.5"]["clean_accuracy"] == got[("0.5", "none", 0)][1] / N
    assert model.training is False  # the harness gives the model back in its own mode

    # A rerun skips everything and changes nothing.
    with ResultsStore(path) as store:
        before = store.to_frame()
    again = run(model, path, lambdas=(None, 0.5))
    assert again.cells_run == 0 and again.cells_skipped == cells
    with ResultsStore(path) as store:
        after = store.to_frame()
    assert after.equals(before)


def test_one_loader_with_workers_gives_each_cell_its_own_images(tmp_path):
    # The harness reads every cell through one DataLoader (its workers read ahead
    # across cells): each cell's counts must still be those of its images alone.
    model = tiny()
    s = suite(n=7)  # 7 images, batches of 3: every cell ends in a short batch
    result = run(model, tmp_path / "r.sqlite", s=s, clean=False, num_workers=2, batch_size=3)
    got = rows(result.frame)
    for c in CORRUPTIONS:
        for v in SEVERITIES:
            assert got[("trained", c, v)] == hand_counts(model, s.dataset(c, v))


def test_evaluate_restores_training_mode_and_accepts_an_open_store(tmp_path):
    model = tiny().train()
    with ResultsStore(tmp_path / "r.sqlite") as store:
        result = run(model, store, s=generated_suite("digits", corruptions="contrast", severities=2, n_examples=4))
        assert result.cells_run == 2 and len(store) == 2
    assert model.training is True


def test_resnet_has_no_csc_stats_and_refuses_a_lambda(tmp_path):
    model = tiny("resnet18")
    result = run(model, tmp_path / "r.sqlite", model_name="resnet18")
    assert result.frame["mean_recon_error"].isna().all() and result.frame["mean_code_density"].isna().all()
    assert rows(result.frame)[("trained", "none", 0)] == hand_counts(model, generated_clean("digits", n_examples=N))
    with pytest.raises(RobustCSCError, match="no CSC layers"):
        run(model, tmp_path / "r2.sqlite", lambdas=(None, 0.1), model_name="resnet18")
    assert not (tmp_path / "r2.sqlite").exists()  # refused before the store was created


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lambdas": (-0.1,)}, "lambda"),
        ({"lambdas": (float("nan"),)}, "lambda"),
        ({"lambdas": (float("inf"),)}, "lambda"),
        ({"lambdas": ()}, "no lambda setting"),
        ({"lambdas": (0.1, 0.1000000001)}, "share the setting name"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_evaluate_checks_its_arguments(tmp_path, kwargs, match):
    with pytest.raises(RobustCSCError, match=match):
        run(tiny(), tmp_path / "r.sqlite", **kwargs)


def test_empty_selection_is_refused(tmp_path):
    empty = CorruptionSuite("empty", 10, (), (), 0, lambda c, s: None)
    with pytest.raises(RobustCSCError, match="selects no cells"):
        run(tiny(), tmp_path / "r.sqlite", clean=False, s=empty)
    # The clean cell alone is a valid selection.
    result = run(tiny(), tmp_path / "r.sqlite", s=empty)
    assert result.cells_run == 1 and list(result.frame["corruption"]) == ["none"]


def test_store_that_is_a_text_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    with pytest.raises(RobustCSCError, match="not a robust-csc results store"):
        run(tiny(), path)
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", tiny(), dataset="digits")
    with pytest.raises(RobustCSCError, match="not a robust-csc results store"):
        evaluate_checkpoint(checkpoint, suite(), store=path)
    assert path.read_text() == "my notes\n"


def test_model_with_another_class_count_is_refused(tmp_path):
    torch.manual_seed(0)
    model = create_model("sdnet18", num_classes=100, width=4)
    with pytest.raises(RobustCSCError, match="100 classes but the suite digits-c.cifar. has 10"):
        run(model, tmp_path / "r.sqlite")


# ---------------------------------------------------------------- evaluate_checkpoint


def test_evaluate_checkpoint_uses_the_metadata(tmp_path):
    model = tiny()
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", model, dataset="digits")
    small = generated_suite("digits", corruptions="fog", severities=1, n_examples=6)
    result = evaluate_checkpoint(checkpoint, small, store=tmp_path / "r.sqlite", lambdas=(None, 0.2), batch_size=4)
    frame = result.frame
    assert result.cells_run == 2
    assert set(frame["model"]) == {"sdnet18"} and set(frame["dataset"]) == {"digits"}
    assert set(frame["checkpoint_sha256"]) == {checkpoint_hash(checkpoint)}
    assert rows(frame)[("0.2", "fog", 1)] == hand_counts(model, small.dataset("fog", 1), 0.2, batch_size=4)
    # dataset= overrides the recorded one.
    other = evaluate_checkpoint(checkpoint, small, store=tmp_path / "r.sqlite", dataset="digits-gen")
    assert other.cells_run == 1 and set(other.frame["dataset"]) == {"digits-gen"}


def test_evaluate_checkpoint_refuses_a_class_count_mismatch(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", tiny(), dataset="digits")
    hundred = CorruptionSuite("cifar100-c", 100, ("fog",), (1,), 1, lambda c, s: None)
    with pytest.raises(RobustCSCError, match="10 classes but 100") as info:
        evaluate_checkpoint(checkpoint, hundred, store=tmp_path / "r.sqlite")
    assert "pass a checkpoint" in str(info.value)


# ---------------------------------------------------------------- resume after SIGKILL

SCRIPT = """
import sys, time
import torch
from robust_csc.data.generated import generated_clean, generated_suite
from robust_csc.evaluation.harness import evaluate
from robust_csc.models.checkpoints import checkpoint_hash, load_checkpoint

torch.set_num_threads(1)
checkpoint, store = sys.argv[1], sys.argv[2]
model, meta = load_checkpoint(checkpoint)


class Slow(torch.nn.Module):
    # Sleeps per batch so the test can kill the process between cells; outputs unchanged.
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        time.sleep(0.4)
        return self.inner(x)


suite = generated_suite("digits", corruptions={corruptions!r}, severities={severities!r}, n_examples={n})
evaluate(Slow(model), suite, store=store, model_name="sdnet18", checkpoint_sha256=checkpoint_hash(checkpoint),
         dataset="digits", clean=generated_clean("digits", n_examples={n}), lambdas=(None, 0.3), batch_size=6)
print("finished")
"""


def test_resume_after_sigkill_completes_the_same_cells(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "m.safetensors", tiny(seed=1), dataset="digits")
    script = tmp_path / "evaluate_slowly.py"
    script.write_text(textwrap.dedent(SCRIPT.format(corruptions=CORRUPTIONS, severities=SEVERITIES, n=N)))
    path = tmp_path / "interrupted.sqlite"
    total = 2 * (1 + len(CORRUPTIONS) * len(SEVERITIES))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), str(checkpoint), str(path)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and process.poll() is None:
            if path.exists() and path.stat().st_size > 0:
                with ResultsStore(path) as store:
                    stored = len(store)
                if stored >= 1:
                    break
            time.sleep(0.05)
        assert process.poll() is None, "the evaluation finished before it could be interrupted"
        assert 1 <= stored < total
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    with ResultsStore(path) as store:
        kept = len(store)
    assert 1 <= kept < total  # some cells, not all: the kill landed mid-run

    model, _ = load_checkpoint(checkpoint)
    common = dict(
        model_name="sdnet18",
        checkpoint_sha256=checkpoint_hash(checkpoint),
        dataset="digits",
        clean=generated_clean("digits", n_examples=N),
        lambdas=(None, 0.3),
        batch_size=6,
    )
    resumed = evaluate(model, suite(), store=path, **common)
    assert resumed.cells_skipped == kept and resumed.cells_run == total - kept
    fresh = evaluate(model, suite(), store=tmp_path / "fresh.sqlite", **common)
    assert fresh.cells_run == total
    assert len(resumed.frame) == total  # no duplicate cell
    assert not resumed.frame.duplicated(["lambda_setting", "corruption", "severity"]).any()
    assert rows(resumed.frame) == rows(fresh.frame)


# ---------------------------------------------------------------- torchrun

DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from robust_csc.data.generated import generated_clean, generated_suite
from robust_csc.evaluation.harness import evaluate
from robust_csc.models import create_model

torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
model = create_model("sdnet18", num_classes=10, width=4).eval()
suite = generated_suite("digits", corruptions={corruptions!r}, severities={severities!r}, n_examples={n})
result = evaluate(model, suite, store=sys.argv[1], model_name="sdnet18", checkpoint_sha256="{sha}", dataset="digits",
                  clean=generated_clean("digits", n_examples={n}), lambdas=(None, 0.3), batch_size=5)
# Every rank sees the whole set once all have passed the barrier.
assert result.cells_run == {total} and len(result.frame) == {total}, (result.cells_run, len(result.frame))
dist.destroy_process_group()
"""


def test_torchrun_shards_cells_over_ranks(tmp_path):
    total = 2 * (1 + len(CORRUPTIONS) * len(SEVERITIES))
    script = tmp_path / "evaluate_ddp.py"
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(corruptions=CORRUPTIONS, severities=SEVERITIES, n=N, sha=SHA, total=total))
    )
    path = tmp_path / "ddp.sqlite"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(path)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with ResultsStore(path) as store:
        frame = store.to_frame()
    ranks = [json.loads(extra)["rank"] for extra in frame["extra"]]
    assert sorted(ranks) == sorted([0, 1] * (total // 2))  # round-robin: half the cells each
    assert not frame.duplicated(["lambda_setting", "corruption", "severity"]).any()
    single = run(tiny(), tmp_path / "single.sqlite", lambdas=(None, 0.3))
    assert rows(frame) == rows(single.frame)


def test_without_stem_statistics_the_counts_are_the_same_and_the_statistics_absent(tmp_path):
    model = tiny()
    with_stats = run(model, tmp_path / "a.sqlite")
    without = run(model, tmp_path / "b.sqlite", stem_stats=False)
    assert rows(without.frame) == rows(with_stats.frame)  # (n, correct) of every cell
    assert without.frame["mean_recon_error"].isna().all() and with_stats.frame["mean_recon_error"].notna().all()
