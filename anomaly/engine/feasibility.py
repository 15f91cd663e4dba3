"""Before the model is built: can this run train on this machine, and is it the recipe it claims to be?

``check(cfg)`` stops a run with one sentence (``FeasibilityError``) naming the way out when

- the trainer asks for a GPU (``trainer.accelerator=gpu|cuda``) and the machine has none;
- a network the recipe expects pretrained would silently train from random weights: a UNet of the
  SD-1.5 layout (``model.unet.preset=sd15``) without ``model.unet.weights`` (DiAD's paper recipe
  fine-tunes Stable Diffusion 1.5); ``feasibility.from_scratch=true`` allows it;
- the training memory estimate exceeds what the device has (CUDA: free device memory; CPU: the
  kernel's ``MemAvailable``).

The estimate: the model is built on the meta device (no memory, no file read: every ``weights``
option set to none, options that depend on them resolved first), then
``states = (parameters + buffers) × w + trained parameters × 3w`` (weights, gradients and Adam's two
moments; w = 4 bytes, 2 under ``16-true``/``bf16-true``) and ``activations = batch × what autograd
saves for one image in one ``training_step`` on the meta device`` (parameters excluded; halved under
16-bit precisions). It is rough: no allocator slack, no evaluation pass, and methods whose step reads
data values (``.item()``) get no activation figure. ``feasibility.check=false`` skips the whole check.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import anomaly.config.resolvers  # noqa: F401 - ${anomaly.*} resolvers of the model configs

GIB = 2**30
#: Python, torch and the data workers of a CPU run, beside the model (rough).
CPU_OVERHEAD = 1 * GIB
#: Runs whose estimate reaches this print it in one line at start.
PRINT_FROM = 2 * GIB
#: Options naming pretrained weights; ``None``/``none`` means random initialisation.
WEIGHT_KEYS = ("weights", "pretrained", "text_encoder")


class FeasibilityError(ValueError):
    """A run this machine cannot train, or one that would not be the recipe it names."""


@dataclass
class Estimate:
    """Training memory of a run: parameters, their states and the activations of one batch."""

    parameters: int
    trained: int
    parts: dict[str, int]
    state_bytes: int
    activation_bytes: int | None  # per image; None where the step cannot run on the meta device
    batch: int
    precision: str
    weights: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + (self.activation_bytes or 0) * self.batch

    def line(self, device: str, available: int | None) -> str:
        """The estimate in one line, against what ``device`` has."""
        act = ("activations not estimated" if self.activation_bytes is None else
               f"activations {self.activation_bytes / GIB:.2f} GiB/image × {self.batch}")
        have = f"{available / GIB:.1f} GiB available on {device}" if available is not None else device
        pretrained = ", ".join(f"{k}={v}" for k, v in self.weights.items()) or "none"
        return (f"memory estimate: {self.parameters / 1e6:.1f} M parameters ({self.trained / 1e6:.1f} M trained, "
                f"Adam, {self.precision}): states {self.state_bytes / GIB:.1f} GiB + {act} ≈ "
                f"{self.total_bytes / GIB:.1f} GiB; {have}; pretrained weights: {pretrained}")


def check(cfg: DictConfig) -> Estimate | None:
    """Refuse (``FeasibilityError``) a run that cannot train here or would not be its recipe; print the
    estimate of a large one. Returns the estimate (``None`` when skipped or not computable)."""
    node = cfg.get("feasibility") or {}
    if not node.get("check", True):
        return None
    device = _device(cfg)
    if device == "missing":
        raise FeasibilityError(_no_gpu(cfg))
    _check_pretrained(cfg, bool(node.get("from_scratch", False)))
    found = estimate(cfg)
    if found is None or device == "mps":
        return found
    available = _available(device)
    needed = found.total_bytes + (CPU_OVERHEAD if device == "cpu" else 0)
    where = "the CPU (RAM)" if device == "cpu" else f"GPU {torch.cuda.get_device_name(0)}"
    if available is not None and needed > available:
        raise FeasibilityError(_too_big(cfg, found, needed, available, device, where))
    if found.total_bytes >= PRINT_FROM:
        print(found.line(where, available), flush=True)
    return found


def estimate(cfg: DictConfig) -> Estimate | None:
    """Parameters and training memory of ``cfg``'s model, built on the meta device (``None`` if it cannot be)."""
    from anomaly.engine.build import build_model

    try:
        meta = _meta_config(cfg)
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = build_model(meta)
    except Exception:  # the real build reports the model's own errors
        return None
    width, act_scale = _bytes(cfg.trainer.get("precision", "32-true"))
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    per_image = _activations(model, cfg)
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_modules()
             if name and name.count(".") < 2}
    return Estimate(
        parameters=total, trained=trained, parts=parts, state_bytes=(total + buffers) * width + trained * 3 * width,
        activation_bytes=None if per_image is None else int(per_image * act_scale),
        batch=int(cfg.data.get("batch_size") or 1), precision=str(cfg.trainer.get("precision", "32-true")),
        weights=_weights(cfg.model),
    )


def _device(cfg: DictConfig) -> str:
    """``cuda``, ``mps`` or ``cpu``: where the trainer will run; ``missing``: a GPU asked for and absent."""
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("gpu", "mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    if accelerator in ("gpu", "cuda"):
        return "missing"
    return "cpu" if accelerator in ("cpu", "auto") else accelerator


def _no_gpu(cfg: DictConfig) -> str:
    """The sentence for a GPU asked for and absent: ``trainer=cpu`` where the run fits in RAM, else a GPU."""
    start = (f"trainer.accelerator={cfg.trainer.accelerator} but this machine has no GPU "
             "(torch.cuda.is_available() is False)")
    preset = _cpu_preset(cfg)
    found, available = estimate(cfg), _available("cpu")
    if found is not None and available is not None and found.total_bytes + CPU_OVERHEAD > available:
        cpu = f"use experiment={preset} on the CPU or " if preset else ""
        return (f"{start}, and training on the CPU would need about {(found.total_bytes + CPU_OVERHEAD) / GIB:.1f} GiB "
                f"of the {available / GIB:.1f} GiB of RAM available; {cpu}run on a machine with a CUDA GPU.")
    alternative = f" (or experiment={preset}, its CPU preset)" if preset else ""
    return f"{start}; add trainer=cpu to train on the CPU{alternative} or run on a machine with a CUDA GPU."


def _check_pretrained(cfg: DictConfig, from_scratch: bool) -> None:
    """A UNet of the SD-1.5 layout without weights trains ~860 M parameters from random: not DiAD's recipe."""
    unet = cfg.model.get("unet")
    if from_scratch or not isinstance(unet, DictConfig) or unet.get("preset") != "sd15" or unet.get("weights"):
        return
    preset = _cpu_preset(cfg)
    cpu = f", train at CPU size with experiment={preset}" if preset else ""
    raise FeasibilityError(
        "model.unet.weights is not set, so the SD-1.5-sized UNet (about 860 M parameters) would train from random "
        "weights, which is not the paper's recipe; set model.unet.weights=<Stable Diffusion 1.5 folder> "
        f"(experiment=diad_mvtec){cpu}, or add feasibility.from_scratch=true to train it from scratch anyway."
    )


def _too_big(cfg: DictConfig, found: Estimate, needed: int, available: int, device: str, where: str) -> str:
    ways = []
    preset = _cpu_preset(cfg)
    if preset:
        ways.append(f"experiment={preset}")
    room = available - found.state_bytes - (CPU_OVERHEAD if device == "cpu" else 0)
    if found.activation_bytes and room > found.activation_bytes and room // found.activation_bytes < found.batch:
        ways.append(f"data.batch_size={int(room // found.activation_bytes)}")
    ways.append("a GPU" if device == "cpu" else "a GPU with more memory")
    return (f"this run needs about {needed / GIB:.1f} GiB to train ({found.parameters / 1e6:.1f} M parameters, "
            f"{found.trained / 1e6:.1f} M trained with Adam in {found.precision}) but {where} has "
            f"{available / GIB:.1f} GiB available; use {', '.join(ways[:-1]) + ' or ' if len(ways) > 1 else ''}"
            f"{ways[-1]} (feasibility.check=false skips this check).")


def _cpu_preset(cfg: DictConfig) -> str | None:
    """``<model>_cpu`` where such an experiment exists (the model's config name, else its class name)."""
    from anomaly.conf import CONF_DIR

    name = None
    with contextlib.suppress(ValueError):
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get("model")
    name = name or str(cfg.model._target_).rsplit(".", 1)[-1].lower()
    preset = f"{name}_cpu"
    if Path(CONF_DIR, "experiment", f"{preset}.yaml").is_file():
        with contextlib.suppress(ValueError):
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().runtime.choices.get("experiment") == preset:
                return None
        return preset
    return None


def _available(device: str) -> int | None:
    """Free CUDA memory of device 0, or the kernel's estimate of available RAM (``None`` if unknown)."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info(0)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _bytes(precision: Any) -> tuple[int, float]:
    """Bytes per parameter element and the activation scale of a Lightning precision."""
    text = str(precision)
    if text in ("16", "bf16", "16-true", "bf16-true", "half"):
        return 2, 0.5
    if "16" in text:  # 16-mixed, bf16-mixed: fp32 weights, half activations
        return 4, 0.5
    if text.startswith("64"):
        return 8, 2.0
    return 4, 1.0


def _meta_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with no pretrained file to read: weight options off (DiAD's ``train_encoder=auto`` and an
    autoencoder's need for weights resolved first), a placeholder category list where one is needed."""
    meta = cfg.copy()
    with open_dict(meta):
        meta.model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
        _strip(meta.model, "model")
        context = meta.model.get("context")
        if isinstance(context, DictConfig) and "kind" in context and context.kind != "class":
            context.kind = "empty"
        if "categories" in meta.model and meta.model.categories is None:
            meta.model.categories = ["category"]
    return meta


def _strip(node: DictConfig, path: str) -> None:
    if "train_encoder" in node and node.get("train_encoder") == "auto":
        node.train_encoder = not node.get("weights")
    if node.get("weights") and "fit_steps" in node and not node.get("fit_steps"):
        node.fit_steps = 1  # a pretrained autoencoder: stands in for it, the same size
    for key in list(node.keys()):
        value = node._get_node(key)
        if key in WEIGHT_KEYS:
            node[key] = "none" if path.endswith("backbone") and key == "weights" else None
        elif isinstance(value, DictConfig):
            _strip(node[key], f"{path}.{key}")


def _weights(node: Any, path: str = "model") -> dict[str, str]:
    """The pretrained-weight options the recipe sets (``option -> value``)."""
    found: dict[str, str] = {}
    if isinstance(node, DictConfig):
        for key in node:
            value = node._get_node(key)
            if key in WEIGHT_KEYS and not isinstance(value, DictConfig):
                found[f"{path}.{key}"] = str(node.get(key) or "none")
            elif isinstance(value, DictConfig):
                found.update(_weights(value, f"{path}.{key}"))
    return found


def _activations(model: torch.nn.Module, cfg: DictConfig) -> int | None:
    """Bytes autograd saves for backward in one ``training_step`` of one image on the meta device."""
    step = getattr(model, "training_step", None)
    size = cfg.data.get("crop_size") or cfg.data.get("image_size") or 256
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    own = {id(p) for p in model.parameters()}
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in own and id(getattr(tensor, "_base", None)) not in own:
            saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            image = torch.zeros(1, 3, height, width)
            batch = {"image": image, "source": image.clone(), "mask": torch.zeros(1, 1, height, width),
                     "label": torch.zeros(1, dtype=torch.long), "category": ["category"], "defect": ["good"],
                     "path": ["image.png"]}
            model.train()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                step(batch, 0)
    except Exception:  # a step that reads data values (.item()) or needs its trainer
        return None
    return saved[0]
