"""Devices, precision, gradient checkpointing and accumulation, memory estimates, and the
activation cache spilling to disk: what runs on a CPU is tested here (GPU runs are
``bench/gpu.py``'s job)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import assert_same_state
from s3t.engine.blocks import BlockModel
from s3t.engine.cache import ActivationCache
from s3t.engine.compute import estimate_for, resolve_device
from s3t.engine.features import FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.settings import Compute, LoraSettings, ModelSpec, TrainSettings, parse_bytes
from s3t.engine.train import StageResult, train_stage
from s3t.errors import ConfigError
from tiny import sentiment_texts

IDS = [f"s{i}" for i in range(48)]


def _engine(path: Path, precision: str = "fp32", slices: int = 3) -> BlockModel:
    backbone = load_backbone(ModelSpec(str(path), num_labels=2), precision=precision)
    return BlockModel(backbone, LoraSettings(rank=2), slices, torch.device("cpu"), precision)


def _train(
    engine: BlockModel,
    settings: TrainSettings,
    stage: int = 1,
    cache: ActivationCache | None = None,
    steps: list[tuple[int, int]] | None = None,
) -> StageResult:
    texts, labels = sentiment_texts(len(IDS), seed=5)
    store = FeatureStore(engine.backbone, IDS, text=texts, labels=labels)
    if cache is not None:
        cache.bind(store, {sid: i % 3 for i, sid in enumerate(IDS)})
    for earlier in range(1, stage):
        engine.init_block(earlier, seed=earlier)
    return train_stage(
        engine,
        store,
        stage,
        IDS,
        settings,
        seed=11,
        cache=cache,
        on_step=None if steps is None else (lambda s, t, *_: steps.append((s, t))),
    )


def test_devices_resolve_or_fail_with_a_clear_error() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available here; use --device cpu"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="cache_memory must be >= 0"):
        Compute(cache_memory=-1)
    assert parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)
    with pytest.raises(ConfigError, match="512M or 4G"):
        parse_bytes("lots")


def test_precision_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="precision must be fp32, bf16 or fp16"):
        TrainSettings(precision="fp8")
    with pytest.raises(ConfigError, match="accumulation_steps must be >= 1"):
        TrainSettings(accumulation_steps=0)
    with pytest.raises(ConfigError, match="quantize must be 4bit, 8bit or unset"):
        ModelSpec("m", quantize="2bit")


@pytest.mark.exactness
def test_bf16_keeps_the_base_in_bf16_and_what_is_trained_in_fp32(tiny_bert: Path) -> None:
    engine = _engine(tiny_bert, "bf16")
    trained = {id(p) for b in engine.block_params for p in b.values()}
    trained |= {id(p) for p in engine.head_params.values()}
    for name, param in engine.model.named_parameters():
        expected = torch.float32 if id(param) in trained else torch.bfloat16
        assert param.dtype == expected, name
    result = _train(engine, TrainSettings(lr=1e-2, batch_size=8, precision="bf16"))
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in result.block.values())
    assert all(torch.isfinite(t).all() for t in result.block.values())
    again = _train(
        _engine(tiny_bert, "bf16"), TrainSettings(lr=1e-2, batch_size=8, precision="bf16")
    )
    assert_same_state(result.block, again.block)  # deterministic in bf16 as in fp32
    fp32 = _train(_engine(tiny_bert), TrainSettings(lr=1e-2, batch_size=8))
    assert any(not torch.equal(result.block[k], fp32.block[k]) for k in fp32.block)
    close = [torch.allclose(result.head[k], fp32.head[k], atol=5e-2) for k in fp32.head]
    assert all(close), "a bf16 stage strays far from its fp32 twin"


def test_fp16_trains_with_a_gradient_scaler(tiny_bert: Path) -> None:
    result = _train(
        _engine(tiny_bert, "fp16"), TrainSettings(lr=1e-2, batch_size=8, precision="fp16")
    )
    assert all(torch.isfinite(t).all() for t in [*result.block.values(), *result.head.values()])
    assert any(t.abs().sum() > 0 for k, t in result.block.items() if "lora_B" in k)


@pytest.mark.exactness
@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_changes_memory_not_results(tiny_bert: Path, stage: int) -> None:
    plain = _train(_engine(tiny_bert), TrainSettings(lr=1e-2, batch_size=8), stage)
    settings = TrainSettings(lr=1e-2, batch_size=8, gradient_checkpointing=True)
    checkpointed = _train(_engine(tiny_bert), settings, stage)
    assert_same_state(plain.block, checkpointed.block)
    assert_same_state(plain.head, checkpointed.head)


def test_accumulation_steps_take_one_optimiser_step_per_group_of_batches(
    tiny_bert: Path,
) -> None:
    steps: list[tuple[int, int]] = []
    settings = TrainSettings(lr=1e-2, batch_size=8, epochs=2, accumulation_steps=4)
    result = _train(_engine(tiny_bert), settings, steps=steps)
    per_epoch = math.ceil(math.ceil(len(IDS) / 8) / 4)  # 6 batches -> 2 steps
    assert [s for s, _ in steps] == list(range(1, 2 * per_epoch + 1))
    assert {t for _, t in steps} == {2 * per_epoch}
    assert result.steps == 2 * per_epoch
    assert any(t.abs().sum() > 0 for k, t in result.block.items() if "lora_B" in k)


def test_the_memory_estimate_shrinks_with_checkpointing_and_precision(tiny_bert: Path) -> None:
    engine = _engine(tiny_bert)
    lora = LoraSettings(rank=2)
    plain = estimate_for(engine.backbone, lora, 3, TrainSettings())
    lean = estimate_for(
        engine.backbone, lora, 3, TrainSettings(gradient_checkpointing=True, precision="bf16")
    )
    assert plain.weights > 0 and plain.trainable > 0 and plain.optimizer == 3 * plain.trainable
    assert lean.activations_per_batch < plain.activations_per_batch
    assert lean.weights < plain.weights
    assert "GiB in all" in plain.describe()


def _cached(engine: BlockModel, spill: Path | None, budget: int) -> ActivationCache:
    layers = [engine.start_layer(i) for i in (1, 2, 3)]
    return ActivationCache(engine, layers, batch_size=8, max_bytes=budget, spill_dir=spill)


@pytest.mark.exactness
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_spilled_cache_trains_bit_identically_to_one_in_memory(
    tiny_bert: Path, tmp_path: Path, precision: str
) -> None:
    settings = TrainSettings(lr=1e-2, batch_size=8, precision=precision)
    results = []
    for spill, budget in ((None, 2**30), (tmp_path, 0)):
        engine = _engine(tiny_bert, precision)
        cache = _cached(engine, spill, budget)
        results.append(_train(engine, settings, stage=2, cache=cache))
        if spill is not None:
            assert cache.memory_bytes == 0 and cache.spilled_bytes > 0
            files = sorted(p.name for p in tmp_path.glob("*.activations"))
            assert [f.split("-")[0] for f in files] == ["0", "1", "2"]  # one file per group
            cache.close()
            assert not list(tmp_path.iterdir()), "closing the cache leaves its files"
    assert_same_state(results[0].block, results[1].block)
    assert_same_state(results[0].head, results[1].head)


def test_a_spill_file_goes_when_its_group_changes(tiny_bert: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_bert)
    cache = _cached(engine, tmp_path, 0)
    texts, labels = sentiment_texts(len(IDS), seed=5)
    groups = {sid: (0, i % 3) for i, sid in enumerate(IDS)}
    cache.bind(FeatureStore(engine.backbone, IDS, text=texts, labels=labels), groups)
    cache.ensure(list(range(len(IDS))))
    assert len(list(tmp_path.glob("*.activations"))) == 3
    kept = IDS[1:]  # s0 (group (0, 0)) is forgotten
    store = FeatureStore(engine.backbone, kept, text=texts[1:], labels=labels[1:])
    cache.bind(store, {sid: groups[sid] for sid in kept})
    names = sorted(p.name.split("-")[1] for p in tmp_path.glob("*.activations"))
    assert names == ["1", "2"], "the spill file of the changed group survived"


@pytest.mark.exactness
def test_a_cache_without_a_spill_folder_recomputes_the_same_bits(tiny_bert: Path) -> None:
    settings = TrainSettings(lr=1e-2, batch_size=8)
    results = []
    for budget in (2**30, 0):  # 0: no room, groups are dropped and recomputed
        engine = _engine(tiny_bert)
        results.append(_train(engine, settings, stage=2, cache=_cached(engine, None, budget)))
    assert_same_state(results[0].block, results[1].block)
    assert_same_state(results[0].head, results[1].head)


def test_fp32_means_fp32_whatever_the_checkpoint_was_saved_in(tmp_path: Path) -> None:
    from tiny import save_tiny_text_model

    path = save_tiny_text_model(tmp_path / "half", "bert", layers=3)
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(path).half().save_pretrained(path)
    engine = _engine(path)
    assert {p.dtype for p in engine.model.parameters()} == {torch.float32}
    result = _train(engine, TrainSettings(lr=1e-2, batch_size=8))
    assert all(t.dtype == torch.float32 for t in result.head.values())


def test_a_spill_the_guard_refuses_stays_in_memory_and_a_dropped_group_is_recomputed(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """The guard says no (a member was deleted since the snapshot): no file is written; a
    group dropped mid-stage (a deletion) is computed again when next read."""
    from contextlib import contextmanager

    asked: list[tuple[str, ...]] = []

    @contextmanager
    def refuse(members):  # type: ignore[no-untyped-def]
        asked.append(tuple(members))
        yield False

    engine = _engine(tiny_bert)
    layers = [engine.start_layer(i) for i in (1, 2, 3)]
    cache = ActivationCache(
        engine, layers, batch_size=8, max_bytes=0, spill_dir=tmp_path, spill_guard=refuse
    )
    texts, labels = sentiment_texts(len(IDS), seed=5)
    cache.bind(
        FeatureStore(engine.backbone, IDS, text=texts, labels=labels),
        {s: i % 3 for i, s in enumerate(IDS)},
    )
    rows = list(range(len(IDS)))
    before = cache.batch(layers[1], rows)
    assert len(asked) == 3 and not list(tmp_path.iterdir()) and cache.spilled_bytes == 0
    cache.drop([0, 1, 2])
    assert cache.memory_bytes == 0
    assert torch.equal(cache.batch(layers[1], rows), before)
