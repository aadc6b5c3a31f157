"""Backbones the chapters use (Chapter 1): the standard 4-block conv net, a ResNet-12 and an MLP.

Any ``nn.Module`` works with the learners."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

from mlhelpers.validation import check_positive_int

Norm = Literal["batch", "task", "none"]


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        # Ordinary BatchNorm: batch statistics in training, running statistics in eval mode.
        return nn.BatchNorm2d(channels)
    if norm == "task":
        # Always the statistics of the current batch (one task's support or query set), never
        # running averages: the "transductive" BatchNorm of the original MAML code.
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of 'batch', 'task', 'none', got {norm!r}")


def conv_block(in_channels: int, out_channels: int, norm: Norm = "batch") -> nn.Sequential:
    """3x3 conv (padding 1) -> norm -> ReLU -> 2x2 max-pool: halves height and width."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        _norm_layer(norm, out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def conv4(
    in_channels: int = 1,
    hidden_channels: int = 64,
    out_features: int | None = None,
    *,
    num_blocks: int = 4,
    norm: Norm = "batch",
    image_size: int = 28,
) -> nn.Sequential:
    """The standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017).

    ``num_blocks`` conv blocks of ``hidden_channels`` filters, then a flatten: ``[batch, 1, 28, 28]
    -> [batch, 64]`` for Omniglot. With ``out_features`` a linear head follows, as MAML uses
    (``image_size``, the input's side, sets its input width).

    ``norm``: ``"batch"`` (ordinary BatchNorm with running statistics), ``"task"`` (batch
    statistics always, no running statistics, as in the original MAML) or ``"none"``.
    """
    check_positive_int("in_channels", in_channels)
    check_positive_int("hidden_channels", hidden_channels)
    check_positive_int("num_blocks", num_blocks)
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(num_blocks):
        layers.append(conv_block(channels, hidden_channels, norm))
        channels = hidden_channels
    layers.append(nn.Flatten())
    if out_features is not None:
        side = check_positive_int("image_size", image_size)
        for _ in range(num_blocks):
            side //= 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for {num_blocks} pooling blocks")
        head_in = hidden_channels * side * side
        layers.append(nn.Linear(head_in, check_positive_int("out_features", out_features)))
    return nn.Sequential(*layers)


RESNET12_WIDTHS = (64, 160, 320, 640)
"""The widths of the ResNet-12 of current few-shot work (Lee et al. 2019, MetaOptNet)."""


class ResidualBlock(nn.Module):
    """Three 3x3 convs (norm, LeakyReLU 0.1 between), plus a 1x1 conv and norm on the shortcut; the
    sum goes through LeakyReLU and a 2x2 max-pool: ``[batch, in, H, W] -> [batch, out, H/2, W/2]``."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(3):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), _norm_layer(norm, out_channels)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
            channels = out_channels
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      _norm_layer(norm, out_channels))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x):
        return self.out(self.body(x) + self.shortcut(x))


def resnet12(in_channels: int = 1, widths: Sequence[int] = RESNET12_WIDTHS, *, norm: Norm = "batch") -> nn.Sequential:
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): four :class:`ResidualBlock` of ``widths``,
    then global average pooling: ``[batch, in_channels, H, W] -> [batch, widths[-1]]`` (H, W at
    least 16). With the default widths it has 12.4M parameters, about 110 times the conv4's."""
    check_positive_int("in_channels", in_channels)
    if len(widths) != 4:
        raise ValueError(f"widths must give the 4 blocks' widths, got {len(widths)}: {tuple(widths)}")
    blocks: list[nn.Module] = []
    channels = in_channels
    for width in widths:
        blocks.append(ResidualBlock(channels, check_positive_int("widths", width), norm))
        channels = width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (40, 40),
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A multilayer perceptron ``[batch, in_features] -> [batch, out_features]``.

    The default ``hidden=(40, 40)`` with ReLU is the sinusoid regressor of Finn et al. 2017.
    """
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise TypeError(f"activation must be an nn.Module class such as nn.ReLU, got {activation!r}")
    if isinstance(hidden, (int, str)):
        raise TypeError(f"hidden must be a sequence of layer widths such as (40, 40), got {hidden!r}")
    sizes = [check_positive_int("in_features", in_features)]
    sizes += [check_positive_int("hidden", h) for h in hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(sizes[-1], check_positive_int("out_features", out_features)))
    return nn.Sequential(*layers)
