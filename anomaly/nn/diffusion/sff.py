"""DiAD's spatial-aware feature fusion (SFF) block.

Inside the SG branch: every output of the next-to-last resolution level (sources: by default
their features before the zero convs, officially the zero-conv outputs; see ``control.py``) is
brought to the last level's size by a zero-initialised stride-2 3×3 conv (no bias) →
InstanceNorm (non-affine) → SiLU, and each output of the last level (targets) becomes
``SiLU(target_k + Σ_j D_jk(source_j))``. With SD-1.5 sizes: sources 640, 1280, 1280 channels at
8×8, targets 1280 at 4×4, nine convs, 110.6 M parameters (as the official code, lewandofskee/DiAD
``sgn/sgn.py``, where the first source is the 640-channel downsampler output).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from anomaly.nn.diffusion.presets import DiffusionConfigError


def _down(source: int, target: int) -> nn.Sequential:
    conv = nn.Conv2d(source, target, kernel_size=3, stride=2, padding=1, bias=False)
    nn.init.zeros_(conv.weight)
    return nn.Sequential(conv, nn.InstanceNorm2d(target), nn.SiLU())


class SpatialFeatureFusion(nn.Module):
    """Fuse next-to-last-level SG outputs into the last-level ones.

    Args:
        source_channels: channels of the next-to-last level's outputs (official: 640, 1280, 1280).
        target_channels: channels of the last level's outputs (official: 1280, 1280, 1280).

    At initialisation every conv is zero, so the block adds nothing to its targets and maps zero
    residuals to zero residuals: the denoiser is unchanged. (InstanceNorm then amplifies the first
    non-zero conv output to unit spread: the gradient reaches the convs whenever the sources are
    non-zero.)
    """

    def __init__(self, source_channels: Sequence[int], target_channels: Sequence[int]) -> None:
        super().__init__()
        self.source_channels = list(source_channels)
        self.target_channels = list(target_channels)
        # down[k][j]: source j -> target k (the official down{j+1}{k+1}).
        self.down = nn.ModuleList(
            nn.ModuleList(_down(s, t) for s in self.source_channels) for t in self.target_channels
        )
        self.act = nn.SiLU()

    def forward(self, sources: Sequence[Tensor], targets: Sequence[Tensor]) -> list[Tensor]:
        """The fused targets (same shapes as ``targets``)."""
        if len(sources) != len(self.source_channels) or len(targets) != len(self.target_channels):
            raise DiffusionConfigError(
                f"SFF expects {len(self.source_channels)} sources and {len(self.target_channels)} targets, "
                f"got {len(sources)} and {len(targets)}."
            )
        fused = []
        for target, convs in zip(targets, self.down, strict=True):
            total = target
            for source, conv in zip(sources, convs, strict=True):
                total = total + conv(source)
            fused.append(self.act(total))
        return fused
