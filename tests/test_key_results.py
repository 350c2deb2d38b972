"""The report's key results: one row per model and setting, numbers equal to the store, sentences that follow them."""

import re

import numpy as np
import pandas as pd
import pytest

from robust_csc.evaluation.outcomes import Outcomes
from robust_csc.evaluation.store import CellKey, ResultsStore
from robust_csc.reports import write_report
from robust_csc.reports.cells import Cells
from robust_csc.reports.key_results import evaluations, key_sentences, text_lines
from robust_csc.reports.names import naming, setting_label
from robust_csc.reports.tta import additions, answer, by_severity
from robust_csc.reports.uncertainty import paired_difference

SUITE, SPLIT, N = "digits-c[cifar]", "test[:200]", 200
CORRUPTIONS = ("gaussian_noise", "fog")
SHAS = {"resnet18": "b2" * 32, "sdnet18": "a1" * 32}
POLICY = "policy:0123456789ab"
TENT = "tent[adam,lr=0.001,betas=0.9/0.999,wd=0,steps=1,episodic,seed=0,bs=64]"
BN = "bn-adapt[N=0,seed=0,bs=64]"


def flags(correct, n, seed):
    """n per-example outcomes with `correct` right, at positions fixed by seed (nested for growing counts)."""
    order = np.random.default_rng(seed).permutation(n)
    out = np.zeros(n, dtype=bool)
    out[order[:correct]] = True
    return out


def add_cells(store, model, accuracy, lam="trained", split=SPLIT, n=N, seed=0, extra=None):
    """Clean and every (corruption, severity 1..2) cell of one series, accuracy(corruption, severity) right."""
    for corruption, severity in [("none", 0)] + [(c, s) for c in CORRUPTIONS for s in (1, 2)]:
        correct = int(round(accuracy(corruption, severity) * n))
        right = flags(correct, n, seed + severity)  # one image order per severity: models differ image by image
        store.add(CellKey(model, SHAS[model], SUITE, split, corruption, severity, lambda_setting=lam),
                  {"n": n, "correct": correct, "seconds": 0.1, "outcomes": Outcomes.first(right), "extra": extra or {}})


def add_worst(store, model, eps, correct, n, split, autoattack, attacks):
    """A worst-case attack cell as the attack runner writes it."""
    grade = "AutoAttack-grade" if autoattack else "upper bound: pgd only, not comparable with AutoAttack figures"
    store.add(CellKey(model, SHAS[model], "digits", split, attack="worst-case:Linf", epsilon=eps),
              {"n": n, "correct": correct, "seconds": 1.0, "outcomes": Outcomes.first(flags(correct, n, 7)),
               "extra": {"attacks": attacks, "autoattack_grade": autoattack, "grade": grade, "clean_correct": n,
                         "checks": {}}})


def cells_of(path):
    with ResultsStore(path) as store:
        return Cells.from_frame(store.to_frame())


def test_the_baseline_winning_is_said_so_and_rows_are_not_repeated_per_attack_series(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        add_cells(store, "resnet18", lambda c, s: 0.95 - 0.05 * s)  # the baseline: better everywhere
        add_cells(store, "sdnet18", lambda c, s: 0.95 - 0.20 * s)
        for model, robust in (("resnet18", 20), ("sdnet18", 5)):
            # two attack series per model: the AutoAttack headline on 32 images, a PGD curve on 100
            add_worst(store, model, 8 / 255, robust, 32, "test[:32]", True, ["autoattack-standard:Linf", "pgd:Linf"])
            add_worst(store, model, 8 / 255, robust * 2, 100, "test[:100]", False, ["pgd:Linf"])
            add_worst(store, model, 2 / 255, 60, 100, "test[:100]", False, ["pgd:Linf"])
    cells = cells_of(path)
    (evaluation,) = evaluations(cells, baseline="resnet18")
    assert [(r.model, r.setting) for r in evaluation.rows] == [("resnet18", "trained"), ("sdnet18", "trained")]
    sdnet = evaluation.rows[1]
    assert sdnet.robust[("Linf", 8 / 255)].n == 32 and sdnet.robust[("Linf", 8 / 255)].autoattack  # AA-grade wins
    assert sdnet.robust[("Linf", 2 / 255)].n == 100
    assert evaluation.headline == ("Linf", 8 / 255)
    # the differences are the paired tests of the store's own cells
    corrupted = cells.corruption[cells.corruption["corruption"] != "none"]
    expected = paired_difference(corrupted[corrupted["model"] == "sdnet18"], corrupted[corrupted["model"] == "resnet18"])
    assert sdnet.delta_corruption.difference == pytest.approx(expected.difference) and sdnet.delta_corruption.significant
    sentences = key_sentences(evaluation)
    assert "resnet18 has the higher mean corruption accuracy" in sentences[0]
    assert "87.5% against 65.0% for sdnet18" in sentences[0]  # the means of the cells: (90 + 85) / 2, (75 + 55) / 2
    assert "significant" in sentences[0] and "not significant" not in sentences[0]
    assert "resnet18 has the higher robust accuracy" in sentences[1] and "AutoAttack-grade, n = 32" in sentences[1]

    write_report(path, tmp_path / "report", baseline="resnet18")
    key = pd.read_csv(tmp_path / "report" / "tables" / "key_results.csv")
    assert list(key["model"]) == ["resnet18", "sdnet18"]  # one row each, whatever the attack series
    assert list(pd.read_csv(tmp_path / "report" / "tables" / "summary.csv")["model"]) == ["resnet18", "sdnet18"]
    row = key[key["model"] == "sdnet18"].iloc[0]
    clean = cells.corruption[(cells.corruption["model"] == "sdnet18") & (cells.corruption["corruption"] == "none")]
    assert row["clean"] == clean["correct"].iloc[0] / N
    assert row["corruptions"] == pytest.approx(corrupted[corrupted["model"] == "sdnet18"]["accuracy"].mean())
    assert row["L∞ 8/255"] == 5 / 32 and row["L∞ 8/255 n"] == 32 and row["L∞ 8/255 grade"] == "AutoAttack-grade"
    md = (tmp_path / "report" / "tables" / "key_results.md").read_text()
    assert "mCE" not in md.splitlines()[0]  # undefined here (2 corruptions): the empty column is dropped
    html = (tmp_path / "report" / "index.html").read_text()
    assert html.index("Key results") < html.index("Run settings")  # the answer first, provenance last
    assert "resnet18 has the higher mean corruption accuracy" in html


def test_a_difference_that_is_not_significant_is_never_called_a_gain(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        add_cells(store, "resnet18", lambda c, s: 0.90 - 0.05 * s)
        add_cells(store, "sdnet18", lambda c, s: 0.905 - 0.05 * s)  # one image better per cell: noise
        add_cells(store, "sdnet18", lambda c, s: 0.90 - 0.05 * s, lam="stem=0.5", seed=0)
    (evaluation,) = evaluations(cells_of(path), baseline="resnet18")
    sentences = key_sentences(evaluation)
    assert "sdnet18 and resnet18 do not differ significantly in mean corruption accuracy" in sentences[0]
    assert "not significant" in sentences[0] and "higher" not in sentences[0]
    assert "no setting raises it significantly" in sentences[-1] and "stem λ = 0.50" in sentences[-1]
    assert not any(re.search(r"\bgains?\b", s) for s in sentences)


def test_settings_have_readable_names_and_the_csv_keeps_the_store_names(tmp_path):
    path = tmp_path / "r.sqlite"
    report_split = f"{SPLIT}:report:s0"
    recon = {"rule": "recon", "per": "sample", "layers": "stem", "mean_lambda": 0.6}
    with ResultsStore(path) as store:
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.2 * s, split=report_split)
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.15 * s, lam=POLICY, split=report_split, extra=recon)
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.05 * s, lam=TENT, split=report_split)
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.05 * s, lam=f"{TENT}+{POLICY}", split=report_split,
                  extra=recon)
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.06 * s, lam=BN, split=report_split)
    cells = cells_of(path)
    with naming(cells.frame):
        assert setting_label(POLICY) == "recon rule, per sample (0123…)"
        assert setting_label(TENT) == "tent (Adam, lr 0.001, episodic, batch 64)"
        assert setting_label(BN) == "bn-adapt (N = 0, batch 64)"
        assert setting_label(f"{TENT}+{POLICY}") == "tent (Adam, lr 0.001, episodic, batch 64) + recon rule, per sample (0123…)"
        rows = cells.corruption
        table = by_severity(rows)
        assert list(table.frame["setting"])[:2] == ["trained λ", "recon rule, per sample (0123…)"]
        trained = rows[(rows["lambda_setting"] == "trained") & (rows["severity"] == 2)]
        assert table.frame.iloc[0]["severity 2"] == pytest.approx(trained["accuracy"].mean())
        comparisons = additions(rows)
        on_top = comparisons.frame[comparisons.frame["comparison"] == "λ on top of TTA"].iloc[0]
        assert on_top["Δ all cells"] == 0.0 and on_top["verdict all cells"] == "not significant"
        sentences = answer(comparisons)
        assert "adds nothing significant on top of test-time adaptation" in sentences[0]
    write_report(path, tmp_path / "report")
    key = pd.read_csv(tmp_path / "report" / "tables" / "key_results.csv")
    assert set(key["lambda_setting"]) == {"trained", POLICY, TENT, f"{TENT}+{POLICY}", BN}
    assert "recon rule, per sample (0123…)" in set(key["setting"])
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Lambda tuning and test-time adaptation" in html and "tent (Adam, lr 0.001, episodic, batch 64)" in html
    assert (tmp_path / "report" / "figures").glob("tta__*.png")


def test_lambda_tuning_that_adds_to_tta_is_said_to_add(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.3 * s)
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.2 * s, lam=TENT)
        add_cells(store, "sdnet18", lambda c, s: 0.9 - 0.05 * s, lam=f"{TENT}+stem=0.5")
    comparisons = additions(cells_of(path).corruption)
    assert "Lambda tuning adds to test-time adaptation here" in answer(comparisons)[0]


def test_console_text_is_the_reports_numbers(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        add_cells(store, "resnet18", lambda c, s: 0.95 - 0.05 * s)
        add_cells(store, "sdnet18", lambda c, s: 0.95 - 0.20 * s)
    lines = text_lines(cells_of(path), baseline="resnet18")
    assert lines[0].startswith(f"On {SUITE}, the first 200 test images")
    row = next(line for line in lines if line.strip().startswith("sdnet18"))
    clean = 0.95
    assert f"{clean * 100:.1f} [" in row
    assert any(line.startswith("  Δ sdnet18, trained λ vs resnet18, trained λ: corruptions ") for line in lines)
    assert any("resnet18 has the higher mean corruption accuracy" in line for line in lines)


def test_an_unfinished_row_gets_no_mean_and_no_difference_and_is_said_so(tmp_path):
    """A setting whose run stopped part-way (tent on 2 of the 4 cells): a mean over its cells would be a mean over
    other corruptions than its reference's, so its mean and difference are left out and the footnote says why."""
    from robust_csc.reports.key_results import footnote, key_frame

    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as store:
        add_cells(store, "sdnet18", lambda c, s: 0.90 - (0.3 if c == "fog" else 0.05) * s)
        add_cells(store, "sdnet18", lambda c, s: 0.90 - 0.02 * s, lam=TENT)
    with ResultsStore(path) as store:
        frame = store.to_frame()
    keep = ~((frame["lambda_setting"] == TENT) & (frame["corruption"] == "fog"))  # as if it stopped before fog
    cells = Cells.from_frame(frame[keep].reset_index(drop=True))
    (evaluation,) = evaluations(cells)
    tent = next(r for r in evaluation.rows if r.setting == TENT)
    trained = next(r for r in evaluation.rows if r.setting == "trained")
    assert (tent.missing, trained.missing) == (2, 0)
    assert np.isnan(tent.mean_corruption()) and tent.delta_corruption is None
    assert trained.mean_corruption() == pytest.approx(np.mean([0.85, 0.80, 0.60, 0.30]))
    table, _, _ = key_frame(evaluation)
    row = table[table["lambda_setting"] == TENT].iloc[0]
    assert np.isnan(row["corruptions"]) and np.isnan(row["corruptions low"]) and np.isnan(row["Δ corruptions"])
    assert "Not finished: sdnet18, tent" in footnote(evaluation) and "2 of 4 corruption cells" in footnote(evaluation)
    assert not any("raises it" in s for s in key_sentences(evaluation))  # no claim from the unfinished row
