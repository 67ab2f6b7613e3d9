"""Heads: MLP projector / predictor (SimCLR, BYOL), DINO's head and the linear classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(
    in_dim: int,
    hidden_dims: tuple[int, ...] | list[int],
    out_dim: int,
    *,
    last_bn: bool = False,
    hidden_bias: bool = False,
    output_bias: bool = True,
    hidden_bn: bool = True,
    last_bn_affine: bool = False,
) -> nn.Sequential:
    """Linear-BN-ReLU for every hidden layer, then a linear output (optionally followed by BN, without affine
    parameters unless ``last_bn_affine``).

    With ``hidden_dims=(256, 256)`` and ``out_dim=256`` this is the 256-256-256 projector of docs/method.md: Published settings. A hidden
    Linear bias (``hidden_bias``) is cancelled by the BatchNorm behind it in training mode; the authors' code
    has one, and no output bias (``output_bias=False``). ``hidden_bn=False`` leaves the hidden BatchNorm out
    (Linear-ReLU, as solo-learn's SimCLR projector). ``last_bn`` with ``last_bn_affine`` ends in an affine
    BatchNorm (SimCLR v2's projector, lightly's default SimCLR and MoCo heads).
    """
    layers: list[nn.Module] = []
    previous = in_dim
    for hidden in hidden_dims:
        layers.append(nn.Linear(previous, hidden, bias=hidden_bias))
        if hidden_bn:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        previous = hidden
    layers.append(nn.Linear(previous, out_dim, bias=output_bias and not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*layers)


def linear_head(in_dim: int, num_classes: int) -> nn.Linear:
    """The downstream classifier: one linear layer, bias included, PyTorch's default initialisation."""
    return nn.Linear(in_dim, num_classes)


class WeightNormLinear(nn.Module):
    """A linear layer without bias whose weight is g · v / ‖v‖, each output row normalised on its own.

    ``weight_v`` (out × in) is always trained; ``weight_g`` (out × 1) is trained only with ``train_scale``,
    otherwise it is a buffer of ones, so every row of the weight has unit norm (DINO's ``norm_last_layer``).
    The state-dict keys, ``weight_g`` and ``weight_v``, are those of the DINO authors' last layer. Written out
    rather than built with ``torch.nn.utils.weight_norm`` so that a fixed scale is not a parameter that takes
    no gradient.
    """

    weight_g: torch.Tensor

    def __init__(self, in_dim: int, out_dim: int, *, train_scale: bool = False) -> None:
        super().__init__()
        direction = nn.Linear(in_dim, out_dim, bias=False).weight.detach()  # PyTorch's default initialisation
        self.weight_v = nn.Parameter(direction.clone())
        scale = torch.ones(out_dim, 1)
        if train_scale:
            self.weight_g = nn.Parameter(scale)
        else:
            self.register_buffer("weight_g", scale)

    def normalised_weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalised_weight())


class DINOHead(nn.Module):
    """DINO's projection head: an MLP (Linear-GELU for every hidden layer, then a linear bottleneck), the
    bottleneck L2-normalised, then a weight-normalised linear layer without bias to ``out_dim`` logits.

    With ``hidden_dims=(2048, 2048)``, ``bottleneck_dim=256`` and ``out_dim=65536`` this is the published head
    (three MLP layers). Every MLP Linear carries a bias; weights are drawn from a normal distribution with
    standard deviation 0.02 truncated at ±2, biases start at 0, as the DINO authors initialise them. State-dict
    keys: ``mlp.{i}.weight``, ``mlp.{i}.bias``, ``last_layer.weight_g``, ``last_layer.weight_v``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: tuple[int, ...] | list[int],
        bottleneck_dim: int,
        out_dim: int,
        *,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(previous, hidden), nn.GELU()]
            previous = hidden
        layers.append(nn.Linear(previous, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, train_scale=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
