"""The baseline pipeline for the training benchmark: what the authors' research code does.

One ``transformers.Trainer`` run per stage on a peft model: LoRA on every block's layers,
block i and the classifier made trainable for stage i, the whole model in train mode
(dropout on in frozen layers too), every forward pass through every layer, batches padded
by ``DataCollatorWithPadding``. Same optimiser, schedule, clipping, batch size and data
as ours, so the comparison isolates the engine.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s3t.data.examples import Examples
from s3t.engine.blocks import peft_config
from s3t.engine.loading import load_backbone
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings, block_layers

log = logging.getLogger(__name__)


@dataclass
class BaselineResult:
    """Wall time, samples processed and test accuracy of the Trainer pipeline."""

    seconds: float
    samples: int
    accuracy: float
    stage_seconds: list[float]

    @property
    def samples_per_second(self) -> float:
        """Training samples (epochs counted) per second of wall time."""
        return self.samples / self.seconds


class _Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(
        self, encoded: dict[str, list[Any]], labels: np.ndarray, rows: Sequence[int]
    ) -> None:
        self.encoded, self.labels, self.rows = encoded, labels, list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        item = {k: v[row] for k, v in self.encoded.items()}
        item["labels"] = int(self.labels[row])
        return item


def train_with_trainer(
    spec: ModelSpec,
    lora: LoraSettings,
    settings: TrainSettings,
    train: Examples,
    test: Examples,
    sequence: Sequence[int],
    slice_of: dict[str, int],
    seed: int = 0,
) -> BaselineResult:
    """Train one S3T sequence stage by stage with ``transformers.Trainer``."""
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    backbone = load_backbone(spec, seed=seed)
    anatomy = backbone.anatomy
    slices = len(sequence)
    blocks = block_layers(anatomy.num_layers, slices, lora.layers_per_slice, lora.order)
    config = peft_config(lora, backbone, sorted(i for b in blocks for i in b), anatomy.head)
    model = get_peft_model(backbone.model, config)
    tokenizer: Any = backbone.tokenizer
    encoded = dict(
        tokenizer(
            list(train.text or ()),
            list(train.text_pair) if train.text_pair else None,
            truncation=True,
            max_length=spec.max_length,
        )
    )
    labels = np.asarray(train.labels)
    collator = DataCollatorWithPadding(tokenizer)
    stage_seconds = []
    samples = 0
    began = time.perf_counter()
    for stage in range(1, slices + 1):
        layers = set(blocks[stage - 1])
        for name, param in model.named_parameters():
            param.requires_grad = (
                "lora_" in name and _layer_of(name, anatomy.layers_attr) in layers
            ) or ("modules_to_save" in name)
        rows = [i for i, sid in enumerate(train.ids) if slice_of[sid] in sequence[:stage]]
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=settings.batch_size,
                num_train_epochs=settings.epochs,
                learning_rate=settings.lr,
                weight_decay=settings.weight_decay,
                warmup_steps=0,
                max_grad_norm=settings.max_grad_norm or 0.0,
                lr_scheduler_type="linear",
                save_strategy="no",
                eval_strategy="no",
                logging_strategy="no",
                report_to="none",
                disable_tqdm=True,
                use_cpu=True,
                seed=seed + stage,
                dataloader_num_workers=0,
            )
            trainer = Trainer(
                model=model,
                args=args,
                train_dataset=_Rows(encoded, labels, rows),
                data_collator=collator,
            )
            trainer.remove_callback(PrinterCallback)
            t0 = time.perf_counter()
            trainer.train()
            stage_seconds.append(time.perf_counter() - t0)
        samples += len(rows) * settings.epochs
    seconds = time.perf_counter() - began
    return BaselineResult(
        seconds, samples, _accuracy(model, tokenizer, test, spec.max_length), stage_seconds
    )


def _layer_of(name: str, attr: str) -> int:
    """Layer index of a parameter, read from the exact path component after ``attr``."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == attr and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return -1


@torch.no_grad()
def _accuracy(model: Any, tokenizer: Any, test: Examples, max_length: int) -> float:
    model.eval()
    correct = 0
    texts = list(test.text or ())
    pairs = list(test.text_pair) if test.text_pair else None
    for start in range(0, len(texts), 128):
        batch = tokenizer(
            texts[start : start + 128],
            pairs[start : start + 128] if pairs else None,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        logits = model(**batch).logits
        correct += int(
            (logits.argmax(-1).numpy() == np.asarray(test.labels)[start : start + 128]).sum()
        )
    return correct / len(texts)
