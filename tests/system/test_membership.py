"""Membership inference (loss-threshold attack): deleted samples score like never-seen
samples on the served model, while retained training samples are still recognisable."""

from __future__ import annotations

import numpy as np
import pytest

from s3t.data.examples import Dataset, Examples
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig
from s3t.system.serving.membership import attack_auc
from tiny import save_tiny_text_model, sentiment_texts


def test_attack_auc() -> None:
    assert attack_auc(np.array([0.1, 0.2]), np.array([0.5, 0.9])) == 1.0
    assert attack_auc(np.array([0.5, 0.9]), np.array([0.1, 0.2])) == 0.0
    assert attack_auc(np.array([0.3, 0.3]), np.array([0.3, 0.3])) == 0.5


@pytest.mark.slow
def test_deleted_samples_score_like_unseen_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = save_tiny_text_model(tmp_path / "m", layers=4)
    texts, _ = sentiment_texts(360, seed=3)
    labels = np.random.default_rng(0).integers(0, 2, 360)  # random labels: only memory helps
    ids = tuple(f"u{i:03d}" for i in range(360))
    data = Examples(
        ids=ids, task="classification", text=tuple(texts), labels=labels, label_names=("a", "b")
    )
    train, unseen = data.take(range(240)), data.take(range(240, 360))
    config = S3TConfig(
        model=ModelSpec(str(model), num_labels=2),
        layout=LayoutSettings(shards=1, slices=2, budget=1, stratify=False),
        lora=LoraSettings(rank=8),
        train=TrainSettings(lr=2e-2, epochs=25, batch_size=10, validation_fraction=0.0),
    )
    system = S3T.fit(tmp_path / "ws", Dataset("random-labels", train), config)
    perm = system.sequences(0)[0].perm
    late = [s.id for s in system.samples(0) if s.slice == perm[1]]
    early = [s.id for s in system.samples(0) if s.slice == perm[0]]
    before = system.membership(train.subset(late[:60]), train.subset(early), unseen)
    assert before.deleted_vs_unseen > 0.65  # the attack works on members
    system.forget(late[:60])
    after = system.membership(train.subset(late[:60]), train.subset(early), unseen)
    assert abs(after.deleted_vs_unseen - 0.5) < 0.12
    assert after.retained_vs_unseen > 0.65
    system.retrain()
    healed = system.membership(train.subset(late[:60]), train.subset(early), unseen)
    assert abs(healed.deleted_vs_unseen - 0.5) < 0.12
    print(
        f"AUC deleted vs unseen: before {before.deleted_vs_unseen:.3f}, after forget "
        f"{after.deleted_vs_unseen:.3f}, after retrain {healed.deleted_vs_unseen:.3f}; "
        f"retained vs unseen after forget {after.retained_vs_unseen:.3f}"
    )
