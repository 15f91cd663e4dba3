"""Cross-attention context for the denoiser when no CLIP text encoder is used.

DiAD feeds the empty prompt through a frozen CLIP text encoder: a constant context. Choices here:

- ``empty``: a constant zero context (cross-attention then adds only its output bias);
- ``file``: a constant tensor saved by the user, e.g. SD-1.5's CLIP embedding of ``""``
  (1×77×768), to match the paper exactly;
- ``learned``: trainable context tokens shared by all images;
- ``class``: one trainable token per category (label index), for the unified setting.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from anomaly.nn.diffusion.presets import DiffusionConfigError

KINDS = ("empty", "file", "learned", "class")


class Conditioning(nn.Module):
    """Produces the B×tokens×dim context of a batch.

    Args:
        kind: one of ``empty``, ``file``, ``learned``, ``class``.
        dim: the UNet's ``cross_attention_dim``.
        tokens: context length (``empty``/``learned``).
        num_classes: rows of the class table (``class``).
        path: tensor file of shape tokens×dim or 1×tokens×dim (``file``).
    """

    def __init__(
        self, kind: str = "empty", dim: int = 768, tokens: int = 1, num_classes: int = 64, path: str | None = None
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise DiffusionConfigError(f"model.context.kind={kind} is not valid; choose one of {', '.join(KINDS)}.")
        self.kind, self.dim = kind, dim
        if kind == "empty":
            self.register_buffer("tokens", torch.zeros(1, tokens, dim))
        elif kind == "file":
            self.register_buffer("tokens", _read_context(path, dim))
        elif kind == "learned":
            self.tokens = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        else:
            self.table = nn.Embedding(num_classes, dim)
            nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, batch_size: int, labels: Tensor | None = None) -> Tensor:
        """The context for ``batch_size`` images (``labels``: long B, needed by ``class``)."""
        if self.kind == "class":
            if labels is None:
                raise DiffusionConfigError("model.context.kind=class needs the category of every image being denoised.")
            return self.table(labels)[:, None, :]
        return self.tokens.expand(batch_size, -1, -1)


def _read_context(path: str | None, dim: int) -> Tensor:
    if path is None or not Path(path).expanduser().is_file():
        raise DiffusionConfigError(
            f"model.context.path={path} is not a file; save the context tensor (tokens×{dim}) with torch.save "
            "or use model.context.kind=empty."
        )
    tensor = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True).float()
    tensor = tensor.reshape(1, -1, tensor.shape[-1])
    if tensor.shape[-1] != dim:
        raise DiffusionConfigError(f"model.context.path={path} has width {tensor.shape[-1]}, the UNet expects {dim}.")
    return tensor
