"""Cross-attention context of the denoiser.

DiAD feeds the empty prompt through SD-1.5's frozen CLIP text encoder: a constant context. Choices:

- ``clip_empty``: that constant, computed from a Stable Diffusion folder's ``tokenizer/`` and
  ``text_encoder/`` and cached (``clip_context.py``): the paper;
- ``empty``: a constant zero context of ``tokens`` tokens. With SD-1.5's bias-free ``to_k``/``to_v``
  every cross-attention then outputs only its output bias — no conditioning at all, which suits
  a UNet trained from scratch;
- ``file``: a constant tensor saved by the user (tokens×dim or 1×tokens×dim);
- ``learned``: trainable context tokens shared by all images;
- ``class``: one trainable token per category (label index), for the unified setting.

The constant kinds are buffers, so a checkpoint holds them: rebuilt with ``read=False`` (what
``DiAD.restore_overrides`` sets) they read no file and take their values from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from anomaly.nn.diffusion.clip_context import empty_prompt_embedding
from anomaly.nn.diffusion.presets import DiffusionConfigError

KINDS = ("empty", "clip_empty", "file", "learned", "class")
CONSTANT = ("empty", "clip_empty", "file")


class Conditioning(nn.Module):
    """Produces the B×tokens×dim context of a batch.

    Args:
        kind: one of ``KINDS`` (see module doc).
        dim: the UNet's ``cross_attention_dim``.
        tokens: context length (``empty``/``learned``; for ``file``/``clip_empty`` with ``read=False``
            the stored length).
        num_classes: rows of the class table (``class``).
        path: tensor file of shape tokens×dim or 1×tokens×dim (``file``).
        text_encoder: Stable Diffusion folder (diffusers layout) or hub id (``clip_empty``).
        cache_dir: where ``clip_empty`` keeps its embedding (``None``: ``~/.cache/anomaly/clip_context``).
        download: allow fetching a hub id of ``text_encoder``.
        read: read the ``file``/``clip_empty`` source; ``False`` allocates the constant for a checkpoint
            to fill (``tokens`` long).
    """

    def __init__(
        self,
        kind: str = "empty",
        dim: int = 768,
        tokens: int = 1,
        num_classes: int = 64,
        path: str | None = None,
        text_encoder: str | None = None,
        cache_dir: str | None = None,
        download: bool = False,
        read: bool = True,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise DiffusionConfigError(f"model.context.kind={kind} is not valid; choose one of {', '.join(KINDS)}.")
        self.kind, self.dim = kind, dim
        if kind in CONSTANT and (kind == "empty" or not read):
            self.register_buffer("tokens", torch.zeros(1, tokens, dim))
        elif kind == "file":
            self.register_buffer("tokens", _read_context(path, dim))
        elif kind == "clip_empty":
            self.register_buffer("tokens", empty_prompt_embedding(text_encoder, dim, download, cache_dir))
        elif kind == "learned":
            self.tokens = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        else:
            self.table = nn.Embedding(num_classes, dim)
            nn.init.normal_(self.table.weight, std=0.02)

    @property
    def length(self) -> int:
        """Context tokens per image."""
        return 1 if self.kind == "class" else int(self.tokens.shape[1])

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
