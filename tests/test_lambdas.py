"""Lambda settings: names round-trip, and applied() sets exactly the layers it names, then restores."""

import pytest
import torch

from robust_csc.csc import get_lambda
from robust_csc.errors import RobustCSCError
from robust_csc.lambdas import LambdaSetting, as_setting, check_model_takes
from robust_csc.models import create_model


@pytest.fixture
def sdnet():
    model = create_model("sdnet18_all", num_classes=10, width=4)
    model.eval()
    return model


@pytest.mark.parametrize("text", ["trained", "0.5", "stem=0.25", "scale=1.5", "0"])
def test_names_round_trip(text):
    assert LambdaSetting.parse(text).name == text


def test_as_setting_converts_plain_values():
    assert as_setting(None) == LambdaSetting()
    assert as_setting(0.3) == LambdaSetting("all", 0.3)
    assert as_setting("stem=0.3") == LambdaSetting("stem", 0.3)


@pytest.mark.parametrize("bad", ["-1", "stem=x", "foo=1", "nan", "scale=0", "inf"])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(RobustCSCError):
        LambdaSetting.parse(bad)


def test_applied_sets_the_named_layers_and_restores(sdnet):
    trained = get_lambda(sdnet)
    names = list(trained)
    with LambdaSetting("stem", 0.7).applied(sdnet) as run:
        assert run is sdnet
        now = get_lambda(sdnet)
        assert now[names[0]] == 0.7
        assert all(now[n] == trained[n] for n in names[1:])
    with LambdaSetting("scale", 2.0).applied(sdnet):
        assert get_lambda(sdnet) == {n: 2.0 * v for n, v in trained.items()}
    with pytest.raises(RuntimeError):
        with LambdaSetting("all", 0.9).applied(sdnet):
            assert set(get_lambda(sdnet).values()) == {0.9}
            raise RuntimeError("boom")
    assert get_lambda(sdnet) == trained


def test_applied_changes_the_output(sdnet):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        base = sdnet(x)
        with LambdaSetting("all", 5.0).applied(sdnet) as run:
            sparse = run(x)
    assert not torch.allclose(base, sparse)


def test_model_without_csc_refuses_a_lambda():
    resnet = create_model("resnet18", num_classes=10, width=4)
    check_model_takes(resnet, LambdaSetting(), "resnet18")
    with pytest.raises(RobustCSCError, match="no CSC layers"):
        check_model_takes(resnet, LambdaSetting("all", 0.2), "resnet18")
