"""Heads: MLP projector / predictor (SimCLR, BYOL) and the linear classifier."""

from __future__ import annotations

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
