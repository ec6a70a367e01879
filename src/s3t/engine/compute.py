"""Where and how the engine computes: the device (CPU, a CUDA GPU, Apple's MPS), the
precision (fp32, or bf16/fp16 autocast with the frozen base stored in that dtype and the
trained LoRA and head kept in fp32), deterministic algorithms where bit-identity needs
them, and a memory estimate shown before training starts.

Artifacts always hold CPU fp32 tensors, so a workspace trained on one device serves on
any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from s3t.errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """The device to compute on: ``auto`` picks a CUDA GPU, then MPS, then the CPU. A device
    that is not available is a :class:`ConfigError` naming what is."""
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        elif torch.backends.mps.is_available():
            text = "mps"
        else:
            text = "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"device must be one of {DEVICES}, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be one of {DEVICES}, got {name!r}")
    configure_determinism(device)
    return device


def configure_determinism(device: torch.device) -> None:
    """Ask for deterministic kernels where bit-identity needs them: on CUDA, deterministic
    algorithms (which also switches attention's backward to its deterministic kernels), a
    fixed cuBLAS workspace and no TF32; CPU kernels are deterministic for a fixed thread
    count already. An op with no deterministic CUDA kernel then stops training with
    torch's error naming it: bit-identity is never silently given up."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name."""
    try:
        return DTYPES[precision]
    except KeyError:
        raise ConfigError(f"precision must be one of {list(DTYPES)}, got {precision!r}") from None


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the forward pass (a no-op in fp32)."""
    if precision == "fp32":
        with nullcontext():
            yield
        return
    with torch.autocast(device_type=device.type, dtype=precision_dtype(precision)):
        yield


def grad_scaler(device: torch.device, precision: str) -> Any:
    """A gradient scaler for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


@dataclass(frozen=True)
class MemoryEstimate:
    """What training a stage needs, roughly, in bytes."""

    weights: int
    trainable: int
    optimizer: int
    activations_per_batch: int

    @property
    def total(self) -> int:
        """The sum of the parts."""
        return self.weights + self.trainable + self.optimizer + self.activations_per_batch

    def describe(self) -> str:
        """One line for people."""
        gib = 2**30
        return (
            f"estimated memory: weights {self.weights / gib:.2f} GiB, trainable LoRA + head "
            f"{self.trainable / gib:.3f} GiB (+ {self.optimizer / gib:.3f} GiB optimizer state), "
            f"activations ~{self.activations_per_batch / gib:.2f} GiB per batch; "
            f"~{self.total / gib:.2f} GiB in all"
        )


def estimate_memory(
    model: torch.nn.Module,
    trainable: int,
    batch_size: int,
    tokens: int,
    layers: int,
    hidden: int,
    checkpointing: bool,
) -> MemoryEstimate:
    """Weights as loaded (quantised or not), fp32 trainables with AdamW's two states and
    their gradients, and activations of one batch through the trained layers (about 16
    values per token and hidden unit per layer; one layer's worth with checkpointing)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    per_layer = 16 * batch_size * tokens * hidden * 4
    return MemoryEstimate(
        weights=int(weights),
        trainable=4 * trainable,
        optimizer=3 * 4 * trainable,
        activations_per_batch=int(per_layer * (1 if checkpointing else layers)),
    )


def estimate_for(backbone: Any, lora: Any, slices: int, train: Any) -> MemoryEstimate:
    """The memory estimate of training one stage of this backbone and settings (the largest
    block's LoRA, the head, a batch through every layer from the lowest block up)."""
    from s3t.engine.settings import block_layers

    anatomy = backbone.anatomy
    model = backbone.model
    targets = set(lora.targets or anatomy.targets)
    layers = anatomy.layers(model)
    per_layer = [
        sum(
            lora.rank * (int(getattr(m, "in_features", 0)) + int(getattr(m, "out_features", 0)))
            for name, m in layer.named_modules()
            if name.rsplit(".", 1)[-1] in targets
        )
        for layer in layers
    ]
    blocks = block_layers(anatomy.num_layers, slices, lora.layers_per_slice, lora.order)
    block = max(sum(per_layer[i] for i in b) for b in blocks)
    head = sum(p.numel() for h in anatomy.head for p in model.get_submodule(h).parameters())
    config: Any = model.config
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    weights_scale = 0.5 if train.precision != "fp32" and backbone.spec.quantize is None else 1.0
    estimate = estimate_memory(
        model,
        block + head,
        train.batch_size,
        backbone.spec.max_length,
        len(layers),
        hidden,
        train.gradient_checkpointing,
    )
    return MemoryEstimate(
        int(estimate.weights * weights_scale),
        estimate.trainable,
        estimate.optimizer,
        estimate.activations_per_batch,
    )
