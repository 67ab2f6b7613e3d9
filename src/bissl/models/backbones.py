"""Backbones: torchvision ResNets (ImageNet or small-image stem), a small ResNet for CPUs, and Vision
Transformers (timm's ``VisionTransformer``).

Every backbone maps images (N, C, H, W) to features (N, D) and exposes ``feature_dim``.
Its ``state_dict`` has no wrapper keys, so a saved lower backbone loads with ``load_state_dict``
into a freshly built backbone of the same name; a ViT's keys are timm's (``cls_token``, ``pos_embed``,
``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ..., ``norm.weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (12, 192, 3),
    "vit_small": (12, 384, 6),
    "vit_base": (12, 768, 12),
}
"""Named ViT sizes: depth, width (embedding dimension), attention heads."""
VIT_BACKBONES = ("vit", *VIT_SIZES)
VIT_POOLS = ("cls", "mean")
BACKBONES = ("small_resnet", "resnet18", "resnet34", "resnet50", *VIT_BACKBONES)
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


def vit_shape(name: str, depth: int, width: int, heads: int) -> tuple[int, int, int]:
    """Depth, width and heads of the ViT ``name``: a named size fixes them, ``"vit"`` takes the ones given."""
    if name in VIT_SIZES:
        return VIT_SIZES[name]
    if name != "vit":
        raise ValueError(f"model.backbone={name!r} is not one of {', '.join(VIT_BACKBONES)}")
    return depth, width, heads


def build_vit(
    *,
    image_size: int,
    patch_size: int,
    depth: int,
    width: int,
    heads: int,
    mlp_ratio: float = 4.0,
    in_channels: int = 3,
    pool: str = "cls",
) -> nn.Module:
    """timm's ``VisionTransformer`` without a classifier (``num_classes=0``), returning the final-norm CLS
    token (``pool="cls"``, as DINO) or the mean of the final-norm patch tokens (``pool="mean"``).

    The module is timm's own, so its ``state_dict`` keys are timm's and DINO or timm checkpoints map onto
    it. The final LayerNorm is ``norm`` for both pools (timm's ``fc_norm`` is switched off), so the keys do
    not depend on the pool. Every attention layer calls ``F.scaled_dot_product_attention`` (timm's fused
    path, set on each layer whatever timm's global default): the fastest kernel in training, and the math
    kernel where a scope asks for it (``bissl.bilevel.hvp.differentiable_attention``). No dropout, no
    stochastic depth: forward passes are deterministic, as Hessian-vector products need.
    """
    if pool not in VIT_POOLS:
        raise ValueError(f"model.vit_pool={pool!r} is not one of {', '.join(VIT_POOLS)}")
    if width % heads:
        raise ValueError(f"ViT width {width} is not divisible by its {heads} heads")
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not divisible by the ViT patch size {patch_size}")
    from timm.models.vision_transformer import VisionTransformer

    net: Any = VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        in_chans=in_channels,
        num_classes=0,
        global_pool="token" if pool == "cls" else "avg",
        fc_norm=False,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
    )
    for module in net.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = True
    net.feature_dim = width
    built: nn.Module = net
    return built


def uses_batchnorm(name: str) -> bool:
    """Whether the backbone ``name`` has BatchNorm layers (the ResNets) or none (the ViTs: LayerNorm, which
    keeps no running statistics)."""
    return name not in VIT_BACKBONES


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    stem: str = "imagenet",
    width: int = 16,
    blocks: tuple[int, ...] | list[int] = (1, 1, 1),
    image_size: int | None = None,
    vit_patch_size: int = 16,
    vit_depth: int = 12,
    vit_width: int = 192,
    vit_heads: int = 3,
    vit_mlp_ratio: float = 4.0,
    vit_pool: str = "cls",
) -> nn.Module:
    """Build a backbone by name (see ``BACKBONES``); raises ValueError naming the allowed values.

    ``width`` and ``blocks`` shape ``small_resnet``, ``stem`` the torchvision ResNets; the ``vit_*``
    arguments and ``image_size`` (required) a ViT, whose named sizes fix depth, width and heads.
    """
    if name in VIT_BACKBONES:
        if image_size is None:
            raise ValueError(f"model.backbone={name} needs the image size (data.image_size)")
        depth, vit_width, heads = vit_shape(name, vit_depth, vit_width, vit_heads)
        return build_vit(
            image_size=image_size,
            patch_size=vit_patch_size,
            depth=depth,
            width=vit_width,
            heads=heads,
            mlp_ratio=vit_mlp_ratio,
            in_channels=in_channels,
            pool=vit_pool,
        )
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
