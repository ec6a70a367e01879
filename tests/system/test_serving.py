"""Serving: shard selection, aggregation modes, bad inputs, workspace errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import registry_of
from s3t.errors import InvalidRequestError, SchemaVersionError, WorkspaceError
from s3t.system.api import S3T
from s3t.system.serving.server import aggregate_logits


def test_aggregation_modes() -> None:
    shard_a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    shard_b = torch.tensor([[0.0, 3.0], [0.0, 2.0]])
    shard_c = torch.tensor([[0.5, 0.0], [4.0, 0.0]])
    labels, scores = aggregate_logits([shard_a, shard_b, shard_c], "mean-logits", "classification")
    assert labels == [1, 0]  # mean logits (0.83, 1.0) and (1.33, 1.0)
    assert np.allclose(scores, torch.softmax(torch.tensor([[2.5, 3.0], [4.0, 3.0]]) / 3, -1))
    labels, scores = aggregate_logits([shard_a, shard_b, shard_c], "vote", "classification")
    assert labels == [0, 1] and np.allclose(scores, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    labels, _ = aggregate_logits([shard_a, shard_b], "mean-probs", "classification")
    assert labels == [1, 1]
    values, _ = aggregate_logits(
        [torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [0.0]])], "mean-logits", "regression"
    )
    assert values == [2.0, 1.0]


def test_selection_takes_the_longest_prefix_and_budget_views(trained: Path) -> None:
    system = S3T.open(trained)
    rows = registry_of(system).sequences(0)
    victim = next(s.id for s in system.samples(0) if s.slice == rows[0].perm[1])
    system.forget([victim])
    depths = {r.seq: r.depth for r in registry_of(system).sequences(0)}
    best = max(depths.values())
    served = next(s for s in system.served() if s.shard == 0)
    assert served.depth == best and served.seq == min(k for k, d in depths.items() if d == best)
    only_first = next(s for s in system.served(budget=1) if s.shard == 0)
    assert (only_first.seq, only_first.depth) == (0, depths[0])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "non-empty list"),
        ("good film", "non-empty list"),
        ([1, 2], "got 1"),
        ([("a", "b", "c")], r"got \('a', 'b', 'c'\)"),
    ],
)
def test_bad_predict_inputs(trained: Path, inputs: object, message: str) -> None:
    system = S3T.open(trained)
    with pytest.raises(InvalidRequestError, match=message):
        system.predict(inputs)


def test_unknown_aggregation_and_generate_on_a_classifier(trained: Path) -> None:
    system = S3T.open(trained)
    with pytest.raises(InvalidRequestError, match="aggregate must be one of"):
        system.predict(["x"], aggregate="median")
    with pytest.raises(InvalidRequestError, match="causal LM"):
        system.generate(["x"])


def test_a_workspace_of_another_schema_version_is_refused(trained: Path) -> None:
    with sqlite3.connect(trained / "registry.sqlite") as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        S3T.open(trained)


def test_a_corrupted_registry_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(WorkspaceError, match=r"not readable|corrupted"):
        S3T.open(tmp_path)
    with pytest.raises(WorkspaceError, match="no s3t workspace"):
        S3T.open(tmp_path / "missing")


def test_a_deletion_invalidates_only_the_models_it_touched(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3t.system.store.workspace import Workspace

    system = S3T.open(trained)
    system.predict(["good film"])
    loads: list[str] = []
    real = Workspace.read_artifact

    def counting(self: Workspace, artifact: str) -> bytes:
        loads.append(artifact)
        return real(self, artifact)

    monkeypatch.setattr(Workspace, "read_artifact", counting)
    before = {s.shard: s.artifacts for s in system.served()}
    row = registry_of(system).sequences(0)[0]
    system.forget([next(s.id for s in system.samples(0) if s.slice == row.perm[2])])
    after = {s.shard: s.artifacts for s in system.served()}
    system.predict(["good film"])
    assert after[1] == before[1]
    assert not set(loads) & set(before[1])  # shard 1's stages came from the cache
    assert set(loads) <= set(after[0]) - set(before[0])  # only newly served stages were read
