"""Model zoo tests: every registered model, both stems, the architecture facts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robust_csc.csc import CSCConv2d, csc_layers
from robust_csc.errors import RobustCSCError
from robust_csc.models import create_model, list_models, model_arguments

EXPECTED_MODELS = {"resnet18", "resnet34", "sdnet18", "sdnet34", "sdnet18_all", "sdnet34_all"}
STEM_INPUT = {"cifar": 32, "imagenet": 64}
BLOCKS = {"18": [2, 2, 2, 2], "34": [3, 4, 6, 3]}

# The published normalisation statistics (CIFAR: the SDNet training recipe).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


pytestmark = pytest.mark.usefixtures("one_thread")


def depth(name: str) -> str:
    return "34" if "34" in name else "18"


def test_registry_lists_the_zoo():
    names = list_models()
    assert names == sorted(names)
    assert EXPECTED_MODELS <= set(names)
    assert set(list_models("sdnet*")) == {n for n in names if n.startswith("sdnet")}
    assert list_models("nothing*") == []


# ----------------------------------------------------------------------------
# Every model, both stems: logits and gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_logits_shape_and_gradients(name, stem):
    assert name in list_models()
    size = STEM_INPUT[stem]
    torch.manual_seed(0)
    for num_classes in (1, 7, 10):
        model = create_model(name, num_classes=num_classes, stem=stem, width=4)
        x = torch.rand(2, 3, size, size)
        out = model.eval()(x)
        assert type(out) is torch.Tensor and out.shape == (2, num_classes)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert model.config["arch"] == name
        assert model.config["arguments"]["num_classes"] == num_classes

    # gradients reach every parameter (train mode, batch statistics)
    model.train()
    out = model(torch.rand(2, 3, size, size))
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert float(p.grad.abs().sum()) > 0, pname


def test_odd_input_size_and_batch_of_one_in_eval():
    torch.manual_seed(1)
    model = create_model("sdnet18_all", width=4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 31)).shape == (1, 10)


# ----------------------------------------------------------------------------
# Architecture facts
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("stem,kernel,stride,padding", [("cifar", 3, 1, 1), ("imagenet", 7, 2, 3)])
@pytest.mark.parametrize("name", ["sdnet18", "sdnet34"])
def test_sdnet_has_one_csc_stem_layer(name, stem, kernel, stride, padding):
    model = create_model(name, stem=stem, width=8)
    layers = csc_layers(model)
    assert list(layers) == ["stem.0"]
    layer = layers["stem.0"]
    conv = nn.Conv2d(3, 8, kernel, stride, padding, bias=False)
    assert layer.weight.shape == conv.weight.shape
    assert (layer.kernel_size, layer.stride, layer.padding) == (kernel, stride, padding)
    # every other convolution is a plain one
    assert not any(isinstance(m, CSCConv2d) for n, m in model.named_modules() if n != "stem.0")
    # the imagenet stem keeps its max-pool
    assert any(isinstance(m, nn.MaxPool2d) for m in model.stem) == (stem == "imagenet")


def _block_names(name: str) -> list[str]:
    return [f"layer{i}.{b}" for i, n in enumerate(BLOCKS[depth(name)], start=1) for b in range(n)]


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", ["sdnet18_all", "sdnet34_all"])
def test_sdnet_all_replaces_every_block_conv(name, stem):
    model = create_model(name, stem=stem, width=4)
    layers = csc_layers(model)
    blocks = _block_names(name)
    n_blocks = sum(BLOCKS[depth(name)])
    stem_layers = 1 if stem == "cifar" else 2
    assert len(layers) == stem_layers + 2 * n_blocks  # cifar sdnet18_all: 1 + 16
    if depth(name) == "18":
        assert len(layers) == (17 if stem == "cifar" else 18)
    for block in blocks:
        for conv in ("conv1", "conv2"):
            layer = layers[f"{block}.{conv}"]
            assert layer.kernel_size == 3 and layer.padding == 1
    # no 3x3 plain convolution is left; the only plain convs are 1x1 shortcuts
    for mname, m in model.named_modules():
        if type(m) is nn.Conv2d:
            assert m.kernel_size == (1, 1) and ".shortcut." in mname, mname
    if stem == "imagenet":
        # the second, strided CSC layer replaces the max-pool
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
        assert layers["stem.0"].kernel_size == 7 and layers["stem.0"].stride == 2
        assert layers["stem.2"].kernel_size == 3 and layers["stem.2"].stride == 2


@pytest.mark.parametrize("name", ["sdnet18_all", "sdnet34_all"])
def test_shortcut_false_removes_shortcuts(name):
    with_sc = create_model(name, width=4)
    without = create_model(name, width=4, shortcut=False)
    assert any("shortcut" in n for n, _ in with_sc.named_modules())
    assert not any("shortcut" in n for n, _ in without.named_modules())
    assert not any("shortcut" in n for n, _ in without.named_parameters())
    assert not any(type(m) is nn.Conv2d for m in without.modules())
    assert len(csc_layers(without)) == len(csc_layers(with_sc))
    assert without(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["sdnet18", "sdnet34"])
def test_shortcut_false_only_for_all_models(name):
    with pytest.raises(RobustCSCError):
        create_model(name, width=4, shortcut=False)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_standard_parameter_count():
    assert n_params(create_model("resnet18")) == 11_173_962
    assert n_params(create_model("resnet18", width=64, num_classes=10)) == 11_173_962
    # CSC layers have nn.Conv2d's weight and no bias: the same count
    assert n_params(create_model("sdnet18", width=64)) == 11_173_962


def test_sdnet_all_without_shortcuts_drops_exactly_the_shortcut_parameters():
    with_sc = create_model("sdnet18_all", width=64)
    without = create_model("sdnet18_all", width=64, shortcut=False)
    assert n_params(with_sc) == 11_173_962
    # the three projection shortcuts: 1x1 conv + BN (weight, bias) at 64->128, 128->256, 256->512
    shortcut = sum(c_in * c_out + 2 * c_out for c_in, c_out in [(64, 128), (128, 256), (256, 512)])
    assert n_params(with_sc) - n_params(without) == shortcut


def test_csc_options_reach_every_layer():
    model = create_model("sdnet18_all", width=4, lam=0.3, n_steps=3, non_negative=False, mu=0.1, iteration="fista")
    for layer in csc_layers(model).values():
        assert (layer.lam, layer.n_steps, layer.non_negative, layer.mu, layer.iteration) == (
            0.3,
            3,
            False,
            0.1,
            "fista",
        )
    assert create_model("sdnet18", width=4).config["arguments"]["lam"] == model_arguments("sdnet18")["lam"]


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("no_such_model", {}),
        ("resnet50", {}),
        ("resnet18", {"depth": 18}),
        ("sdnet18", {"lmbda": 0.1}),
        ("resnet18", {"lam": 0.1}),  # a ResNet has no lambda
        ("resnet18", {"stem": "mnist"}),
        ("sdnet18_all", {"stem": "CIFAR10"}),
        ("resnet18", {"num_classes": 0}),
        ("sdnet18", {"width": 0}),
        ("sdnet18", {"iteration": "adam", "width": 4}),
        ("sdnet18_all", {"lam": -1.0, "width": 4}),
    ],
)
def test_bad_model_requests_raise(name, kwargs):
    with pytest.raises(RobustCSCError):
        create_model(name, **kwargs)


def test_model_names_are_case_insensitive():
    assert create_model("SDNet18", width=4).config["arch"] == "sdnet18"


# ----------------------------------------------------------------------------
# Input normalisation lives inside the model
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,stem,mean,std,kwargs",
    [
        ("sdnet18", "cifar", CIFAR_MEAN, CIFAR_STD, {}),
        ("resnet18", "imagenet", IMAGENET_MEAN, IMAGENET_STD, {}),
        ("sdnet18_all", "imagenet", IMAGENET_MEAN, IMAGENET_STD, {}),
        ("sdnet34_all", "cifar", (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.6, 0.7)}),
    ],
)
def test_normalisation_is_inside_the_model(name, stem, mean, std, kwargs):
    torch.manual_seed(2)
    model = create_model(name, stem=stem, width=4, **kwargs)
    size = STEM_INPUT[stem]
    # give BN non-trivial running statistics, then evaluate
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, size, size))
    model.eval()
    x = torch.rand(2, 3, size, size)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
        model.normalize = nn.Identity()
        manual = model((x - m) / s)
        unnormalised = model(x)
    torch.testing.assert_close(out, manual, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, unnormalised, rtol=1e-3, atol=1e-3)  # normalisation matters


def test_normalisation_buffers_are_not_in_the_state_dict():
    model = create_model("sdnet18", width=4)
    assert not any(k.startswith("normalize.") for k in model.state_dict())
