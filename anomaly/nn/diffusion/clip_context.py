"""The paper's cross-attention context: the frozen CLIP text encoder's embedding of the empty prompt.

DiAD (like LDM's ``FrozenCLIPEmbedder``) tokenises ``""`` padded to 77 tokens and takes the text
encoder's last hidden state: a constant 1×77×768 context for SD-1.5. It is computed once with
``transformers``' ``CLIPTokenizer`` + ``CLIPTextModel`` from a Stable Diffusion folder in diffusers
layout (``tokenizer/``, ``text_encoder/``) or a cached hub id, and kept as a ``.pt`` file in a cache
folder (written atomically), keyed by the source and its files' sizes and times, so later runs
need neither the encoder in memory nor ``transformers`` imported.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from torch import Tensor

from anomaly.nn.diffusion.weights import WeightsError
from anomaly.utils.atomic import atomic_save

OPTION = "model.context.text_encoder"
SUBFOLDERS = ("tokenizer", "text_encoder")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/anomaly/clip_context`` (``~/.cache/...`` without it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomaly" / "clip_context"


def _fingerprint(source: str) -> str:
    """A key of the source: its resolved path and its tokenizer/text-encoder files' names, sizes, times."""
    digest = hashlib.blake2b(digest_size=12)
    path = Path(source).expanduser()
    digest.update(str(path.resolve() if path.exists() else source).encode())
    for sub in SUBFOLDERS:
        folder = path / sub
        if folder.is_dir():
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    stat = file.stat()
                    digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _load(source: str, download: bool):  # noqa: ANN202 - transformers types are imported lazily
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as error:
        raise WeightsError(
            "model.context.kind=clip_empty needs the transformers package (pip install -e '.[sd]'); "
            "or use model.context.kind=empty."
        ) from error
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [sub for sub in SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            raise WeightsError(
                f"{OPTION}={source} has no {' or '.join(f'{m}/' for m in missing)}; point it at a Stable Diffusion "
                "folder in diffusers layout (tokenizer/ and text_encoder/)."
            )
        local = True
    else:
        local = not download
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local)
        encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", local_files_only=local)
    except Exception as error:  # noqa: BLE001 - hub, cache and file errors come in many types
        where = "a local folder" if path.is_dir() else "a local path and not in the Hugging Face cache"
        hint = "" if path.is_dir() or download else ", or set model.download=true to fetch it from the hub"
        raise WeightsError(
            f"{OPTION}={source} holds no readable CLIP tokenizer + text encoder ({type(error).__name__}: it is {where}"
            f"); point it at a Stable Diffusion folder in diffusers layout{hint}."
        ) from error
    return tokenizer, encoder


@torch.no_grad()
def empty_prompt_embedding(source: str | None, dim: int, download: bool = False, cache_dir: str | None = None) -> Tensor:
    """1×tokens×dim: the text encoder's last hidden state of the empty prompt padded to its length.

    Args:
        source: a Stable Diffusion folder in diffusers layout, or a hub id (cache only unless ``download``).
        dim: the UNet's ``cross_attention_dim`` (checked against the encoder's width).
        download: allow fetching a hub id.
        cache_dir: where the embedding is kept (``None``: ``default_cache_dir()``).

    Raises:
        WeightsError: ``source`` is unset or holds no CLIP tokenizer + text encoder, ``transformers``
            is missing, or the encoder's width is not ``dim``.
    """
    if not source:
        raise WeightsError(
            f"model.context.kind=clip_empty needs {OPTION}: a Stable Diffusion folder with tokenizer/ and "
            "text_encoder/ (the paper preset takes model.unet.weights)."
        )
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    file = cache / f"empty_prompt_{_fingerprint(str(source))}.pt"
    if file.is_file():
        embedding = torch.load(file, map_location="cpu", weights_only=True)
    else:
        tokenizer, encoder = _load(str(source), download)
        length = int(encoder.config.max_position_embeddings)
        ids = tokenizer([""], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        embedding = encoder.eval()(input_ids=ids).last_hidden_state.float().contiguous()
        buffer = io.BytesIO()
        torch.save(embedding, buffer)
        atomic_save(file, lambda handle: handle.write(buffer.getvalue()))
    if embedding.shape[-1] != dim:
        raise WeightsError(
            f"{OPTION}={source} embeds into {embedding.shape[-1]} channels but the UNet's cross_attention_dim is {dim}; "
            "use the text encoder of the UNet's Stable Diffusion version."
        )
    return embedding.reshape(1, -1, dim)
