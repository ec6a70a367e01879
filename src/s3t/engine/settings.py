"""The settings of the model engine, as frozen dataclasses validated on creation.

Kept free of torch so that the registry, the CLI and deletion requests can read and check
a configuration without loading the deep-learning stack.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

from s3t.errors import ConfigError


def option(default: Any, help: str) -> Any:
    """A settings field with its one description (the CLI's help is derived from it)."""
    return field(default=default, metadata={"help": help})


def description(cls: type, name: str) -> str:
    """The one description of a settings field."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def help_of(cls: type, name: str) -> str:
    """The description of a settings field, with its default: the text of ``--help``."""
    for f in fields(cls):
        if f.name == name:
            text = description(cls, name)
            if f.default is MISSING or f.default is None:
                return text  # the text says what "unset" means
            shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            return f"{text} (default: {shown})"
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


Order = Literal["top-down", "bottom-up"]


class Family(StrEnum):
    """The three model families of the paper."""

    ENCODER = "encoder"  # sequence classification / regression (BERT, RoBERTa, DeBERTa, …)
    IMAGE = "image"  # image classification (ViT, …)
    CAUSAL_LM = "causal-lm"  # decoder LMs for instruction tuning (Llama, GPT-2, …)


@dataclass(frozen=True)
class ModelSpec:
    """Which backbone to fine-tune and for what output."""

    name_or_path: str = option(
        MISSING,
        "A Hugging Face hub id, a local folder, or builtin:minilm (the packaged all-MiniLM-L6-v2).",
    )
    family: Family | None = option(
        None, "encoder, image or causal-lm; detected from the model's config when unset."
    )
    num_labels: int = option(
        0,
        "Model outputs: classes, 1 for regression, 0 to take it from the data (causal LMs: ignored).",
    )
    max_length: int = option(128, "Token truncation length.")
    quantize: str | None = option(
        None,
        "Load the frozen base quantised, QLoRA-style: 4bit (NF4) or 8bit, for decoder LMs "
        "(needs bitsandbytes: the quantize extra); unset: full precision.",
    )

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ConfigError("model name_or_path must not be empty")
        if self.num_labels < 0:
            raise ConfigError(f"num_labels must be >= 0, got {self.num_labels!r}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length!r}")
        if self.quantize not in (None, "4bit", "8bit"):
            raise ConfigError(f"quantize must be 4bit, 8bit or unset, got {self.quantize!r}")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters and the block layout."""

    rank: int = option(16, "LoRA rank r.")
    alpha: float | None = option(
        None, "LoRA alpha; unset means the paper's family default (2r for text models, r for ViT)."
    )
    dropout: float = option(0.0, "LoRA dropout (frozen layers always run without dropout).")
    rslora: bool = option(True, "Rank-stabilised LoRA scaling (alpha / sqrt(r)), as in the paper.")
    targets: tuple[str, ...] | None = option(
        None,
        "LoRA target projections; unset means the family default (query,value; all seven "
        "attention/MLP projections for Llama-style decoders).",
    )
    layers_per_slice: int | None = option(None, "Layers per block ℓ; unset means num_layers // L.")
    order: Order = option(
        "top-down", "Block order: the paper's top-down, or bottom-up (the ablation)."
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank!r}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.layers_per_slice is not None and self.layers_per_slice < 1:
            raise ConfigError(f"layers_per_slice must be >= 1, got {self.layers_per_slice!r}")
        if self.order not in ("top-down", "bottom-up"):
            raise ConfigError(f"order must be 'top-down' or 'bottom-up', got {self.order!r}")

    def alpha_for(self, family: Family) -> float:
        """Return alpha, filling in the family default."""
        if self.alpha is not None:
            return self.alpha
        return float(self.rank if family is Family.IMAGE else 2 * self.rank)


def block_layers(
    num_layers: int, slices: int, layers_per_slice: int | None = None, order: Order = "top-down"
) -> list[tuple[int, ...]]:
    """Return the layer indices of blocks 1..L (list position i-1 is block i).

    Top-down: block i = layers N-1-(i-1)ℓ … N-iℓ. Bottom-up: block i = (i-1)ℓ … iℓ-1.
    """
    per = layers_per_slice if layers_per_slice is not None else num_layers // max(slices, 1)
    if slices < 1 or per < 1 or per * slices > num_layers:
        raise ConfigError(
            f"cannot make {slices} blocks of {per} layer(s) from a model with {num_layers} "
            f"layers; use at most {num_layers} slices or fewer layers per slice"
        )
    blocks = []
    for i in range(1, slices + 1):
        if order == "top-down":
            top = num_layers - 1 - (i - 1) * per
            blocks.append(tuple(range(top, top - per, -1)))
        else:
            blocks.append(tuple(range((i - 1) * per, i * per)))
    return blocks


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of every stage. The defaults are the ones README recommends:
    the best of a learning-rate sweep on a validation split (never the test split)."""

    lr: float = option(2e-3, "AdamW learning rate of every stage.")
    epochs: int = option(2, "Epochs per stage.")
    batch_size: int = option(16, "Training batch size.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    warmup_ratio: float = option(
        0.0, "Share of a stage's steps with linear warm-up (then linear decay)."
    )
    max_grad_norm: float | None = option(1.0, "Gradient clipping norm; unset: no clipping.")
    cache_activations: bool = option(
        True, "Reuse the frozen lower layers' outputs (exact; top-down blocks only)."
    )
    bucket_by_length: bool = option(True, "Batch samples of similar length together.")
    validation_fraction: float = option(
        0.1,
        "Share of every slice held out for best-epoch selection and early stopping (carved "
        "from the shard's own training data, never from the test split).",
    )
    patience: int | None = option(None, "Early-stopping patience in epochs; unset: none.")
    eval_batch_size: int = option(128, "Batch size of validation passes.")
    precision: str = option(
        "fp32",
        "fp32, or bf16/fp16 mixed precision (autocast; the frozen base stored in that dtype, "
        "LoRA and the head kept in fp32; fp16 with a gradient scaler).",
    )
    gradient_checkpointing: bool = option(
        False, "Recompute the trained layers' activations in the backward pass (less memory)."
    )
    accumulation_steps: int = option(
        1,
        "Batches whose gradients add up before each optimiser step (a larger batch in less memory).",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs!r}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}"),
            (
                0 <= self.warmup_ratio < 1,
                f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}",
            ),
            (
                self.max_grad_norm is None or self.max_grad_norm > 0,
                f"max_grad_norm must be > 0, got {self.max_grad_norm!r}",
            ),
            (
                0 <= self.validation_fraction < 0.5,
                f"validation_fraction must be in [0, 0.5), got {self.validation_fraction!r}",
            ),
            (
                self.patience is None or self.patience >= 1,
                f"patience must be >= 1, got {self.patience!r}",
            ),
            (
                self.eval_batch_size >= 1,
                f"eval_batch_size must be >= 1, got {self.eval_batch_size!r}",
            ),
            (
                self.precision in ("fp32", "bf16", "fp16"),
                f"precision must be fp32, bf16 or fp16, got {self.precision!r}",
            ),
            (
                self.accumulation_steps >= 1,
                f"accumulation_steps must be >= 1, got {self.accumulation_steps!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass(frozen=True)
class Compute:
    """Run-time choices that never change what is trained: the device (``auto``, ``cpu``,
    ``cuda``, ``cuda:N``, ``mps``), the activation cache's memory budget in bytes, and the
    folder it spills to beyond that (the workspace's ``cache/`` when trained by the system)."""

    device: str = "auto"
    cache_memory: int = 4 * 2**30
    cache_dir: Any = None  # a pathlib.Path

    def __post_init__(self) -> None:
        if self.cache_memory < 0:
            raise ConfigError(f"cache_memory must be >= 0 bytes, got {self.cache_memory!r}")


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1.5GiB"`` or a plain number of bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if value and value[-1] in scale:
            return int(float(value[:-1]) * scale[value[-1]])
        return int(float(value))
    except ValueError:
        raise ConfigError(f"a size must look like 512M or 4G, got {text!r}") from None
