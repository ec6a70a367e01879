"""The tamper suite: every edit of the registry or the files that un-forgets a sample, makes
an active stage depend on a forgotten sample, or rewrites history is detected by verify
(reading, never repairing) or, for a history rewritten consistently, by the receipt the
requester kept. README lists each kind."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import registry_of, toy_dataset
from s3t.errors import WorkspaceError
from s3t.system.api import S3T
from s3t.system.forget import Receipt
from s3t.system.store.records import GENESIS
from s3t.system.store.schema import chain_hash
from s3t.system.store.workspace import encode_record

Tamper = Callable[[sqlite3.Connection, Path, Receipt], None]


@pytest.fixture
def forgotten(trained: Path) -> tuple[Path, Receipt]:
    """A workspace where one sample (in a middle slice, so stages were purged) is forgotten."""
    shutil.copytree(trained / "artifacts", trained.parent / "backup-of-ws" / "artifacts")
    system = S3T.open(trained)
    perm = system.sequences(0)[0].perm
    victim = next(s.id for s in system.samples(0) if s.slice == perm[1])
    receipt = system.forget([victim], wait_erasure=True)
    assert receipt.purged_artifacts and receipt.erasure == "complete"
    system.close()
    return trained, receipt


def _content(sid: str) -> str:
    train = toy_dataset().train
    return json.dumps(encode_record(train, train.ids.index(sid)))


def _unforget(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    db.execute("UPDATE samples SET deleted_at=NULL, request_id=NULL WHERE id=?", (r.deleted[0],))


def _restore_content(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    db.execute("INSERT INTO sample_data VALUES (?, ?)", (r.deleted[0], _content(r.deleted[0])))


def _drop_sample_row(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    db.execute("DELETE FROM samples WHERE id=?", (r.deleted[0],))


def _move_to_other_slice(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    db.execute("UPDATE samples SET slice=(slice + 1) % 3 WHERE id=?", (r.deleted[0],))


def _revive_purged_stage(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    cut = r.truncated[0]
    db.execute("UPDATE artifacts SET purged=NULL WHERE id=?", (cut.deactivated[0],))
    db.execute(
        "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
        (cut.depth_before, cut.shard, cut.seq),
    )


def _raise_depth(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    cut = r.truncated[0]
    db.execute(
        "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
        (cut.depth_before, cut.shard, cut.seq),
    )


def _hide_from_lineage(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    # claim an active stage of the shard was trained on the forgotten sample's slice-mate set
    active = db.execute(
        "SELECT p.artifact FROM positions p JOIN sequences s USING (shard, seq) "
        "WHERE p.stage <= s.depth AND p.shard = ? LIMIT 1",
        (r.truncated[0].shard,),
    ).fetchone()[0]
    db.execute("INSERT INTO lineage VALUES (?, ?)", (active, r.deleted[0]))


def _forge_lineage_hash(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    from s3t.core.schedule import samples_digest

    active = db.execute(
        "SELECT p.artifact FROM positions p JOIN sequences s USING (shard, seq) "
        "WHERE p.stage <= s.depth AND p.shard = ? LIMIT 1",
        (r.truncated[0].shard,),
    ).fetchone()[0]
    rows = [x[0] for x in db.execute("SELECT sample FROM lineage WHERE artifact=?", (active,))]
    db.execute("INSERT INTO lineage VALUES (?, ?)", (active, r.deleted[0]))
    db.execute(
        "UPDATE artifacts SET samples_sha256=? WHERE id=?",
        (samples_digest([*rows, r.deleted[0]]), active),
    )


def _restore_purged_file(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    backup = root.parent / "backup-of-ws"
    artifact = r.purged_artifacts[0]
    source = backup / "artifacts" / artifact[:2] / f"{artifact}.safetensors"
    target = root / "artifacts" / artifact[:2] / f"{artifact}.safetensors"
    shutil.copy2(source, target)


def _replace_active_file(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    active = db.execute(
        "SELECT p.artifact FROM positions p JOIN sequences s USING (shard, seq) "
        "WHERE p.stage <= s.depth LIMIT 1"
    ).fetchone()[0]
    path = root / "artifacts" / active[:2] / f"{active}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _without_triggers(db: sqlite3.Connection) -> None:
    db.execute("DROP TRIGGER audit_append_only_update")
    db.execute("DROP TRIGGER audit_append_only_delete")


def _delete_forget_event(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    _without_triggers(db)
    db.execute("DELETE FROM audit WHERE seq=?", (r.chain_seq,))


def _edit_forget_event(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    _without_triggers(db)
    detail = json.loads(
        db.execute("SELECT detail FROM audit WHERE seq=?", (r.chain_seq,)).fetchone()[0]
    )
    detail["deleted"] = []
    db.execute(
        "UPDATE audit SET detail=? WHERE seq=?", (json.dumps(detail, sort_keys=True), r.chain_seq)
    )


def _edit_receipt(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    stored = json.loads(
        db.execute("SELECT receipt FROM deletions WHERE request_id=?", (r.request_id,)).fetchone()[
            0
        ]
    )
    stored["deleted"] = []
    db.execute(
        "UPDATE deletions SET receipt=? WHERE request_id=?", (json.dumps(stored), r.request_id)
    )


def _rewrite_history_consistently(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    """Undo the deletion everywhere and rebuild a self-consistent hash chain without it."""
    _without_triggers(db)
    _unforget(db, root, r)
    _restore_content(db, root, r)
    db.execute(
        "UPDATE artifacts SET purged=NULL, purged_by=NULL WHERE purged_by=?", (r.request_id,)
    )
    for cut in r.truncated:
        db.execute(
            "UPDATE sequences SET depth=? WHERE shard=? AND seq=?",
            (cut.depth_before, cut.shard, cut.seq),
        )
    db.execute("DELETE FROM deletions WHERE request_id=?", (r.request_id,))
    db.execute("DELETE FROM erasures")
    rows = db.execute(
        "SELECT seq, at, event, detail FROM audit WHERE seq <> ? ORDER BY seq", (r.chain_seq,)
    ).fetchall()
    db.execute("DELETE FROM audit")
    prev = GENESIS
    for seq, (_, at, event, detail) in enumerate(
        [row for row in rows if row[2] != "erasure-completed"], start=1
    ):
        prev = chain_hash(prev, seq, at, event, detail)
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (seq, at, event, detail, prev))


def _unforget_and_retrain(db: sqlite3.Connection, root: Path, r: Receipt) -> None:
    _unforget(db, root, r)
    _restore_content(db, root, r)


TAMPERS: dict[str, tuple[Tamper, str]] = {
    "un-forget a sample (deleted_at cleared)": (_unforget, "forgotten"),
    "store a forgotten sample's content again": (_restore_content, "forgotten"),
    "delete a forgotten sample's record": (_drop_sample_row, "forgotten"),
    "move a forgotten sample to another slice": (_move_to_other_slice, "forgotten"),
    "un-purge a stage and serve it again": (_revive_purged_stage, "lineage"),
    "raise a truncated sequence's depth": (_raise_depth, "replay"),
    "add a forgotten sample to an active stage's lineage": (_hide_from_lineage, "forgotten"),
    "forge an active stage's lineage and its hash": (_forge_lineage_hash, "lineage"),
    "restore a purged artifact file from a backup": (_restore_purged_file, "integrity"),
    "change a byte of an active artifact file": (_replace_active_file, "integrity"),
    "delete the deletion's audit event": (_delete_forget_event, "chain"),
    "edit the deletion's audit event": (_edit_forget_event, "chain"),
    "edit the stored receipt": (_edit_receipt, "forgotten"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_verify_detects_the_tampering(forgotten: tuple[Path, Receipt], kind: str) -> None:
    root, receipt = forgotten
    tamper, check = TAMPERS[kind]
    _apply(root, receipt, tamper)
    report = S3T.open(root, read_only=True).verify()
    assert not report.ok, kind
    assert check in {v.check for v in report.violations}, report.violations


def test_a_forgotten_sample_retrained_into_active_stages_is_detected(
    forgotten: tuple[Path, Receipt],
) -> None:
    root, receipt = forgotten
    system = S3T.open(root)
    shard, slice_ = next(
        (s.shard, s.slice) for s in system.samples(include_deleted=True) if s.id in receipt.deleted
    )
    system.forget([next(s.id for s in system.samples(shard) if s.slice == slice_)])
    _apply(root, receipt, _unforget_and_retrain)
    system = S3T.open(root)
    system.retrain()  # the tampered registry lets the sample be trained into active stages
    active = {a for s in system.sequences() for a in s.artifacts[: s.depth]}
    assert any(receipt.deleted[0] in registry_of(system).lineage(a) for a in active)
    details = " ".join(v.detail for v in system.verify().violations)
    assert "un-forgotten" in details and "was trained on forgotten sample" in details


def test_retraining_exactly_a_purged_stage_is_refused(forgotten: tuple[Path, Receipt]) -> None:
    root, receipt = forgotten
    _apply(root, receipt, _unforget_and_retrain)
    with pytest.raises(WorkspaceError, match="purged these exact tensors"):
        S3T.open(root).retrain()
    assert not S3T.open(root, read_only=True).verify().ok


def test_a_history_rewritten_consistently_is_caught_by_the_receipt(
    forgotten: tuple[Path, Receipt],
) -> None:
    root, receipt = forgotten
    kept = json.loads(json.dumps(receipt.to_dict()))  # what the requester keeps
    assert S3T.open(root, read_only=True).verify_receipt(kept).ok
    _apply(root, receipt, _rewrite_history_consistently)
    system = S3T.open(root, read_only=True)
    proof = system.verify_receipt(kept)
    assert not proof.ok
    assert "receipt" in {v.check for v in proof.violations}


def test_verify_never_changes_the_workspace(forgotten: tuple[Path, Receipt]) -> None:
    root, _receipt = forgotten
    stray = root / "artifacts" / "ff" / ("f" * 64 + ".safetensors")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"a leftover")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    for _ in range(3):
        with S3T.open(root, read_only=True) as auditor:  # closed: SQLite's side files go too
            auditor.verify()
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    assert after == before


def _apply(root: Path, receipt: Receipt, tamper: Tamper) -> None:
    db = sqlite3.connect(root / "registry.sqlite", isolation_level=None)
    try:
        db.execute("BEGIN")
        tamper(db, root, receipt)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
