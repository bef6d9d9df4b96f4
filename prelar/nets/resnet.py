"""The 13-layer ResNet image encoder and decoder of ContextWM, used by PreLAR (Sec. 4.1) and our APV.

Encoder (64x64 input): a 3x3 stride-2 convolution to `width` channels (32x32), then three stages of two
residual layers each at widths `width`, 2·width, 4·width, each stage followed by 2x2 average pooling
(32 → 16 → 8 → 4); the 4x4x(4·width) map is flattened: 1 + 3·2·2 = 13 convolutional layers.
Decoder (mirror): a linear layer to a 4x4x(4·width) map, three stages of (nearest 2x upsampling, two
residual layers halving the width in the last one), then a 3x3 stride-2 transposed convolution to the
64x64 image mean.

Shape legend: N images, C channels, H=W=64 pixels, F feature width.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 64
STAGES = 3


def _norm(channels: int, norm: str) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown ResNet norm '{norm}': use 'batch' or 'none' (params.yaml model.resnet_norm)")


class ResidualLayer(nn.Module):
    """relu(identity(x) + norm(conv3x3(relu(norm(conv3x3(x)))))); a 1x1 projection when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            _norm(out_channels, norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(out_channels, norm),
        )
        self.identity = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels, norm))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        out += self.identity(x)  # in place: saves a pass over the activation (memory-bound on CPU)
        return out.relu_()


def _stack(in_channels: int, out_channels: int, layers: int, norm: str, change_first: bool) -> nn.Sequential:
    """Residual layers; the width changes in the first layer (encoder) or the last one (decoder)."""
    if change_first:
        widths = [(in_channels if i == 0 else out_channels, out_channels) for i in range(layers)]
    else:
        widths = [(in_channels, out_channels if i == layers - 1 else in_channels) for i in range(layers)]
    return nn.Sequential(*(ResidualLayer(a, b, norm) for a, b in widths))


class ResNetEncoder(nn.Module):
    """Image (or stacked frames) [N, C, 64, 64] in [-0.5, 0.5] → embedding [N, 16·4·width]."""

    def __init__(self, in_channels: int, width: int, layers: int = 2, norm: str = "batch"):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ELU()]
        channels = width
        for i in range(STAGES):
            out = width * 2**i
            modules += [_stack(channels, out, layers, norm, change_first=True), nn.AvgPool2d(2)]
            channels = out
        self.net = nn.Sequential(*modules)
        self.out_dim = channels * (IMAGE_SIZE // 2 ** (STAGES + 1)) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"ResNetEncoder expects {IMAGE_SIZE}x{IMAGE_SIZE} images, got {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN/cuDNN's fast layout
        return self.net(x).flatten(1)  # [N, F]


class ResNetDecoder(nn.Module):
    """Features [N, F] → image mean [N, 3, 64, 64] (the unit-variance Gaussian's mean, in image units)."""

    def __init__(self, feat_dim: int, width: int, out_channels: int = 3, layers: int = 2,
                 norm: str = "batch"):
        super().__init__()
        self.channels = width * 2 ** (STAGES - 1)
        self.hw = IMAGE_SIZE // 2 ** (STAGES + 1)
        self.linear = nn.Linear(feat_dim, self.channels * self.hw**2)
        modules: list[nn.Module] = []
        channels = self.channels
        for _ in range(STAGES):
            modules += [nn.Upsample(scale_factor=2, mode="nearest"),
                        _stack(channels, channels // 2, layers, norm, change_first=False)]
            channels //= 2
        modules.append(nn.ConvTranspose2d(channels, out_channels, 3, stride=2, padding=1, output_padding=1))
        self.net = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.linear(features).view(-1, self.channels, self.hw, self.hw)  # [N, 4w, 4, 4]
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)  # [N, 3, 64, 64]
