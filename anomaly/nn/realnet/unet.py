"""RealNet's per-layer feature reconstruction UNet (time-free), after cnulab/RealNet ``models/recon``.

Written in plain torch: the official blocks are lighter than diffusers' ones (a res-block is one
norm-SiLU-conv with a skip, not two convolutions with a time embedding), and diffusers has no time-free
UNet; attention uses torch's ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups as guided-diffusion, fewer when ``channels`` is not divisible by 32."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResBlock(nn.Module):
    """norm → SiLU → (down/up) → 3×3 conv, plus a (resampled, projected) skip: the official ResBlock.

    Down-sampling is 2×2 average pooling, up-sampling a 4×4 stride-2 transposed convolution.
    """

    def __init__(self, channels: int, out_channels: int | None = None, resample: str = "none") -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.norm, self.act = group_norm(channels), nn.SiLU()
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        if resample == "down":
            self.h_resample: nn.Module = nn.AvgPool2d(2)
            self.x_resample: nn.Module = nn.AvgPool2d(2)
        elif resample == "up":
            self.h_resample = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
            self.x_resample = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        else:
            self.h_resample = self.x_resample = nn.Identity()
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(self.h_resample(self.act(self.norm(x))))
        return self.skip(self.x_resample(x)) + h


class SelfAttention(nn.Module):
    """Spatial multi-head self-attention with a zero-initialised output projection (residual)."""

    def __init__(self, channels: int, head_channels: int = 64) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels) if channels % head_channels == 0 else 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        # Tokens × head channels, contiguous: torch's fused (flash) CPU kernel needs a unit last stride and falls
        # back to the math path otherwise (3× slower forward + backward at 32² tokens, measured).
        qkv = self.qkv(self.norm(flat)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return (flat + self.proj(out)).reshape(b, c, h, w)


def _stage(channels: int, out_channels: int, attention: bool, head_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = [ResBlock(channels, out_channels)]
    if attention:
        layers.append(SelfAttention(out_channels, head_channels))
    return nn.Sequential(*layers)


class ReconstructionUNet(nn.Module):
    """UNet mapping a C-channel feature map to its reconstruction (same shape), no time input.

    Args:
        channels: feature channels in and out (the AFS-selected count of a layer).
        width_ratio: base width = ``width_ratio · channels`` (RealNet: 0.5).
        channel_mult: width multipliers per level (RealNet: 1, 2, 4); ``len - 1`` halvings, so the
            feature map's sides must be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: res-blocks per level (RealNet: 2).
        attention_levels: down-sampling factors with self-attention (RealNet: 2 and 4, the inner levels).
        head_channels: channels per attention head (64).

    The output convolution starts at zero, so an untrained net reconstructs every feature as 0.

    Example:
        >>> net = ReconstructionUNet(32)
        >>> net(torch.randn(2, 32, 16, 16)).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(self, channels: int, width_ratio: float = 0.5, channel_mult: Sequence[int] = (1, 2, 4),
                 num_res_blocks: int = 2, attention_levels: Sequence[int] = (2, 4), head_channels: int = 64) -> None:
        super().__init__()
        base = max(1, int(width_ratio * channels))
        ch = int(channel_mult[0] * base)
        self.stem = nn.Conv2d(channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(_stage(ch, mult * base, ds in attention_levels, head_channels))
                ch = mult * base
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(ResBlock(ch, ch, resample="down"))
                skips.append(ch)
                ds *= 2
        self.middle = nn.Sequential(ResBlock(ch), SelfAttention(ch, head_channels), ResBlock(ch))
        self.up = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                stage = _stage(ch + skips.pop(), mult * base, ds in attention_levels, head_channels)
                ch = mult * base
                if level and i == num_res_blocks:
                    stage.append(ResBlock(ch, ch, resample="up"))
                    ds //= 2
                self.up.append(stage)
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.factor = 2 ** (len(channel_mult) - 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        hs = [h]
        for module in self.down:
            h = module(h)
            hs.append(h)
        h = self.middle(h)
        for module in self.up:
            h = module(torch.cat([h, hs.pop()], dim=1))
        return self.out(h)
