"""Forgetting a person, not a row: a subject's samples live together, one request forgets
all of them in one transaction with one receipt, through the library, the CLI and the
service; verify checks subjects too."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from helpers import toy_dataset
from s3t.cli.main import app
from s3t.data.examples import Dataset
from s3t.errors import UnknownSubjectError
from s3t.service import create_app
from s3t.service.settings import ServiceSettings
from s3t.system.api import S3T
from s3t.system.config import S3TConfig


@pytest.fixture
def people(tmp_path: Path, toy_config: S3TConfig) -> S3T:
    base = toy_dataset()
    owners = tuple(f"user-{i % 30}" for i in range(len(base.train)))  # 30 people, 4 samples each
    data = Dataset("people", replace(base.train, subjects=owners), base.test)
    return S3T.fit(tmp_path / "ws", data, toy_config)


def test_a_subject_is_kept_together_and_forgotten_in_one_request(people: S3T) -> None:
    mine = people.samples(subject="user-7")
    assert len(mine) == 4 and len({(s.shard, s.slice) for s in mine}) == 1
    status = people.status()
    assert status.subjects == 30 and status.deleted_subjects == 0
    before = [s.depths for s in status.shards]
    receipt = people.forget_subject(["user-7"])
    assert sorted(receipt.deleted) == sorted(s.id for s in mine) and receipt.subjects == ["user-7"]
    cut = {t.shard for t in receipt.truncated}
    assert cut == {mine[0].shard}  # one shard, cut at one slice position
    assert [s.depths for s in people.status().shards] != before
    assert people.status().deleted_subjects == 1
    assert people.samples(subject="user-7") == []
    assert people.verify().ok


def test_an_unknown_subject_changes_nothing(people: S3T) -> None:
    before = (people.status().to_dict(), len(people.audit()))
    with pytest.raises(UnknownSubjectError, match="'nobody'") as err:
        people.forget(["r0001"], subjects=["user-1", "nobody"])
    assert err.value.subjects == ["nobody"]
    assert (people.status().to_dict(), len(people.audit())) == before


def test_verify_checks_forgotten_subjects(people: S3T) -> None:
    people.forget_subject(["user-3"])
    db = sqlite3.connect(people.path / "registry.sqlite")
    with db:  # relabel a live sample as the forgotten person's
        db.execute("UPDATE samples SET subject='user-3' WHERE subject='user-4'")
    db.close()
    details = " ".join(v.detail for v in S3T.open(people.path, read_only=True).verify().violations)
    assert "of forgotten subject 'user-3' is live" in details


def test_subjects_through_the_cli_and_the_service(people: S3T) -> None:
    runner = CliRunner()
    ws = ["-w", str(people.path)]
    shown = json.loads(runner.invoke(app, ["samples", *ws, "--subject", "user-9", "--json"]).stdout)
    assert len(shown) == 4 and {s["subject"] for s in shown} == {"user-9"}
    out = runner.invoke(app, ["forget", *ws, "--subject", "user-9", "--json"])
    assert out.exit_code == 0, out.output
    assert sorted(json.loads(out.stdout)["deleted"]) == sorted(s["id"] for s in shown)
    service = create_app(people, ServiceSettings(require_tokens=False))
    with TestClient(service, base_url="http://localhost") as client:
        answer = client.post("/v1/forget", json={"subjects": ["user-11", "user-12"]}).json()
        assert len(answer["deleted"]) == 8 and answer["subjects"] == ["user-11", "user-12"]
        missing = client.post("/v1/forget", json={"subjects": ["ghost"]})
        assert missing.status_code == 404 and missing.json()["subjects"] == ["ghost"]
        assert client.get("/v1/samples", params={"subject": "user-11"}).json() == []
    assert people.verify().ok
