"""A workspace written by schema version 1 (which kept an unsalted content hash of every
sample, and an audit log without a hash chain) is upgraded in place on first open: the
fingerprints are gone, the log is chained, and it verifies."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from s3t.system.api import S3T
from s3t.system.store.schema import SCHEMA_VERSION


def _downgrade_to_version_1(root: Path) -> None:
    db = sqlite3.connect(root / "registry.sqlite", isolation_level=None)
    db.executescript(
        """
        BEGIN;
        CREATE TABLE samples1 (id TEXT PRIMARY KEY, shard INTEGER NOT NULL, slice INTEGER NOT NULL,
            content_sha256 TEXT NOT NULL, deleted_at REAL, request_id TEXT) WITHOUT ROWID;
        INSERT INTO samples1 SELECT id, shard, slice, 'fp-' || id, deleted_at, request_id FROM samples;
        DROP TABLE samples;
        ALTER TABLE samples1 RENAME TO samples;
        CREATE INDEX samples_by_slice ON samples (shard, slice);
        ALTER TABLE artifacts ADD COLUMN path TEXT NOT NULL DEFAULT '';
        ALTER TABLE artifacts DROP COLUMN n_train;
        ALTER TABLE artifacts DROP COLUMN purged_by;
        ALTER TABLE artifacts DROP COLUMN quarantined;
        ALTER TABLE artifacts DROP COLUMN quarantine_reason;
        ALTER TABLE deletions DROP COLUMN chain_seq;
        DROP TABLE erasures;
        DROP TABLE tokens;
        DROP TRIGGER audit_append_only_update;
        DROP TRIGGER audit_append_only_delete;
        ALTER TABLE audit DROP COLUMN hash;
        CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
        UPDATE meta SET value='1' WHERE key='schema_version';
        COMMIT;
        """
    )
    db.close()


def test_a_version_1_workspace_is_upgraded_on_open(trained: Path) -> None:
    system = S3T.open(trained)
    victim = system.samples(0)[0].id
    system.forget([victim])
    system.close()
    _downgrade_to_version_1(trained)
    mark = b"fp-" + victim.encode()
    assert any(mark in p.read_bytes() for p in trained.glob("registry.sqlite*"))

    upgraded = S3T.open(trained)
    report = upgraded.verify()
    assert report.ok, report.violations
    assert report.checked["audit_events"] == len(upgraded.audit())
    assert upgraded.audit()[-1]["event"] == "migrated"
    assert upgraded.audit()[-1]["detail"] == {"from": 1, "to": SCHEMA_VERSION}
    for path in trained.glob("registry.sqlite*"):
        assert b"fp-" not in path.read_bytes()  # no content fingerprint survives
    upgraded.forget([upgraded.samples(1)[0].id])
    assert upgraded.verify().ok


def test_settings_added_later_keep_the_config_hash_of_existing_workspaces() -> None:
    """Stages are reused by config hash: a workspace written before precision, quantisation,
    accumulation and checkpointing existed keeps its hash while they are at their defaults."""
    import hashlib
    import json

    from s3t.engine.settings import ModelSpec, TrainSettings
    from s3t.system.config import LayoutSettings, S3TConfig

    config = S3TConfig(model=ModelSpec("m"), layout=LayoutSettings(slices=3, seed=4))
    old = config.to_dict()
    old["model"].pop("quantize")
    for name in ("precision", "gradient_checkpointing", "accumulation_steps"):
        old["train"].pop(name)
    shaping = {
        "model": old["model"],
        "lora": old["lora"],
        "train": old["train"],
        "seed": 4,
        "slices": 3,
    }  # how s3t 0.1 hashed a config
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    assert config.config_hash() == digest
    checkpointed = config.with_overrides(train={"gradient_checkpointing": True})
    assert checkpointed.config_hash() == digest  # memory, not results
    assert config.with_overrides(train={"precision": "bf16"}).config_hash() != digest
    assert TrainSettings().precision == "fp32"
