"""The settings of the model engine, as frozen dataclasses validated on creation.

Kept free of torch so that the registry, the CLI and deletion requests can read and check
a configuration without loading the deep-learning stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from s3t.errors import ConfigError

Order = Literal["top-down", "bottom-up"]


class Family(StrEnum):
    """The three model families of the paper."""

    ENCODER = "encoder"  # sequence classification / regression (BERT, RoBERTa, DeBERTa, …)
    IMAGE = "image"  # image classification (ViT, …)
    CAUSAL_LM = "causal-lm"  # decoder LMs for instruction tuning (Llama, GPT-2, …)


@dataclass(frozen=True)
class ModelSpec:
    """Which backbone to fine-tune and for what output.

    ``name_or_path``: a hub id, a local folder, or ``builtin:minilm`` (the packaged
    all-MiniLM-L6-v2). ``family``: ``None`` to detect from the config. ``num_labels``:
    classes, 1 for regression, 0 to take it from the data; ignored for causal LMs.
    ``max_length``: token truncation.
    """

    name_or_path: str
    family: Family | None = None
    num_labels: int = 0
    max_length: int = 128

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ConfigError("model name_or_path must not be empty")
        if self.num_labels < 0:
            raise ConfigError(f"num_labels must be >= 0, got {self.num_labels!r}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length!r}")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters and the block layout.

    ``alpha`` ``None`` means the paper's family default (2r for text models, r for ViT).
    ``targets`` ``None`` means the family default projections (query/value; all seven
    attention/MLP projections for Llama-style decoders). ``layers_per_slice`` ``None``
    means ℓ = num_layers // L. ``order`` is the block order (the paper's top-down, or the
    bottom-up ablation).
    """

    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    rslora: bool = True
    targets: tuple[str, ...] | None = None
    layers_per_slice: int | None = None
    order: Order = "top-down"

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
    """Optimisation settings of every stage.

    ``epochs`` per stage; AdamW with ``lr``, ``weight_decay``; linear warm-up over
    ``warmup_ratio`` of the steps then linear decay; gradients clipped to
    ``max_grad_norm`` (``None``: no clipping). ``cache_activations`` reuses the frozen
    lower layers' outputs (exact, top-down only); ``bucket_by_length`` batches samples
    of similar length together. ``validation_fraction`` of every slice is held out for
    early stopping (``patience`` epochs without improvement) and best-epoch selection;
    it is carved from the shard's own training data, never from the test set.
    """

    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    cache_activations: bool = True
    bucket_by_length: bool = True
    validation_fraction: float = 0.0
    patience: int | None = None
    eval_batch_size: int = 128

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
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
