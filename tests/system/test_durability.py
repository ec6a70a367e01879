"""Crash safety (SIGKILL at random points of forget and of retrain swaps), the retrain race
rule, and background retraining while requests are served."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import registry_of, workspace_of
from s3t.core.schedule import StageKey
from s3t.system.api import S3T
from s3t.system.store.workspace import Workspace
from s3t.system.training.background import RetrainPolicy
from s3t.system.training.trainer import Trainer

FORGET_LOOP = textwrap.dedent(
    """
    import sys
    from s3t.system.forget import forget
    from s3t.system.store.workspace import Workspace
    ws = Workspace(sys.argv[1])
    print("READY", flush=True)
    for sid in sys.argv[2:]:
        forget(ws, [sid])
        print(f"ACK {sid}", flush=True)  # one write: a kill cannot split the id off
    """
)

RETRAIN = textwrap.dedent(
    """
    import sys, time, random
    from s3t.system.store.workspace import Workspace
    from s3t.system.training.trainer import Trainer
    def hook(key):
        print("SWAP", key.shard, flush=True)
        time.sleep(random.random() * 0.05)
    trainer = Trainer(Workspace(sys.argv[1]), before_swap=hook)
    print("READY", flush=True)
    trainer.complete()
    print("DONE", flush=True)
    """
)


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env
    )


def _check_consistent(root: Path, acknowledged: set[str]) -> None:
    system = S3T.open(root)  # opening removes files purged but not yet unlinked
    deleted = {s.id for s in system.samples(include_deleted=True) if s.deleted_at}
    assert acknowledged <= deleted, acknowledged - deleted
    report = system.verify()
    assert report.ok, report.violations
    db = registry_of(system).db
    in_requests = set()
    for (ids,) in db.execute("SELECT sample_ids FROM deletions"):
        in_requests |= set(json.loads(ids))
    assert deleted <= in_requests  # no sample deleted without its request on record
    stored = {r[0] for r in db.execute("SELECT id FROM sample_data")}
    assert not stored & deleted  # content erased with the deletion, never half


@pytest.mark.slow
def test_sigkill_at_random_points_of_forget_loses_no_acknowledged_deletion(trained: Path) -> None:
    rng = random.Random(7)
    with S3T.open(trained) as system:
        ids = [s.id for s in system.samples()]
    rng.shuffle(ids)
    acknowledged: set[str] = set()
    kills = 0
    for round_ in range(12):
        batch = ids[round_ * 8 : round_ * 8 + 8]
        child = _child(FORGET_LOOP, str(trained), *batch)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        # the kill lands after 0-2 acknowledgements, at a random point of a later forget:
        # counted in forgets, not in milliseconds, so a slow machine still kills mid-loop
        seen = [child.stdout.readline() for _ in range(rng.randrange(3))]
        time.sleep(rng.random() * 0.005)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        kills += child.returncode == -signal.SIGKILL
        lines = [*seen, *out.splitlines()]
        acknowledged |= {line.split()[1] for line in lines if line.startswith("ACK")}
        _check_consistent(trained, acknowledged)
    assert kills >= 6  # most children really died mid-loop
    assert acknowledged  # and some deletions were acknowledged before dying


@pytest.mark.slow
def test_sigkill_during_retrain_swaps_keeps_every_acknowledged_deletion(trained: Path) -> None:
    rng = random.Random(3)
    system = S3T.open(trained)
    system.forget([s.id for s in system.samples(0)[:2]] + [system.samples(1)[0].id])
    acknowledged = {s.id for s in system.samples(include_deleted=True) if s.deleted_at}
    for _ in range(3):
        child = _child(RETRAIN, str(trained))
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        stop_after = rng.randint(1, 3)
        swaps = 0
        for line in child.stdout:
            if line.startswith("SWAP"):
                swaps += 1
                if rng.random() < 0.5:  # a deletion racing the swap, from another process
                    shard = int(line.split()[1])
                    victim = rng.choice(system.samples(shard)).id
                    system.forget([victim])
                    acknowledged.add(victim)
                if swaps >= stop_after:
                    time.sleep(rng.random() * 0.03)
                    break
        child.send_signal(signal.SIGKILL)
        child.communicate()
        _check_consistent(trained, acknowledged)
    S3T.open(trained).retrain()
    _check_consistent(trained, acknowledged)
    assert all(r.depth == 3 for r in Workspace(trained).registry().sequences())


def test_a_retrain_whose_data_saw_a_later_deletion_is_discarded_and_requeued(trained: Path) -> None:
    system = S3T.open(trained)
    first = system.samples(0)[0]
    system.forget([first.id])  # truncate some shard-0 sequences
    victims: list[str] = []

    def delete_during_training(key: StageKey) -> None:
        if victims:
            return
        live = registry_of(system).live_ids(key.shard, key.prefix)
        victims.append(live[0])
        system.forget([live[0]])  # arrives after the stage's data was read

    outcomes = Trainer(workspace_of(system), before_swap=delete_during_training).complete()
    assert outcomes[0].status == "discarded"
    assert {o.status for o in outcomes[1:]} <= {"trained", "reused"}
    registry = registry_of(system)
    for row in registry.sequences():
        assert row.depth == 3
        for artifact in row.active():
            assert victims[0] not in registry.lineage(artifact)
    events = [e["event"] for e in system.audit()]
    assert "stage-discarded" in events
    assert system.verify().ok


def test_background_retraining_heals_a_dead_shard_while_serving(trained: Path) -> None:
    system = S3T.open(trained, retrain_policy=RetrainPolicy(when_dead=True, poll_seconds=0.05))
    try:
        rows = registry_of(system).sequences(1)
        killers = [next(s.id for s in system.samples(1) if s.slice == r.perm[0]) for r in rows]
        receipt = system.forget(killers)
        assert receipt.served_depth_after[1] == 0
        served_during = []
        deadline = time.time() + 120
        while time.time() < deadline:
            served_during.append({s.shard for s in system.predict(["good film"]).served})
            state = system.status()
            if state.shards[1].served_depth == 3 and state.sequences_below_full_depth == 0:
                break
            time.sleep(0.05)
        assert system.background is not None and system.background.wait_idle(60)
        assert system.status().shards[1].served_depth == 3
        assert {0} in served_during  # shard 0 kept answering while shard 1 retrained
        assert system.background.error is None
        assert system.verify().ok
    finally:
        system.close()
