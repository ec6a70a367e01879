"""Bad input is a clear error that names the problem and changes nothing."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers import toy_dataset
from s3t.core.partition import partition
from s3t.core.sequences import cyclic
from s3t.core.simulate import simulate
from s3t.engine.features import IGNORE_INDEX, FeatureStore
from s3t.engine.loading import load_backbone
from s3t.engine.settings import ModelSpec
from s3t.errors import ConfigError, InvalidRequestError, PartitionError, UnknownRequestError
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig


def test_bad_layouts_fail_before_any_file_is_written(tmp_path: Path, toy_config: S3TConfig) -> None:
    with pytest.raises(ConfigError, match="budget 7 exceeds the 6 distinct"):
        LayoutSettings(slices=3, budget=7)
    with pytest.raises(ConfigError, match="method 'full' trains all 6"):
        LayoutSettings(slices=3, budget=3, method="full")
    with pytest.raises(ConfigError, match="bms_t must be > 0"):
        LayoutSettings(bms_t=0)
    too_few = replace(toy_config, layout=replace(toy_config.layout, shards=50))
    with pytest.raises(PartitionError, match="fewer than the 3 slices"):
        S3T.fit(tmp_path / "ws", toy_dataset(), too_few)
    assert not (tmp_path / "ws" / "registry.sqlite").exists()


def test_a_prior_that_never_hits_a_first_slice_is_an_error_not_a_hang() -> None:
    with pytest.raises(ConfigError, match="δ is infinite"):
        simulate(2, cyclic(4, 4), prior=[0.0, 1.0, 1.0, 1.0], trials=10)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: s.retrain([99]), InvalidRequestError, r"shard must be in 0..1, got 99"),
        (lambda s: s.samples(2**63), InvalidRequestError, r"shard must be in 0..1"),
        (lambda s: s.export(-1, "x"), InvalidRequestError, r"shard must be in 0..1"),
        (lambda s: s.audit(2**63), InvalidRequestError, r"since must be an integer"),
        (lambda s: s.audit(-1), InvalidRequestError, r"since must be an integer"),
        (lambda s: s.forget(["\ud800"]), PartitionError, "unpaired surrogate"),
        (lambda s: s.predict(["ok", "bad \udcff"]), InvalidRequestError, "input 1 is not valid"),
        (lambda s: s.receipt("nope"), UnknownRequestError, "no deletion request 'nope'"),
        (lambda s: s.forget(5), InvalidRequestError, "list of sample ids"),
    ],
)
def test_bad_requests_are_named_and_change_nothing(trained: Path, call, error, message) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    before = (system.status().to_dict(), len(system.audit()))
    with pytest.raises(error, match=message):
        call(system)
    assert (system.status().to_dict(), len(system.audit())) == before


def test_export_onto_a_file_is_refused(trained: Path, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    with pytest.raises(InvalidRequestError, match="is a file"):
        S3T.open(trained).export(0, target)
    assert target.read_text() == "keep me"


def test_long_prompts_keep_a_response_token(tiny_llama: Path) -> None:
    backbone = load_backbone(ModelSpec(str(tiny_llama), max_length=16))
    store = FeatureStore(backbone, ["a"], prompt=["the film " * 40], response=["good"])
    labels = store.collate([0])["labels"]
    assert labels.shape[1] == 16 and int((labels != IGNORE_INDEX).sum()) >= 1


def test_stratified_partition_of_integer_ids() -> None:
    layout = partition(range(12), 2, 2, labels=np.array([0, 1] * 6))
    assert sorted(layout.assignment) == sorted(str(i) for i in range(12))


def test_stop_with_an_executor_is_refused(trained: Path) -> None:
    from s3t.system.training.distributed import RayExecutor

    with pytest.raises(InvalidRequestError, match="stop is not supported with an executor"):
        S3T.open(trained).retrain(executor=RayExecutor(), stop=threading.Event())
