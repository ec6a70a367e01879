"""Block layout and isolation: a stage changes only its own block's LoRA and the head."""

import numpy as np
import pytest
import torch

from s3t.engine.blocks import BlockModel
from s3t.engine.features import FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings, block_layers
from s3t.engine.train import train_stage
from s3t.errors import ConfigError
from tiny import sentiment_texts


def test_blocks_are_counted_from_the_top_by_layer_index() -> None:
    assert block_layers(12, 4) == [(11, 10, 9), (8, 7, 6), (5, 4, 3), (2, 1, 0)]
    assert block_layers(6, 4) == [(5,), (4,), (3,), (2,)]  # ℓ = 6 // 4; layers 0-1 untouched
    assert block_layers(12, 3, layers_per_slice=2) == [(11, 10), (9, 8), (7, 6)]
    assert block_layers(6, 3, order="bottom-up") == [(0, 1), (2, 3), (4, 5)]
    with pytest.raises(ConfigError, match="cannot make 7 blocks"):
        block_layers(6, 7)
    with pytest.raises(ConfigError, match="cannot make 3 blocks of 3"):
        block_layers(6, 3, layers_per_slice=3)


def _engine(path, slices: int, **lora):  # type: ignore[no-untyped-def]
    backbone = load_backbone(ModelSpec(str(path), num_labels=2))
    return BlockModel(backbone, LoraSettings(rank=2, **lora), slices)


def test_parameters_are_attributed_to_blocks_by_layer_index(tiny_bert12) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(tiny_bert12, slices=12)
    for i, params in enumerate(engine.block_params, start=1):
        layer = 12 - i
        assert params, f"block {i} has no LoRA"
        assert all(f".layer.{layer}.attention" in name for name in params), (i, list(params))
    # layer 1 is block 11 only; layers 10 and 11 (whose names contain "layer.1") are elsewhere
    assert all(".layer.1." in n for n in engine.block_params[10])
    assert not any(".layer.1." in n for b in (0, 1) for n in engine.block_params[b])
    assert list(engine.head_params) == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("stage", [1, 2, 11])
def test_a_stage_changes_only_its_block_and_the_head(tiny_bert12, stage: int) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(tiny_bert12, slices=12)
    texts, labels = sentiment_texts(48)
    ids = [f"s{i}" for i in range(48)]
    store = FeatureStore(engine.backbone, ids, text=texts, labels=labels)
    for earlier in range(1, stage):  # a trained-looking model to start from
        engine.init_block(earlier, seed=earlier)
        with torch.no_grad():
            for name, p in engine.block_params[earlier - 1].items():
                if "lora_B" in name:
                    p.normal_()
    before = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}
    train_stage(engine, store, stage, ids, TrainSettings(lr=1e-2, batch_size=8), seed=3)
    after = engine.model.state_dict()
    allowed = set(engine.block_params[stage - 1]) | set(engine.head_params)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= allowed
    b_changed = {k for k in changed if "lora_B" in k}
    assert b_changed == {k for k in engine.block_params[stage - 1] if "lora_B" in k}
    assert {"classifier.weight", "classifier.bias"} <= changed
    for name, p in engine.block_params[stage - 1].items():
        if "lora_B" in name:
            assert p.abs().sum() > 0, f"{name} did not train"


def test_zero_blocks_add_exactly_nothing(tiny_bert) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(tiny_bert, slices=3)
    texts, labels = sentiment_texts(16)
    store = FeatureStore(engine.backbone, [str(i) for i in range(16)], text=texts, labels=labels)
    batch = store.collate(list(range(16)))
    engine.set_eval()
    with torch.no_grad():
        lora_zero = engine.forward(batch)
        with engine.adapters_disabled():
            base = engine.forward(batch)
    assert torch.equal(lora_zero, base)


def test_cached_hidden_states_give_the_same_logits(tiny_bert) -> None:  # type: ignore[no-untyped-def]
    engine = _engine(tiny_bert, slices=3)
    engine.init_block(1, 0)
    texts, labels = sentiment_texts(10)
    store = FeatureStore(engine.backbone, [str(i) for i in range(10)], text=texts, labels=labels)
    batch = store.collate(list(range(10)))
    engine.set_eval()
    start = engine.start_layer(1)
    with torch.no_grad():
        hidden = engine.hidden_states_at(batch, [start])[start]
        full = engine.forward(batch)
        partial = engine.forward(batch, start, hidden)
    assert torch.equal(full, partial)
    assert np.all(np.isfinite(full.numpy()))


def test_bad_lora_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="rank must be >= 1, got 0"):
        LoraSettings(rank=0)
    with pytest.raises(ConfigError, match="dropout must be in"):
        LoraSettings(dropout=1.5)
    with pytest.raises(ConfigError, match="order must be"):
        LoraSettings(order="sideways")  # type: ignore[arg-type]
