"""forget(): validation first, one transaction, receipts, idempotence, erasure."""

from __future__ import annotations

import pytest

from helpers import registry_of, workspace_of
from s3t.errors import (
    InvalidRequestError,
    PartitionError,
    ServiceUnavailableError,
    UnknownSampleError,
)
from s3t.system.api import S3T


def _snapshot(system: S3T) -> tuple:
    db = registry_of(system).db
    return (
        db.execute("SELECT * FROM samples ORDER BY id").fetchall(),
        db.execute("SELECT * FROM sequences ORDER BY shard, seq").fetchall(),
        db.execute("SELECT count(*) FROM sample_data").fetchone(),
        db.execute("SELECT count(*) FROM deletions").fetchone(),
    )


def test_unknown_ids_change_nothing_and_are_all_named(trained) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    known = system.samples()[0].id
    before = _snapshot(system)
    with pytest.raises(UnknownSampleError) as err:
        system.forget([known, "ghost-1", "ghost-2"])
    assert err.value.ids == ["ghost-1", "ghost-2"]
    assert "ghost-1" in str(err.value) and "nothing was changed" in str(err.value)
    assert _snapshot(system) == before


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        ([], InvalidRequestError, "at least one sample id"),
        ("r0001", InvalidRequestError, "a single string"),
        ([1.5], PartitionError, "must be str or int"),
    ],
)
def test_malformed_requests_change_nothing(trained, ids, error, message) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    before = _snapshot(system)
    with pytest.raises(error, match=message):
        system.forget(ids)
    assert _snapshot(system) == before


def test_receipt_truncation_and_erasure(trained) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    registry = registry_of(system)
    row = registry.sequences(0)[1]
    victim = next(s.id for s in system.samples(0) if s.slice == row.perm[2])
    receipt = system.forget([victim])
    assert receipt.deleted == [victim] and receipt.already_deleted == []
    assert receipt.erasure == "pending"  # acknowledged on commit; the bytes go next
    receipt = system.finish_erasure(receipt.request_id, 30)
    assert receipt.erasure == "complete"
    cut = {(t.shard, t.seq): t for t in receipt.truncated}
    assert cut[(0, 1)].depth_before == 3 and cut[(0, 1)].depth_after == 2
    assert cut[(0, 1)].deactivated == [row.positions[2]]
    assert all(t.shard == 0 for t in receipt.truncated)  # other shards untouched
    assert receipt.served_depth_after[1] == 3 and receipt.degraded and not receipt.failed
    # the content is erased, the id stays for the audit trail, trained files are purged
    db = registry.db
    assert db.execute("SELECT count(*) FROM sample_data WHERE id=?", (victim,)).fetchone()[0] == 0
    assert db.execute(
        "SELECT deleted_at IS NOT NULL FROM samples WHERE id=?", (victim,)
    ).fetchone()[0]
    for artifact in receipt.purged_artifacts:
        assert not workspace_of(system).files.path(artifact).exists()
        assert victim in registry.lineage(artifact)
    assert set(receipt.purged_artifacts) >= set(cut[(0, 1)].deactivated)


def test_repeat_requests_are_idempotent(trained) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    victim = system.samples(1)[0].id
    first = system.forget([victim])
    depths = [r.depth for r in registry_of(system).sequences()]
    second = system.forget([victim])
    assert second.deleted == [] and second.already_deleted == [victim]
    assert second.truncated == [] and second.purged_artifacts == []
    assert [r.depth for r in registry_of(system).sequences()] == depths
    assert first.request_id != second.request_id
    assert len(system.audit()) > 0 and system.verify().ok


def test_every_shard_dead_means_no_answer(trained) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    firsts = {(r.shard, r.perm[0]) for r in registry_of(system).sequences()}
    victims = [next(s.id for s in system.samples(k) if s.slice == sl) for k, sl in sorted(firsts)]
    receipt = system.forget(victims)
    assert receipt.failed
    status = system.status()
    assert status.failed and status.live_shards == 0 and status.estimated_deletions_left == 0.0
    with pytest.raises(ServiceUnavailableError, match="every shard has lost every model"):
        system.predict(["good film"])
    assert system.verify().ok
