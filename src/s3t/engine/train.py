"""Stage training: one block's LoRA and the head, on the cumulative slices of a sequence.

Everything a stage computes is a function of (the model it starts from, its sample ids,
its seed, the settings): batches are planned from a generator seeded by the stage seed,
dropout draws from the same seed, and the block starts from a seeded LoRA init. So the
same stage trained twice, here or in another process, gives bit-identical tensors.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from s3t.engine.blocks import BlockModel, State
from s3t.engine.cache import ActivationCache
from s3t.engine.compute import grad_scaler
from s3t.engine.features import IGNORE_INDEX, FeatureStore, plan_batches
from s3t.engine.loading import GLOBAL_RNG
from s3t.engine.settings import Family, TrainSettings

log = logging.getLogger(__name__)


#: progress(done_steps, total_steps, loss, samples_per_second)
StepCallback = Callable[[int, int, float, float], None]


@dataclass
class StageResult:
    """What one stage produced: the block's LoRA, the head, and how training went."""

    block: State
    head: State
    samples: int
    steps: int
    epochs_run: int
    train_loss: float
    seconds: float
    val_score: float | None = None
    history: list[float] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        """Training samples processed per second (epochs counted)."""
        return self.samples * self.epochs_run / self.seconds if self.seconds > 0 else 0.0


def train_stage(
    engine: BlockModel,
    store: FeatureStore,
    stage: int,
    train_ids: Sequence[str],
    settings: TrainSettings,
    seed: int,
    val_ids: Sequence[str] = (),
    cache: ActivationCache | None = None,
    on_step: StepCallback | None = None,
) -> StageResult:
    """Train block ``stage`` (1-based) and the head on ``train_ids``.

    The engine must hold the model the stage starts from: blocks < ``stage`` loaded,
    blocks > ``stage`` zero, and the head of stage ``stage - 1`` (re-initialised here for
    stage 1). Block ``stage`` is re-initialised from ``seed``. Stages run one at a time
    per process, so concurrent trainers stay deterministic.
    """
    with GLOBAL_RNG:  # dropout draws from torch's global generator: one stage at a time
        return _train_stage(
            engine, store, stage, train_ids, settings, seed, val_ids, cache, on_step
        )


def _train_stage(
    engine: BlockModel,
    store: FeatureStore,
    stage: int,
    train_ids: Sequence[str],
    settings: TrainSettings,
    seed: int,
    val_ids: Sequence[str],
    cache: ActivationCache | None,
    on_step: StepCallback | None,
) -> StageResult:
    # A stage whose slices lost every sample trains nothing: its block keeps the init
    # (it adds nothing) and the head passes on unchanged, exactly what training from
    # scratch on no data gives.
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    engine.init_block(stage, seed)
    if stage == 1:
        engine.init_head(seed + 1)
    params = engine.set_stage(stage, checkpointing=settings.gradient_checkpointing)
    rows = np.asarray(store.rows(train_ids))
    val_rows = store.rows(val_ids)
    start = engine.start_layer(stage)
    needed = rows.tolist() + val_rows
    if cache is not None and engine.lora.order == "top-down" and cache.covers(start, needed):
        cache.ensure(needed)
    else:
        cache, start = None, 0
    lengths = store.lengths(rows.tolist())
    plans = [
        plan_batches(lengths, settings.batch_size, generator, settings.bucket_by_length)
        for _ in range(settings.epochs)
    ]
    accumulate = settings.accumulation_steps
    total = sum(math.ceil(len(p) / accumulate) for p in plans)  # optimiser steps
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = int(settings.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(warmup, total))
    scaler = grad_scaler(engine.device, engine.precision)

    best: tuple[float, State, State] | None = None
    history: list[float] = []
    stale = 0
    step = 0
    losses: list[float] = []
    began = time.perf_counter()
    epochs_run = 0
    seen = 0
    for epoch in range(settings.epochs):
        epochs_run = epoch + 1
        batches = len(plans[epoch])
        for i, batch_positions in enumerate(plans[epoch]):
            batch_rows = rows[batch_positions].tolist()
            batch = store.collate(batch_rows)
            hidden = cache.batch(start, batch_rows) if cache is not None else None
            logits = engine.forward(batch, start, hidden)
            loss = task_loss(engine.family, logits, batch["labels"].to(logits.device))
            # the mean over the group of batches this step adds up (the last may be short)
            group = min(accumulate, batches - (i // accumulate) * accumulate)
            scaler.scale(loss / group).backward()
            losses.append(float(loss.detach()))
            seen += len(batch_rows)
            if (i + 1) % accumulate and i + 1 < batches:
                continue  # gradients add up until the next optimiser step
            scaler.unscale_(optimizer)
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if on_step is not None:
                elapsed = time.perf_counter() - began
                on_step(
                    step,
                    total,
                    float(np.mean(losses[-20:])),
                    seen / elapsed if elapsed > 0 else 0.0,
                )
        if val_rows:
            score = evaluate(engine, store, val_rows, settings.eval_batch_size, cache, start)
            history.append(score)
            engine.set_stage(stage, checkpointing=settings.gradient_checkpointing)
            if best is None or score > best[0]:
                best = (score, engine.block_state(stage), engine.head_state())
                stale = 0
            else:
                stale += 1
                if settings.patience is not None and stale >= settings.patience:
                    break
    seconds = time.perf_counter() - began
    if best is not None:
        engine.load_block(stage, best[1])
        engine.load_head(best[2])
    engine.set_eval()
    return StageResult(
        block=engine.block_state(stage),
        head=engine.head_state(),
        samples=len(rows),
        steps=step,
        epochs_run=epochs_run,
        train_loss=float(np.mean(losses[-max(1, len(plans[0])) :])) if losses else float("nan"),
        seconds=seconds,
        val_score=best[0] if best is not None else None,
        history=history,
    )


def task_loss(family: Family, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification, MSE for regression (one output), and next-token
    cross-entropy over response tokens for causal LMs."""
    if family is Family.CAUSAL_LM:
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def evaluate(
    engine: BlockModel,
    store: FeatureStore,
    rows: Sequence[int],
    batch_size: int = 128,
    cache: ActivationCache | None = None,
    start: int = 0,
) -> float:
    """Return a higher-is-better score of the engine's current model on ``rows``:
    accuracy (classification), negative MSE (regression), negative loss (causal LM)."""
    engine.set_eval()
    total = 0.0
    count = 0
    for positions in plan_batches(store.lengths(rows), batch_size, None, bucket=True):
        batch_rows = [rows[i] for i in positions]
        batch = store.collate(batch_rows)
        hidden = cache.batch(start, batch_rows) if cache is not None else None
        logits = engine.forward(batch, start, hidden)
        labels = batch["labels"].to(logits.device)
        if engine.family is Family.CAUSAL_LM:
            total -= float(task_loss(engine.family, logits, labels)) * len(batch_rows)
        elif logits.shape[-1] == 1:
            total -= float(F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum"))
        else:
            total += float((logits.argmax(-1) == labels).sum())
        count += len(batch_rows)
    return total / max(count, 1)


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
