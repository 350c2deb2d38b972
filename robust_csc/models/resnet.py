"""ResNet and SDNet families: one generic ResNet, its stems and its blocks.

State-dict names follow the official SDNet code where it has one
(conv1/bn1/conv2/bn2/shortcut, layer1..layer4, linear), with the stem under
``stem`` instead of ``layer0`` so that conversion is a renaming.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from robust_csc.constants import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from robust_csc.csc import CSCConv2d
from robust_csc.errors import RobustCSCError
from robust_csc.models.registry import register_model

STEMS = ("cifar", "imagenet")
ConvFactory = Callable[..., nn.Module]


class Normalize(nn.Module):
    """(x - mean) / std per channel: models take images in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Not persistent: they are arguments of the architecture (checkpoint metadata).
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def plain_conv(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int) -> nn.Module:
    return nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=False)


def csc_conv_factory(**csc_options) -> ConvFactory:
    def make(in_ch: int, out_ch: int, kernel: int, stride: int, padding: int) -> nn.Module:
        return CSCConv2d(in_ch, out_ch, kernel, stride, padding, **csc_options)

    return make


class BasicBlock(nn.Module):
    """ResNet's basic block.

    ReLU after bn1 and after the addition for convolutions; for CSC layers
    (the -all models) the non-negative code is the non-linearity, so there is
    no ReLU inside, and ReLU after the addition only with the shortcut on.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int, conv: ConvFactory, inner_relu: bool, shortcut: bool
    ) -> None:
        super().__init__()
        self.conv1 = conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.inner_relu = inner_relu
        self.use_shortcut = shortcut
        if shortcut:
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))
        if self.inner_relu:
            out = torch.relu_(out)
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = torch.relu_(out + self.shortcut(x))
        return out


class ResNet(nn.Module):
    """Normalize -> stem -> layer1..layer4 -> global average pool -> linear."""

    def __init__(
        self,
        stem: nn.Sequential,
        block: Callable[[int, int, int], nn.Module],
        blocks: Sequence[int],
        width: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = stem
        planes = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        for index, (p, n) in enumerate(zip(planes, blocks), start=1):
            strides = [1 if index == 1 else 2] + [1] * (n - 1)
            layer = []
            for s in strides:
                layer.append(block(in_planes, p, s))
                in_planes = p
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stem(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


# -- stems -------------------------------------------------------------------


def _check_common(stem: str, num_classes: int, width: int) -> None:
    if stem not in STEMS:
        raise RobustCSCError(f"unknown stem {stem!r}; use 'cifar' (32 px images) or 'imagenet' (224 px)")
    if int(num_classes) < 1:
        raise RobustCSCError(f"num_classes must be >= 1, got {num_classes}")
    if int(width) < 1:
        raise RobustCSCError(f"width must be >= 1, got {width}; 64 is the standard ResNet width")


def _default_stats(stem: str, mean, std):
    if mean is None:
        mean = CIFAR_MEAN if stem == "cifar" else IMAGENET_MEAN
    if std is None:
        std = CIFAR_STD if stem == "cifar" else IMAGENET_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def conv_stem(stem: str, width: int) -> nn.Sequential:
    if stem == "cifar":
        return nn.Sequential(plain_conv(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    return nn.Sequential(
        plain_conv(3, width, 7, 2, 3), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )


def csc_stem(stem: str, width: int, csc: ConvFactory, all_csc: bool) -> nn.Sequential:
    """SDNet stems: CSC -> BN, no ReLU (the code is already non-negative)."""
    if stem == "cifar":
        return nn.Sequential(csc(3, width, 3, 1, 1), nn.BatchNorm2d(width))
    # SDNet-all replaces the max-pool by a second, strided CSC layer
    last = csc(width, width, 3, 2, 1) if all_csc else nn.MaxPool2d(3, 2, 1)
    return nn.Sequential(csc(3, width, 7, 2, 3), nn.BatchNorm2d(width), last)


# -- builders ----------------------------------------------------------------


def _resnet(blocks, num_classes, stem, width, mean, std) -> ResNet:
    _check_common(stem, num_classes, width)
    mean, std = _default_stats(stem, mean, std)

    def block(i, p, s):
        return BasicBlock(i, p, s, plain_conv, inner_relu=True, shortcut=True)

    return ResNet(conv_stem(stem, width), block, blocks, width, num_classes, mean, std)


def _sdnet(blocks, num_classes, stem, width, mean, std, all_csc, shortcut, csc_options) -> ResNet:
    _check_common(stem, num_classes, width)
    mean, std = _default_stats(stem, mean, std)
    csc = csc_conv_factory(**csc_options)

    if all_csc:

        def block(i, p, s):
            return BasicBlock(i, p, s, csc, inner_relu=False, shortcut=shortcut)

    else:

        def block(i, p, s):
            return BasicBlock(i, p, s, plain_conv, inner_relu=True, shortcut=True)

    return ResNet(csc_stem(stem, width, csc, all_csc), block, blocks, width, num_classes, mean, std)


@register_model
def resnet18(num_classes: int = 10, stem: str = "cifar", width: int = 64, mean=None, std=None) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]): the baseline of SDNet-18."""
    return _resnet([2, 2, 2, 2], num_classes, stem, width, mean, std)


@register_model
def resnet34(num_classes: int = 10, stem: str = "cifar", width: int = 64, mean=None, std=None) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]): the baseline of SDNet-34."""
    return _resnet([3, 4, 6, 3], num_classes, stem, width, mean, std)


def _sdnet_builder(blocks: list[int], all_csc: bool, doc: str):
    def builder(
        num_classes: int = 10,
        stem: str = "cifar",
        width: int = 64,
        mean=None,
        std=None,
        shortcut: bool = True,
        lam: float = 0.1,
        n_steps: int = 2,
        non_negative: bool = True,
        mu: float = 0.0,
        iteration: str = "official",
    ) -> ResNet:
        if not all_csc and not shortcut:
            raise RobustCSCError("shortcut=False exists only for the -all models; use sdnet18_all or sdnet34_all")
        options = dict(lam=lam, n_steps=n_steps, non_negative=non_negative, mu=mu, iteration=iteration)
        return _sdnet(blocks, num_classes, stem, width, mean, std, all_csc, shortcut, options)

    builder.__doc__ = doc
    return builder


def _register_sdnet(name: str, blocks: list[int], all_csc: bool, doc: str) -> None:
    builder = _sdnet_builder(blocks, all_csc, doc)
    builder.__name__ = builder.__qualname__ = name
    register_model(builder)
    globals()[name] = builder  # importable as robust_csc.models.resnet.<name>


_register_sdnet("sdnet18", [2, 2, 2, 2], False, "SDNet-18: ResNet-18 whose stem convolution is a CSC layer.")
_register_sdnet("sdnet34", [3, 4, 6, 3], False, "SDNet-34: ResNet-34 whose stem convolution is a CSC layer.")
_register_sdnet("sdnet18_all", [2, 2, 2, 2], True, "SDNet-18-all: every 3x3 convolution is a CSC layer.")
_register_sdnet("sdnet34_all", [3, 4, 6, 3], True, "SDNet-34-all: every 3x3 convolution is a CSC layer.")
