"""Work racing deletions: answers, exports and retrained stages never use a stage trained
on a sample whose deletion was acknowledged, and a warm trainer recomputes what a
deletion changed."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import registry_of, workspace_of
from s3t.core.schedule import StageKey
from s3t.errors import ServiceUnavailableError
from s3t.system.api import S3T
from s3t.system.config import S3TConfig
from s3t.system.serving.server import Server
from s3t.system.training.distributed import train_shard
from s3t.system.training.stage_worker import ShardWork, StageJob, TrainedStage
from s3t.system.training.trainer import Trainer


def test_an_answer_racing_a_deletion_is_recomputed_without_the_deleted_sample(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = S3T.open(trained)
    real = Server.logits_for
    fired: list[str] = []

    def racing(self, served, store, batch_size=64):  # type: ignore[no-untyped-def]
        out = real(self, served, store, batch_size)
        if not fired:  # a deletion commits while this answer is being computed
            victim = registry_of(system).lineage(served[0].artifacts[0])[0]
            fired.append(victim)
            system.forget([victim])
        return out

    monkeypatch.setattr(Server, "logits_for", racing)
    prediction = system.predict(["good film"])
    registry = registry_of(system)
    assert fired
    for s in prediction.served:
        for artifact in s.artifacts:
            assert fired[0] not in registry.lineage(artifact)


def test_an_export_racing_a_deletion_chooses_again(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = S3T.open(trained)
    answers = iter([False, True])
    monkeypatch.setattr(Server, "still_valid", lambda self, served: next(answers))
    system.export(0, tmp_path / "adapter")
    assert next(answers, None) is None  # checked twice: the first choice went stale
    monkeypatch.setattr(Server, "still_valid", lambda self, served: False)
    with pytest.raises(ServiceUnavailableError, match="retry"):
        system.export(0, tmp_path / "adapter2")


def test_ray_jobs_report_the_chain_they_trained_on_and_stale_chains_are_discarded(
    trained: Path, toy_config: S3TConfig
) -> None:
    system = S3T.open(trained)
    ws = workspace_of(system)
    perm = tuple(system.sequences(0)[0].perm)
    parent = system.sequences(0)[0].artifacts[0]
    system.forget([next(s.id for s in system.samples(0) if s.slice == perm[1])])
    homes = {s.id: (0, s.slice) for s in system.samples(0)}
    data = sorted(sid for sid, (_, sl) in homes.items() if sl in perm[:2])
    work = ShardWork(
        0,
        [StageJob(StageKey(0, perm[:2]), data)],
        {perm[:1]: (parent, ws.read_artifact(parent))},
        ws.examples().subset(sorted(homes)),
        homes,
    )
    (stage,) = train_shard(toy_config.to_dict(), work, threads=1)
    assert stage.parents == (parent,) and stage.artifact == hashlib.sha256(stage.blob).hexdigest()
    trainer = Trainer(ws)
    registry = ws.registry()
    stale = trainer.commit(registry, _with_parents(stage, ("0" * 64,)))
    assert stale.status == "discarded"
    fresh = trainer.commit(registry, stage)
    assert fresh.status == "trained" and system.verify().ok


@pytest.mark.exactness
def test_a_warm_trainer_recomputes_a_slice_that_lost_a_sample(trained: Path) -> None:
    system = S3T.open(trained)
    perm = system.sequences(0)[0].perm
    first = next(s.id for s in system.samples(0) if s.slice == perm[2])
    system.forget([first])
    system.retrain()  # the trainer's cache now holds every slice as it is
    second = next(s.id for s in system.samples(0) if s.slice == perm[0])
    system.forget([second])
    system.retrain()  # the same trainer: the changed slice must be computed afresh
    for row in system.sequences(0):
        assert system.reference(0, row.seq).identical


def _with_parents(stage: TrainedStage, parents: tuple[str, ...]) -> TrainedStage:
    return replace(stage, parents=parents)
