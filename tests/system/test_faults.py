"""Faults that used to take the whole system down: a corrupted stage file costs one
sequence (quarantined, reported, rebuilt), a crafted registry cannot point a file
operation outside the workspace, a full disk changes nothing, and a read-only workspace
still serves status, verify and predict."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from s3t.errors import WorkspaceError
from s3t.system.api import S3T


def test_a_corrupted_stage_costs_one_sequence_not_the_service(trained: Path) -> None:
    system = S3T.open(trained)
    before = {s.shard: s for s in system.served()}
    bad = before[0].artifacts[-1]
    path = trained / "artifacts" / bad[:2] / f"{bad}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte flipped
    path.write_bytes(bytes(data))

    prediction = system.predict(["good film"])  # answered, by the next valid sequence
    shard0 = next(s for s in prediction.served if s.shard == 0)
    assert bad not in shard0.artifacts
    assert {s.shard for s in prediction.served} == {0, 1}
    status = system.status()
    assert status.quarantined == [bad]
    assert system.health().quarantined == 1
    assert not path.exists() and (trained / "quarantine" / path.name).exists()
    assert any(e["event"] == "quarantined" for e in system.audit())
    assert system.verify().ok  # quarantined and out of service: nothing is broken

    outcomes = system.retrain()
    assert any(o.artifact == bad for o in outcomes)  # rebuilt bit for bit (content-addressed)
    assert system.status().quarantined == [] and path.exists()
    assert {s.shard: s for s in system.served()} == before
    assert system.verify().ok


def test_a_missing_stage_file_is_quarantined_too(trained: Path) -> None:
    system = S3T.open(trained)
    served = next(s for s in system.served() if s.shard == 1)
    victim = served.artifacts[0]
    (trained / "artifacts" / victim[:2] / f"{victim}.safetensors").unlink()
    assert system.verify().violations  # reported before anything is served
    system.predict(["good film"])
    assert victim in system.status().quarantined
    system.retrain()
    assert system.verify().ok


def test_a_crafted_artifact_id_never_reaches_the_file_system(trained: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious.safetensors"
    outside.write_text("not yours")
    crafted = os.path.relpath(outside.with_suffix(""), trained / "artifacts" / "xx")
    db = sqlite3.connect(trained / "registry.sqlite")
    with db:
        db.execute(
            "INSERT INTO artifacts (id, shard, prefix, stage, samples_sha256, n_samples, n_train, "
            "config_hash, bytes, created, metrics, purged) "
            "VALUES (?, 0, '[0]', 1, '', 0, 0, '', 0, 0, '{}', 1.0)",
            (crafted,),
        )
    db.close()
    system = S3T.open(trained)  # the sweep skips the crafted id
    system.status()
    assert outside.read_text() == "not yours"
    report = system.verify()
    assert any("not a sha256 hex digest" in v.detail for v in report.violations)


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from s3t.errors import S3TError
    from s3t.system.api import S3T
    system = S3T.open(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))  # no file may grow past 16 bytes
    try:
        getattr(system, sys.argv[2])(*sys.argv[3:4] and [sys.argv[3:]])
    except S3TError as exc:
        print("ERROR", exc)
    """
)


@pytest.mark.parametrize("action", ["forget", "retrain"])
@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_that_changes_nothing(trained: Path, action: str) -> None:
    system = S3T.open(trained)
    victim = system.samples(0)[0].id
    if action == "retrain":
        system.forget([victim], wait_erasure=True)
    before = (system.status().to_dict(), len(system.audit()))
    args = [victim] if action == "forget" else []
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(trained), action, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stdout.startswith("ERROR") and "nothing was" in out.stdout, out.stdout
    again = S3T.open(trained)
    assert (again.status().to_dict(), len(again.audit())) == before
    assert again.verify().ok


READ_ONLY = textwrap.dedent(
    """
    import json, os, sys
    from s3t.system.api import S3T
    system = S3T.open(sys.argv[1])
    out = {
        "read_only": system.read_only,
        "live": system.status().live_shards,
        "verified": system.verify().ok,
        "labels": system.predict(["good film"]).labels,
    }
    try:
        system.forget([sys.argv[2]])
    except Exception as exc:
        out["forget"] = type(exc).__name__ + ": " + str(exc)
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_a_read_only_workspace_serves_status_verify_and_predict(
    trained: Path, tmp_path: Path
) -> None:
    with S3T.open(trained) as system:  # closed: its side files go before the folder is walked
        victim = system.samples(0)[0].id
    command = [sys.executable, "-c", READ_ONLY, str(trained), victim]
    if os.geteuid() == 0:  # root ignores file modes: mount the folder read-only instead
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make a folder read-only")
        inner = " ".join(f"'{part}'" for part in command)
        command = [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount --bind -o ro '{trained}' '{trained}' && exec {inner}",
        ]
    else:
        for path in [trained, *trained.rglob("*")]:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        for path in [trained, *trained.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if "mount" in out.stderr and "permission denied" in out.stderr.lower():
        pytest.skip(f"cannot mount a folder read-only here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["read_only"] and result["live"] == 2 and result["verified"]
    assert result["labels"][0] in ("neg", "pos")
    assert result["forget"].startswith("WorkspaceError") and "read-only" in result["forget"]


def test_workspace_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no s3t workspace"):
        S3T.open(tmp_path / "missing")
