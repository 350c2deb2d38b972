"""`robust-csc report`: end to end, and one-line errors with nothing written."""

import sqlite3

import pandas as pd
import pytest
import torch

from cli_support import assert_proc_error, assert_user_error, cli, run_main
from robust_csc.evaluation.store import SCHEMA_VERSION, ResultsStore
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint
from test_reports_store import RESNET_SHA, add_attack_cells, add_corruption_cells

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def small(tmp_path):
    """A store with two models on two corruptions and one attack, and the SDNet's checkpoint."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "sd.safetensors", create_model("sdnet18", num_classes=10, width=4),
                                 dataset="digits")
    sha = checkpoint_hash(checkpoint)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        add_corruption_cells(store, "sdnet18", sha, corruptions=("gaussian_noise", "fog"), severities=(1, 5))
        add_corruption_cells(store, "resnet18", RESNET_SHA, corruptions=("gaussian_noise", "fog"), severities=(1, 5))
        add_attack_cells(store, "sdnet18", sha)
    return tmp_path / "r.sqlite", checkpoint


def test_report_end_to_end(capsys, tmp_path, small):
    store, checkpoint = small
    out = tmp_path / "reports" / "first"
    code, stdout, stderr = run_main(capsys, "report", "--store", store, "--out", out, "--baseline", "resnet18",
                                    "--models", "sdnet18,resnet18", "--checkpoint", checkpoint, "--title", "Digits")
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[-1] == str(out / "index.html")  # the HTML path comes last
    # the key results first, as the page opens with them
    assert lines[0] == "On digits-c[cifar], the first 200 test images (accuracy in %, [95% interval]):"
    assert any("mean corruption accuracy" in line for line in lines)
    # key results, runs, summary, comparisons, robustness, 2 corruption tables; severity, 2 heatmaps, epsilon,
    # atoms, examples
    wrote = next(line for line in lines if line.startswith("wrote "))
    assert "wrote 7 tables" in wrote and "6 plots" in wrote
    assert stderr.strip().splitlines()[-2].startswith("done in ") and f"wrote {out}" in stderr
    html = (out / "index.html").read_text()
    assert "<title>Digits</title>" in html and "Stem dictionary of sdnet18" in html
    summary = pd.read_csv(out / "tables" / "summary.csv")
    assert sorted(summary["model"]) == ["resnet18", "sdnet18"]
    # --models narrows the report; rerunning into the same folder replaces the report
    code, stdout, _ = run_main(capsys, "report", "--store", store, "--out", out, "--models", "resnet18")
    assert code == 0 and list(pd.read_csv(out / "tables" / "summary.csv")["model"]) == ["resnet18"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["first"]


def _nothing_written(tmp_path, before):
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, small):
    store, checkpoint = small
    out = tmp_path / "out"
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    newer = tmp_path / "newer.sqlite"
    with ResultsStore(newer) as s:
        add_corruption_cells(s, "resnet18", RESNET_SHA, corruptions=("fog",), severities=(1,))
    conn = sqlite3.connect(newer)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.close()
    (tmp_path / "a_file").write_text("not a folder")
    other = save_checkpoint(tmp_path / "other.safetensors", create_model("resnet18", num_classes=10, width=4))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cases = [
        (["--store", empty, "--out", out], ["holds no result cells", "robust-csc evaluate"]),
        (["--store", store, "--out", out, "--models", "vit_b16"], ["model vit_b16 is not in the store", "resnet18, sdnet18"]),
        (["--store", store, "--out", tmp_path / "a_file"], ["is a file, not a folder", "--out"]),
        (["--store", newer, "--out", out], [f"schema version {SCHEMA_VERSION + 1}", "upgrade robust-csc"]),
        (["--store", store, "--out", out, "--baseline", "alexnet"], ["baseline 'alexnet' is not in the store"]),
        (["--store", store, "--out", out, "--checkpoint", other], ["matches no series", "drop --checkpoint"]),
        (["--store", tmp_path / "missing.sqlite", "--out", out], ["no results store at"]),
    ]
    for args, fragments in cases:
        assert_user_error(*run_main(capsys, "report", *args), *fragments)
        _nothing_written(tmp_path, before)


def test_console_script_error(tmp_path):
    proc = cli("report", "--store", tmp_path / "missing.sqlite", "--out", tmp_path / "out")
    assert_proc_error(proc, "no results store at", "--store")
    assert not (tmp_path / "out").exists() and not (tmp_path / "missing.sqlite").exists()
