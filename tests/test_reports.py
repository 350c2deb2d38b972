"""Report tables and plots against the store's own cells, byte-identical reruns, and refused input."""

import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.stats import mcnemar, wilson_interval
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.lambdas import LambdaSetting
from robust_csc.models import create_model
from robust_csc.models.checkpoints import checkpoint_hash, save_checkpoint
from robust_csc.reports import build_report, write_report
from robust_csc.reports.cells import Cells, Series, series_of
from robust_csc.reports.model_plots import atom_mosaic, examples_figure, stem_reconstruction
from robust_csc.reports.tables import severity_table
from test_reports_store import (
    CORRUPTIONS,
    EPSILONS,
    GRID,
    NOISE,
    POLICY,
    REPORT_SPLIT,
    RESNET_SHA,
    SDNET_SHA,
    SPLIT,
    SUITE,
    add_attack_cells,
    add_corruption_cells,
    demo_store,
)

pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("sdnet18", num_classes=10, width=8)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "sdnet18.safetensors", model, dataset="digits")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, checkpoint):
    """A demo-sized store and its report (with the checkpoint's plots): (store path, report folder, tuned lambdas)."""
    root = tmp_path_factory.mktemp("demo")
    chosen = demo_store(root / "results.sqlite", sdnet_sha=checkpoint_hash(checkpoint))
    write_report(root / "results.sqlite", root / "report", baseline="resnet18", checkpoints=[checkpoint])
    return root / "results.sqlite", root / "report", chosen


def store_frame(path):
    with ResultsStore(path) as store:
        return store.to_frame()


def read_csv(path):
    return pd.read_csv(path, keep_default_na=True)


# ---------------------------------------------------------------- tables = stored cells


def test_corruption_tables_equal_the_stored_cells(demo):
    store, report, _ = demo
    frame = store_frame(store)
    frame = frame[(frame["attack"] == "none") & ~frame["split"].str.contains(":tune:")]
    checked = 0
    for key, rows in frame.groupby(["model", "checkpoint_sha256", "dataset", "split", "lambda_setting"]):
        table = read_csv(report / "tables" / f"corruptions__{Series(*key).slug()}.csv").set_index("corruption")
        cells = {(r.corruption, r.severity): r.correct / r.n for r in rows.itertuples() if r.corruption != "none"}
        names = {c for c, _ in cells}
        # rows in Hendrycks' order, then the extras; then the mean row
        assert list(table.index) == [c for c in (*COMMON, *EXTRA) if c in names] + ["mean"]
        for (corruption, severity), acc in cells.items():
            assert table.loc[corruption, str(severity)] == acc  # exactly: full precision in the CSV
        corruptions = list(table.index[:-1])
        for c in corruptions:  # means written out from the definition
            values = [cells[(c, s)] for s in range(1, 6)]
            assert table.loc[c, "mean"] == pytest.approx(sum(values) / 5, abs=1e-12)
        for column in ["1", "2", "3", "4", "5", "mean"]:
            column_values = [table.loc[c, column] for c in corruptions]
            assert table.loc["mean", column] == pytest.approx(sum(column_values) / len(column_values), abs=1e-12)
        checked += 1
    assert checked == 5  # resnet18, sdnet18 trained and 0.3, and the reporting split's trained and policy


def test_latex_has_booktabs_and_one_row_per_corruption(demo):
    _, report, _ = demo
    tex = next((report / "tables").glob("corruptions__resnet18__*.tex")).read_text()
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1 and tex.count(r"\midrule") == 2
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    rows = [line for line in body.splitlines() if line.rstrip().endswith(r"\\")]
    assert len(rows) == len(CORRUPTIONS) + 1  # + the mean row
    assert rows[0].startswith(r"gaussian\_noise &") and rows[-1].startswith("mean &")
    assert r"\begin{table}" in tex and r"\caption{" in tex and r"\label{tab:corruptions__resnet18" in tex
    # percent with one decimal and half the 95% Wilson interval: resnet18's gaussian noise severity 1 is 170/200
    low, high = wilson_interval(170, 200)
    assert f"85.0 ±{(high - low) * 50:.1f}" in rows[0]
    md = next((report / "tables").glob("corruptions__resnet18__*.md")).read_text().splitlines()
    assert len(md) == 2 + len(CORRUPTIONS) + 1 and md[1].startswith("|---") and md[-1].startswith("| mean")


def test_summary_and_attack_and_tuning_tables_equal_the_store(demo):
    store, report, chosen = demo
    frame = store_frame(store)
    summary = read_csv(report / "tables" / "summary.csv")
    trained = frame[(frame["model"] == "resnet18") & (frame["split"] == SPLIT) & (frame["attack"] == "none")]
    row = summary[(summary["model"] == "resnet18") & (summary["corruption_data"] == f"{SUITE} {SPLIT}")].iloc[0]
    clean = trained[trained["corruption"] == "none"].iloc[0]
    assert row["clean"] == clean["correct"] / clean["n"]
    assert (row["clean low"], row["clean high"]) == pytest.approx(wilson_interval(int(clean["correct"]), int(clean["n"])))
    corrupted = trained[trained["corruption"] != "none"]
    assert row["mean_cells_run"] == pytest.approx(sum(corrupted["correct"] / corrupted["n"]) / len(corrupted), abs=1e-12)
    assert row["mean_cells_run low"] < row["mean_cells_run"] < row["mean_cells_run high"]
    assert row["cells_run"] == 50 and math.isnan(row["mean_75"]) and math.isnan(row["mce"])  # 10 of 15 corruptions
    assert len(summary[summary["model"] == "resnet18"]) == 1  # one row per corruption series, never per attack series

    robustness = read_csv(report / "tables" / "robustness.csv")
    resnet = robustness[robustness["model"] == "resnet18"].iloc[0]
    attacks = frame[(frame["model"] == "resnet18") & (frame["attack"] == "pgd:Linf")]
    for eps, correct, n in zip(attacks["epsilon"], attacks["correct"], attacks["n"]):
        assert resnet[f"pgd Linf {round(eps * 255)}/255"] == correct / n
    assert resnet["attack_data"] == "digits test[:100]"
    key = read_csv(report / "tables" / "key_results.csv")
    key_row = key[(key["model"] == "resnet18") & (key["lambda_setting"] == "trained")].iloc[0]
    worst = frame[(frame["model"] == "resnet18") & (frame["attack"] == "worst-case:Linf")]
    for eps, correct, n in zip(worst["epsilon"], worst["correct"], worst["n"]):
        assert key_row[f"L∞ {round(eps * 255)}/255"] == correct / n  # the worst case, in the key results
    assert key_row["clean"] == row["clean"] and key_row["corruptions"] == pytest.approx(row["mean_cells_run"])
    assert list(robustness["checks_passed"]) == ["8/8", "8/8"]  # 2 checks in each of the 4 worst-case cells
    assert [c for c in robustness.columns if c.startswith("worst-case") and not c.endswith(("low", "high"))] == [
        f"worst-case Linf {k}/255" for k in (1, 2, 4, 8)
    ]
    assert list(robustness["evaluation"]) == ["upper bound: fgsm, pgd only, not comparable with AutoAttack figures"] * 2

    tuning = read_csv(report / "tables" / "lambda_tuning.csv")
    policy = frame[frame["lambda_setting"] == POLICY]
    base = frame[(frame["split"] == REPORT_SPLIT) & (frame["lambda_setting"] == "trained")]
    assert len(tuning) == len(policy) == 11
    for r in tuning.to_dict("records"):
        corruption = "none" if r["corruption"] == "clean" else r["corruption"]
        severity = r["severity"]
        assert r["lambda"] == pytest.approx(chosen[(corruption, severity)])
        tuned = policy[(policy["corruption"] == corruption) & (policy["severity"] == severity)].iloc[0]
        untuned = base[(base["corruption"] == corruption) & (base["severity"] == severity)].iloc[0]
        assert r["acc_tuned"] == tuned["correct"] / tuned["n"] and r["acc_trained"] == untuned["correct"] / untuned["n"]
        assert r["gain"] == pytest.approx(r["acc_tuned"] - r["acc_trained"], abs=1e-12)
        assert (r["rule"], r["layers"], r["policy"]) == ("grid", "stem", POLICY)
        flags = [Outcomes.from_json(x["outcomes"]).correct for x in (tuned, untuned)]
        assert r["p_value"] == pytest.approx(mcnemar(*flags).p_value)
        assert r["verdict"] == ("significant" if r["p_value"] < 0.05 else "not significant")
        assert r["gain low"] <= r["gain"] <= r["gain high"]

    # RobustBench's per-corruption results: a row per series, a (corruption, severity) column per cell
    results = report / "robustbench" / "model_info" / "digits-c-cifar" / "corruptions" / "unaggregated_results.csv"
    wide = pd.read_csv(results, header=[0, 1], index_col=0)
    assert len(wide) == 5 and list(wide.columns[:2]) == [("gaussian_noise", "1"), ("gaussian_noise", "2")]
    cell = frame[(frame["model"] == "sdnet18") & (frame["lambda_setting"] == "0.3") & (frame["corruption"] == "fog")
                 & (frame["severity"] == 4)].iloc[0]
    assert wide.loc[f"sdnet18_{cell['checkpoint_sha256'][:8]}_0.3_test-200", ("fog", "4")] == cell["correct"] / cell["n"]


def test_mce_against_a_hand_computed_value(tmp_path):
    """mCE with all 15 common corruptions, from the definition: CE_c = sum_s E / sum_s E_base, averaged."""
    path = tmp_path / "full.sqlite"
    with ResultsStore(path) as store:
        add_corruption_cells(store, "sdnet18", SDNET_SHA, corruptions=COMMON)
        add_corruption_cells(store, "resnet18", RESNET_SHA, corruptions=COMMON)
    write_report(path, tmp_path / "r", baseline="resnet18", models=["sdnet18"])
    frame = store_frame(path)
    err = {}
    for r in frame.itertuples():
        err[(r.model, r.corruption, r.severity)] = 1 - r.correct / r.n
    ces = [
        sum(err[("sdnet18", c, s)] for s in range(1, 6)) / sum(err[("resnet18", c, s)] for s in range(1, 6))
        for c in COMMON
    ]
    summary = read_csv(tmp_path / "r" / "tables" / "summary.csv")
    assert list(summary["model"]) == ["sdnet18"]  # --models hides the baseline's own row
    assert summary["mce"].iloc[0] == pytest.approx(sum(ces) / 15, rel=1e-12)
    mean75 = sum(1 - err[("sdnet18", c, s)] for c in COMMON for s in range(1, 6)) / 75
    assert summary["mean_75"].iloc[0] == pytest.approx(mean75, rel=1e-12)
    sev5 = sum(1 - err[("sdnet18", c, 5)] for c in COMMON) / 15
    assert summary["severity5_mean"].iloc[0] == pytest.approx(sev5, rel=1e-12)


def test_rerun_gives_byte_identical_tables(demo, checkpoint, tmp_path):
    store, report, _ = demo
    again = write_report(store, tmp_path / "again", baseline="resnet18", checkpoints=[checkpoint]).parent
    first = sorted(p.relative_to(report) for p in (report / "tables").iterdir())
    second = sorted(p.relative_to(again) for p in (again / "tables").iterdir())
    # 2 key-results tables, 5 corruption tables, summary, comparisons, robustness, tuning and runs as CSV, MD and TeX
    assert first == second and len(first) == 12 * 3
    for name in first:
        assert (report / name).read_bytes() == (again / name).read_bytes(), name
    # RobustBench's files too
    first = sorted(p.relative_to(report) for p in (report / "robustbench").rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in (again / "robustbench").rglob("*") if p.is_file())
    assert first == second and len(first) > 5
    for name in first:
        assert (report / name).read_bytes() == (again / name).read_bytes(), name
    # The PDFs carry no creation date either.
    for pdf in (report / "figures").glob("*.pdf"):
        assert pdf.read_bytes() == (again / "figures" / pdf.name).read_bytes(), pdf.name


# ---------------------------------------------------------------- plots


def test_every_plot_file_is_written_and_non_empty(demo):
    _, report, _ = demo
    pngs = sorted(p.stem for p in (report / "figures").glob("*.png"))
    pdfs = sorted(p.stem for p in (report / "figures").glob("*.pdf"))
    assert pngs == pdfs
    prefixes = [name.split("__")[0] for name in pngs]
    assert {p: prefixes.count(p) for p in set(prefixes)} == {
        "severity": 2, "heatmap": 5, "epsilon": 1, "chosen_lambda": 1, "lambda_accuracy": 1,
        "lambda_sparsity": 1, "atoms": 1, "examples": 1,
    }
    for path in (report / "figures").iterdir():
        assert path.stat().st_size > 1000, path
        assert path.read_bytes()[:4] in (b"\x89PNG", b"%PDF")
    md = (report / "report.md").read_text()
    assert md.count("![") == 13 and md.count(".png)") == 13 and "| corruption" in md


def test_plot_line_and_cell_counts(demo, tmp_path):
    store, _, chosen = demo
    with ResultsStore(store) as results:
        cells = Cells.from_frame(results.to_frame())
    report = build_report(cells, tmp_path, keep_figures=True)
    figures = report.figures

    severity = figures["severity__digits-c_cifar___test_200"]
    panels = [ax for ax in severity.axes if ax.get_visible()]
    assert len(panels) == len(CORRUPTIONS)
    assert all(len(ax.lines) == 3 for ax in panels)  # resnet18, sdnet18 trained, sdnet18 0.3
    assert [len(line.get_xdata()) for line in panels[0].lines] == [6, 6, 6]  # clean + 5 severities

    heat = next(f for name, f in figures.items() if name.startswith("heatmap__resnet18"))
    assert heat.axes[0].images[0].get_array().shape == (len(CORRUPTIONS), 5)

    eps = next(f for name, f in figures.items() if name.startswith("epsilon__"))
    assert len(eps.axes[0].lines) == 6  # 2 models x (fgsm, pgd, worst case)
    # each line starts at epsilon 0 (the clean accuracy of the attacked points, in %), then one point per epsilon,
    # shifted sideways by less than half the smallest gap so that overlapping lines stay apart
    for line in eps.axes[0].lines:
        xs, ys = line.get_xdata(), line.get_ydata()
        assert len(xs) == len(EPSILONS) + 1 and abs(xs[0]) < EPSILONS[0] / 2 and ys[0] == pytest.approx(95.0)
        assert [round(x * 255) for x in xs[1:]] == [round(e * 255) for e in EPSILONS]
    assert len({(line.get_marker(), line.get_linestyle(), line.get_color()) for line in eps.axes[0].lines}) == 6
    assert eps.axes[0].get_ylabel() == "robust accuracy (%)" and "pixel values" in eps.axes[0].get_xlabel()
    assert all(ax.get_ylabel() == "accuracy (%)" for ax in severity.axes if ax.get_visible() and ax.get_ylabel())

    sweep = next(f for name, f in figures.items() if name.startswith("lambda_accuracy__"))
    panels = [ax for ax in sweep.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["clean", "gaussian noise", "shot noise"]
    assert [len(ax.lines) for ax in panels] == [1, 5, 5]
    assert all(len(line.get_xdata()) == len(GRID) for ax in panels for line in ax.lines)
    # The stars sit at the policy's chosen lambdas.
    stars = panels[1].collections[0].get_offsets()
    assert list(stars[:, 0]) == pytest.approx([chosen[("gaussian_noise", s)] for s in range(1, 6)])

    chosen_fig = next(f for name, f in figures.items() if name.startswith("chosen_lambda__"))
    lines = chosen_fig.axes[0].lines
    assert len(lines) == len(NOISE)
    assert list(lines[0].get_ydata()) == pytest.approx([chosen[("none", 0)]] + [chosen[("gaussian_noise", s)] for s in range(1, 6)])

    sparsity = next(f for name, f in figures.items() if name.startswith("lambda_sparsity__"))
    assert len(sparsity.axes) == 6 and [len(ax.lines) for ax in sparsity.axes] == [1, 5, 5, 1, 5, 5]
    assert "atoms__" not in " ".join(figures)  # no checkpoint given: those plots are skipped, and said so
    assert any("pass its checkpoint" in note for note in report.notes)


def test_severity_table_of_a_partial_series_has_nan_means():
    frame = pd.DataFrame(
        {"model": "m", "corruption": ["fog", "fog", "contrast"], "severity": [1, 2, 1], "n": 10, "correct": [9, 8, 7],
         "attack": "none"}
    )
    series = series_of(frame.assign(checkpoint_sha256="x", dataset="d", split="s", lambda_setting="trained"))[0]
    table, _ = severity_table(frame, series)
    assert list(table.index) == ["fog", "contrast", "mean"]  # Hendrycks' order, not insertion order
    assert table.loc["fog", "1"] == 0.9 and math.isnan(table.loc["fog", "mean"])  # fog lacks severities 3-5
    assert table.loc["mean", "1"] == pytest.approx(0.8) and math.isnan(table.loc["mean", "2"])  # contrast lacks 2


# ---------------------------------------------------------------- the model's plots


def test_stem_reconstruction_matches_the_definition(checkpoint):
    from robust_csc.models.checkpoints import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    setting = LambdaSetting("stem", 0.4)
    got = stem_reconstruction(model, images, setting)
    # From the definition: the stem's code of the normalised images at lambda 0.4, synthesised by
    # conv_transpose2d with unit-norm atoms, then mapped back to pixels.
    stem = model.stem[0]
    with torch.no_grad(), setting.applied(model):
        z = stem(model.normalize(images))
    atoms = stem.weight / stem.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    recon = F.conv_transpose2d(z, atoms, padding=1)
    expected = (recon * model.normalize.std + model.normalize.mean).clamp(0, 1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert stem.lam == pytest.approx(0.1)  # the setting was undone
    other = stem_reconstruction(model, images, LambdaSetting())
    assert not torch.allclose(got, other)  # the lambda reaches the code

    mosaic = atom_mosaic(stem.weight)
    assert mosaic.shape == (3 * 4 + 1, 3 * 4 + 1, 3)  # 8 atoms of 3x3 on a 3x3 grid with 1-pixel gaps
    figure = examples_figure([("clean", images), ("recon", got)], "t")
    assert sum(len(ax.images) for ax in figure.axes) == 6


def test_report_with_checkpoint_shows_atoms_and_examples(demo):
    _, report, _ = demo
    html = (report / "index.html").read_text()
    assert "Stem dictionary of sdnet18" in html and "tuned lambda stem=1" in html  # gaussian severity 5's lambda
    assert html.count("data:image/png;base64,") == 13


# ---------------------------------------------------------------- the real harness


def test_report_on_a_store_the_harness_wrote(tmp_path):
    from robust_csc.data.generated import generated_clean, generated_suite
    from robust_csc.evaluation.harness import evaluate_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "sd.safetensors", create_model("sdnet18", num_classes=10, width=4), dataset="digits")
    torch.manual_seed(1)
    base = save_checkpoint(tmp_path / "rn.safetensors", create_model("resnet18", num_classes=10, width=4), dataset="digits")
    suite = generated_suite("digits", corruptions=["gaussian_noise", "fog"], severities=[1, 3], n_examples=6)
    store = tmp_path / "r.sqlite"
    for ck, lambdas in ((path, [None, 0.5]), (base, [None])):
        evaluate_checkpoint(ck, suite, store=store, lambdas=lambdas, clean=generated_clean("digits", n_examples=6),
                            dataset=suite.name, split="test[:6]", batch_size=6)
    page = write_report(store, tmp_path / "out", baseline="resnet18", checkpoints=[path, base])
    frame = store_frame(store)
    tables = sorted((tmp_path / "out" / "tables").glob("corruptions__*.csv"))
    assert len(tables) == 3
    for table_path in tables:
        table = read_csv(table_path).set_index("corruption")
        model = table_path.name.split("__")[1]
        lam = "0.5" if table_path.stem.endswith("_0.5") else "trained"
        rows = frame[(frame["model"] == model) & (frame["lambda_setting"] == lam)]
        for r in rows.itertuples():
            if r.corruption != "none":
                assert table.loc[r.corruption, str(r.severity)] == r.correct / r.n
        assert math.isnan(table.loc["fog", "2"])  # severity 2 was not run
    html = page.read_text()
    assert "resnet18 (checkpoint" in html and "has no CSC layer" in html  # the baseline has no dictionary
    assert "No attack cells" in html and "No lambda tuning cells" in html


# ---------------------------------------------------------------- refused input


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_bad_input_is_refused_and_nothing_is_written(tmp_path, demo, checkpoint):
    store, _, _ = demo
    out = tmp_path / "out"
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    cases = [
        (dict(store=empty), "holds no result cells"),
        (dict(store=tmp_path / "missing.sqlite"), "no results store at"),
        (dict(models=["vit"]), "model vit is not in the store"),
        (dict(baseline="alexnet"), "baseline 'alexnet' is not in the store"),
        (dict(checkpoints=[tmp_path / "nope.safetensors"]), "no checkpoint at"),
    ]
    before = leftovers(tmp_path)
    for kwargs, message in cases:
        kwargs = {"store": store, **kwargs}
        with pytest.raises(RobustCSCError, match=message):
            write_report(kwargs.pop("store"), out, **kwargs)
        assert leftovers(tmp_path) == before and not out.exists()
    assert not (tmp_path / "missing.sqlite").exists()  # never created by a report

    other = save_checkpoint(tmp_path / "other.safetensors", create_model("resnet18", num_classes=10, width=4))
    with pytest.raises(RobustCSCError, match="matches no series"):
        write_report(store, out, checkpoints=[other])
    with pytest.raises(RobustCSCError, match="matches no series"):  # a checkpoint of a model left out by --models
        write_report(store, out, models=["resnet18"], checkpoints=[checkpoint])

    (tmp_path / "file").write_text("x")
    with pytest.raises(RobustCSCError, match="is a file, not a folder"):
        write_report(store, tmp_path / "file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(RobustCSCError, match="not an earlier report"):
        write_report(store, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_failed_sanity_checks_are_shown(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        add_attack_cells(store, "sdnet18", SDNET_SHA, checks_fail=True)
    page = write_report(path, tmp_path / "out")
    assert list(read_csv(tmp_path / "out" / "tables" / "robustness.csv")["checks_passed"]) == ["4/8"]
    html = page.read_text()
    # one note per failed check (in its section and in the closing notes), naming every budget it failed at
    assert html.count("Sanity check gradients failed for sdnet18") == 2
    assert "worst-case:Linf 1/255, worst-case:Linf 2/255, worst-case:Linf 4/255, worst-case:Linf 8/255" in html
    assert "No corruption cells in the store" in html


def test_store_of_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    with ResultsStore(path) as store:
        store.add(CellKey("m", "s" * 64, "d", "test"), {"n": 1, "correct": 1, "seconds": 0.0})
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(RobustCSCError, match="schema version 99, newer than .* upgrade robust-csc"):
        write_report(path, tmp_path / "out")
    assert leftovers(tmp_path) == ["new.sqlite"]


def test_an_earlier_report_is_replaced_only_when_the_new_one_is_complete(tmp_path, monkeypatch):
    store = tmp_path / "small.sqlite"
    with ResultsStore(store) as results:
        add_corruption_cells(results, "sdnet18", SDNET_SHA, corruptions=("fog",), severities=(1,))
        add_corruption_cells(results, "resnet18", RESNET_SHA, corruptions=("fog",), severities=(1,))
    out = tmp_path / "report"
    write_report(store, out, models=["resnet18"])
    first = (out / "index.html").read_text()
    assert "sdnet18" not in first.split("<h1>")[1].split("</h1>")[0]

    import robust_csc.reports.build as build

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "render_html", broken)
    with pytest.raises(RuntimeError):
        write_report(store, out)
    assert (out / "index.html").read_text() == first  # the old report is intact
    assert leftovers(tmp_path) == ["report", "small.sqlite"]  # and the half-built one is gone
    monkeypatch.undo()
    write_report(store, out)
    assert "sdnet18" in (out / "index.html").read_text().split("</h1>")[0]
    assert leftovers(tmp_path) == ["report", "small.sqlite"]


def test_epsilon_plot_leaves_out_check_cells_and_marks_a_single_budget(demo, tmp_path):
    """A sanity check's cell (it attacks only the points the others left robust) is no line of its own, and an
    attack run at one budget (AutoAttack at 8/255) is a marker, not a line drawn from the clean point across."""
    import shutil

    from test_reports_store import correct_of, outcomes

    store = tmp_path / "results.sqlite"
    shutil.copyfile(demo[0], store)
    n, eps = 100, EPSILONS[-1]
    with ResultsStore(store) as results:
        for attack, correct in (("pgd-40x2~check:Linf", 93), ("autoattack-standard:Linf", 1)):
            results.add(CellKey("resnet18", RESNET_SHA, "digits", "test[:100]", attack=attack, epsilon=eps),
                        {"n": n, "correct": correct, "seconds": 1.0,
                         "extra": {"seed": 0, "clean_correct": correct_of(0.95, n)},
                         "outcomes": outcomes(correct, n, "resnet18", eps, attack)})
        cells = Cells.from_frame(results.to_frame())
    figures = build_report(cells, tmp_path / "report", keep_figures=True).figures
    lines = next(f for name, f in figures.items() if name.startswith("epsilon__")).axes[0].lines
    labels = [line.get_label() for line in lines]
    assert len(lines) == 7 and not any("check" in label for label in labels)  # 2 x (fgsm, pgd, worst case) + AA
    marker = next(line for line in lines if "AutoAttack" in line.get_label())
    assert len(marker.get_xdata()) == 1 and marker.get_linestyle() == "None"
    assert round(marker.get_xdata()[0] * 255) == 8 and marker.get_ydata()[0] == pytest.approx(1.0)
