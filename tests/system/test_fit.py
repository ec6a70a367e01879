"""fit(): resumable after a crash, refuses a workspace of another configuration, takes
settings from a config file, and shares stages between sequences with a common prefix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from helpers import registry_of, toy_dataset
from s3t.errors import ConfigError, WorkspaceError
from s3t.system.api import S3T
from s3t.system.config import S3TConfig
from s3t.system.reports import Status


class CrashError(Exception):
    pass


def test_rerunning_after_a_crash_continues_at_the_first_missing_stage(
    tmp_path: Path, toy_config: S3TConfig
) -> None:
    swapped: list[str] = []

    def crash_after_two(event) -> None:  # type: ignore[no-untyped-def]
        if event.kind == "swapped":
            swapped.append(event.detail["artifact"])
            if len(swapped) == 2:
                raise CrashError

    with pytest.raises(CrashError):
        S3T.fit(tmp_path / "ws", toy_dataset(), toy_config, on_event=crash_after_two)
    kinds: list[str] = []
    system = S3T.fit(
        tmp_path / "ws", toy_dataset(), toy_config, on_event=lambda e: kinds.append(e.kind)
    )
    registry = registry_of(system)
    assert all(r.depth == 3 for r in registry.sequences())
    total = sum(len(r.positions) for r in registry.sequences())
    assert kinds.count("start") == total - 2  # the two finished stages were not trained again
    assert {r.positions[0] for r in registry.sequences(0)} >= {swapped[0]}
    assert system.verify().ok


def test_a_workspace_of_another_configuration_is_refused(
    trained: Path, toy_config: S3TConfig
) -> None:
    other = replace(toy_config, layout=replace(toy_config.layout, budget=2))
    with pytest.raises(WorkspaceError, match="another configuration"):
        S3T.fit(trained, toy_dataset(), other)


def test_labels_that_do_not_fit_the_model_are_refused_before_training(
    tmp_path: Path, toy_config: S3TConfig
) -> None:
    three = replace(toy_config, model=replace(toy_config.model, num_labels=3))
    with pytest.raises(ConfigError, match=r"2 classes.*num_labels=3"):
        S3T.fit(tmp_path / "ws", toy_dataset(), three)
    assert not (tmp_path / "ws").exists()


def test_shared_prefixes_are_trained_once(tmp_path: Path, toy_config: S3TConfig) -> None:
    # B = 4 > L = 3: cyclic gives (0,1,2) (2,0,1) (1,2,0) (0,2,1): two share the first stage
    config = replace(toy_config, layout=replace(toy_config.layout, shards=1, budget=4))
    starts: list[tuple[int, ...]] = []
    system = S3T.fit(
        tmp_path / "ws",
        toy_dataset(60, 6),
        config,
        on_event=lambda e: starts.append(e.key.prefix) if e.kind == "start" else None,
    )
    rows = registry_of(system).sequences(0)
    assert [r.perm for r in rows] == [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)]
    assert rows[0].positions[0] == rows[3].positions[0]
    assert len(starts) == len(set(starts)) == 4 * 3 - 1


def test_config_files_round_trip(tmp_path: Path, toy_config: S3TConfig) -> None:
    import json

    path = tmp_path / "c.json"
    path.write_text(json.dumps(toy_config.to_dict()))
    assert S3TConfig.from_file(path) == toy_config
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nname_or_path = "x"\n[layout]\nshards = 3\nslicez = 2\n')
    with pytest.raises(ConfigError, match=r"unknown layout setting.*slicez"):
        S3TConfig.from_file(toml)


def test_resuming_needs_the_same_data_and_never_brings_deleted_samples_back(
    trained: Path, toy_config: S3TConfig
) -> None:
    system = S3T.open(trained)
    victim = system.samples(0)[0].id
    system.forget([victim])
    with pytest.raises(WorkspaceError, match="holds 120 samples but the data given has 100"):
        S3T.fit(trained, toy_dataset(100), toy_config)
    again = S3T.fit(trained, toy_dataset(), toy_config)  # the original data, victim included
    assert victim not in {s.id for s in again.samples()}
    for row in registry_of(again).sequences():
        for artifact in row.active():
            assert victim not in registry_of(again).lineage(artifact)
    assert again.verify().ok


def test_status_says_what_deletion_rate_the_measured_retraining_sustains(trained: Path) -> None:
    status = S3T.open(trained, read_only=True).status()
    speed = status.retrain_speed
    assert speed["stages_measured"] == 18 and speed["seconds_per_sample"] > 0
    assert speed["stage_overhead_seconds"] > 0  # planning, writing and swapping a stage
    assert status.sustainable_deletion_rate is not None and status.full_depth_deletion_rate
    assert 0 < status.full_depth_deletion_rate < status.sustainable_deletion_rate
    assert Status.from_dict(status.to_dict()) == status
