"""Backbones: torchvision ResNets (ImageNet or small-image stem) and a small ResNet for CPUs.

Every backbone maps images (N, C, H, W) to features (N, D) and exposes ``feature_dim``.
Its ``state_dict`` has no wrapper keys, so a saved lower backbone loads with ``load_state_dict``
into a freshly built backbone of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

BACKBONES = ("small_resnet", "resnet18", "resnet34", "resnet50")
STEMS = ("imagenet", "small")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet of configurable width and depth for small images; trains in minutes on a CPU.

    ``width`` is the channel count of the first stage, doubled at every further stage;
    ``blocks`` lists the number of basic blocks per stage (stride 2 from the second stage on).
    """

    def __init__(self, in_channels: int = 3, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = []
        channels = width
        for index, count in enumerate(blocks):
            out_channels = width * 2**index
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its classifier, with the ImageNet stem or a small-image stem.

    The small stem replaces the 7x7/2 convolution and max-pool by a 3x3/1 convolution, as is usual
    for CIFAR- and STL10-sized inputs.
    """

    def __init__(self, name: str, in_channels: int = 3, stem: str = "imagenet") -> None:
        super().__init__()
        import torchvision.models as tvm

        builders: dict[str, Callable[..., nn.Module]] = {
            "resnet18": tvm.resnet18,
            "resnet34": tvm.resnet34,
            "resnet50": tvm.resnet50,
        }
        net: Any = builders[name](weights=None)
        if stem == "small":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    stem: str = "imagenet",
    width: int = 16,
    blocks: tuple[int, ...] | list[int] = (1, 1, 1),
) -> nn.Module:
    """Build a backbone by name (see ``BACKBONES``); raises ValueError naming the allowed values."""
    if name == "small_resnet":
        return SmallResNet(in_channels=in_channels, width=width, blocks=tuple(blocks))
    if name in ("resnet18", "resnet34", "resnet50"):
        if stem not in STEMS:
            raise ValueError(f"model.stem={stem!r} is not one of {', '.join(STEMS)}")
        return TorchvisionResNet(name, in_channels=in_channels, stem=stem)
    raise ValueError(f"model.backbone={name!r} is not one of {', '.join(BACKBONES)}")


def feature_dim(backbone: nn.Module) -> int:
    """The width of the features a backbone returns."""
    return int(getattr(backbone, "feature_dim"))  # noqa: B009
