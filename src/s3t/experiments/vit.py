"""A small pretrained ViT for the image path. No pretrained ViT exists on this machine, so one
is pretrained here, fully supervised, on a fixed part of Fashion-MNIST's training images;
those images are listed in the checkpoint (``s3t_pretrain.json``) and experiments leave them
out of S3T's training data, so the backbone never saw what S3T later fine-tunes and forgets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3t.data import load_dataset
from s3t.experiments.common import PRETRAIN_MANIFEST, Say


def pretrain_vit(
    out: Path,
    data: str = "builtin:fashion_mnist",
    samples: int = 12000,
    epochs: int = 2,
    hidden: int = 128,
    layers: int = 6,
    seed: int = 0,
    say: Say = print,
) -> dict[str, Any]:
    """Train a ViT (patch 4, ``layers`` layers of width ``hidden``) on the last ``samples``
    training images of ``data`` and save it as a Hugging Face checkpoint in ``out``."""
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    transformers.utils.logging.disable_progress_bar()

    dataset = load_dataset(data)
    train = dataset.train
    if train.image is None or train.labels is None:
        raise ValueError(f"{data} holds no labelled images")
    rows = np.arange(len(train))[-samples:]
    images = torch.tensor(np.asarray(train.image)[rows]).float().div(255.0).sub(0.5).div(0.5)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    labels = torch.as_tensor(np.asarray(train.labels)[rows])
    size = int(images.shape[-1])
    config = ViTConfig(  # type: ignore[call-arg]
        image_size=size,
        patch_size=4 if size % 4 == 0 else 2,
        num_channels=int(images.shape[1]),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 4,
        num_labels=train.num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = epochs * ((len(rows) + 63) // 64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        for start in range(0, len(rows), 64):
            idx = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(
                model(pixel_values=images[idx]).logits, labels[idx]
            )
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += float(loss.detach()) * len(idx)
        say(f"pretrain-vit: epoch {epoch + 1}/{epochs}, loss {total / len(rows):.4f}")
    model.eval()
    accuracy = _accuracy(model, dataset.test)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5], "image_std": [0.5]})
    )
    manifest = {
        "data": data,
        "trained_on": [train.ids[i] for i in rows],
        "epochs": epochs,
        "seconds": round(time.perf_counter() - began, 1),
        "test_accuracy": accuracy,
    }
    (out / PRETRAIN_MANIFEST).write_text(json.dumps(manifest))
    say(f"pretrain-vit: saved to {out} (test accuracy {accuracy:.4f}, {manifest['seconds']} s)")
    return {k: v for k, v in manifest.items() if k != "trained_on"}


@torch.no_grad()
def _accuracy(model: Any, test: Any) -> float | None:
    if test is None or test.image is None:
        return None
    images = torch.tensor(np.asarray(test.image)).float().div(255.0).sub(0.5).div(0.5)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    predictions = torch.cat(
        [
            model(pixel_values=images[i : i + 256]).logits.argmax(-1)
            for i in range(0, len(images), 256)
        ]
    )
    return float((predictions.numpy() == np.asarray(test.labels)).mean())
