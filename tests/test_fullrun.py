"""The full-size run's every step, small: fake Fashion-MNIST files in the published format, width-4 models,
one epoch, five corruptions, a few attacked points; the same code as `robust-csc demo --dataset fashion-mnist --full`."""

import pandas as pd
import pytest
from idx_support import write_fake_dataset

import robust_csc.data.mnist as mnist
from robust_csc.errors import RobustCSCError
from robust_csc.evaluation.store import ResultsStore
from robust_csc.fullrun import NOISE, Sizes, run_full
from robust_csc.tuning import load_policy

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = Sizes(width=4, epochs=1, grid=(0.1, 0.5), attack_points=8, policy_attack_points=4, batch_size=32,
             headline_attacks=("autoattack[attacks=apgd-ce,steps=2]", "pgd"), corruptions=NOISE + ("fog",))


@pytest.fixture()
def fake_fashion(tmp_path, monkeypatch):
    """A Fashion-MNIST folder of 64 training and 24 test images; the published counts and MD5s are not theirs."""
    write_fake_dataset(tmp_path / "data", n_train=64, n_test=24)
    original = mnist.read_split
    monkeypatch.setattr(mnist, "read_split", lambda name, split, root=None, verify_checksums=True:
                        original(name, split, root, False))
    return tmp_path / "data"


def test_every_step_of_the_full_run(tmp_path, fake_fashion):
    lines = []
    result = run_full(tmp_path / "run", dataset="fashion-mnist", data_root=fake_fashion, sizes=TINY, processes=0,
                      echo=lines.append)
    assert lines[-1] == f"report: {result['report']}"
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        frame = store.to_frame()
    corruption = frame[(frame["attack"] == "none") & (frame["split"] == "test") & (frame["lambda_setting"] == "trained")]
    for model in ("sdnet18", "resnet18"):
        cells = corruption[corruption["model"] == model]
        assert len(cells) == 1 + 5 * 5 and set(cells["n"]) == {24}  # clean + every cell, every test image
    report = frame[frame["split"] == "test:report:s0"]
    settings = set(report.loc[report["model"] == "sdnet18", "lambda_setting"])
    assert {"trained"} < settings and any(s.startswith("policy:") for s in settings)
    assert any(s.startswith("bn-adapt") for s in settings) and any(s.startswith("tent") and "+policy:" in s for s in settings)
    assert any(s.startswith("tent") for s in set(report.loc[report["model"] == "resnet18", "lambda_setting"]))
    assert set(report["n"]) == {12}  # the reporting half of the 24 test images
    attacks = set(frame["attack"])
    assert {"pgd:Linf", "worst-case:Linf", "autoattack-custom-2[attacks=apgd-ce]:Linf", "pgd~bpda-fixed:Linf"} <= attacks
    curve = pd.read_csv(tmp_path / "run" / "noise_curve.csv")
    policy = load_policy(tmp_path / "run" / "lambda_policy.json").name  # the recon rule (the oracle is stored too)
    assert set(curve["lambda_setting"]) == {"trained", "stem=0.4", "stem=1", policy}
    stored_curve = frame[frame["dataset"] == "fashion-mnist-noise"]  # the curve in the store, for the report
    assert len(stored_curve) == 7 * 4 and set(stored_curve["n"]) == {12} and set(stored_curve["split"]) == {"test:report:s0"}
    assert (tmp_path / "run" / "report" / "index.html").is_file()

    # Run again: every step finds its work done.
    before = len(frame)
    run_full(tmp_path / "run", dataset="fashion-mnist", data_root=fake_fashion, sizes=TINY, processes=0, echo=lines.append)
    with ResultsStore(tmp_path / "run" / "results.sqlite") as store:
        assert len(store) == before


def test_only_the_idx_data_sets_have_a_full_run(tmp_path):
    with pytest.raises(RobustCSCError, match="made for fashion-mnist, mnist"):
        run_full(tmp_path, dataset="digits")
