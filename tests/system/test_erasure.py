"""Forgotten means gone: a forget is acknowledged once committed (erasure pending), and
within seconds — at once for a caller who waits for it — no byte of a forgotten sample's
text is in any file of the workspace, whatever readers run in this or other processes; if a
reader pins an older snapshot the receipt says pending until that reader is done, then
the erasure completes (and is logged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import MARKERS, files_holding, marked_dataset, marker_ids
from s3t.system.api import S3T

READERS = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
    print("READY", flush=True)
    deadline = time.time() + float(sys.argv[2])
    while time.time() < deadline:
        db.execute("SELECT count(*) FROM sample_data").fetchone()
        db.execute("SELECT id, payload FROM sample_data ORDER BY id LIMIT 20").fetchall()
    """
)

PINNED = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM sample_data").fetchone()  # holds this snapshot
    print("PINNED", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
    """
)

FORGET = textwrap.dedent(
    """
    import json, sys
    from s3t.system.api import S3T
    system = S3T.open(sys.argv[1])
    receipt = system.forget(sys.argv[2:])
    print(json.dumps({"erasure": receipt.erasure, "request": receipt.request_id}), flush=True)
    """
)


def _python(script: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def test_forgotten_text_is_in_no_file_under_concurrent_readers(marked: Path) -> None:
    ids = marker_ids(marked_dataset())
    waited, acknowledged, kept = MARKERS[:4], MARKERS[4:8], MARKERS[8:]
    assert all(files_holding(marked, m) for m in MARKERS)  # the scan sees stored text
    system = S3T.open(marked)
    stop = threading.Event()

    def read_in_a_thread() -> None:  # predictions, reports and raw reads all the while
        while not stop.is_set():
            system.status()
            system.samples()
            system.predict(["good film"])

    threads = [threading.Thread(target=read_in_a_thread) for _ in range(2)]
    reader = _python(READERS, str(marked / "registry.sqlite"), "60")
    assert reader.stdout is not None and reader.stdout.readline().strip() == "READY"
    for t in threads:
        t.start()
    try:
        for marker in waited:  # asked to wait: the bytes are gone when it returns
            receipt = system.forget([ids[marker]], wait_erasure=True)
            assert receipt.erasure == "complete"
            assert files_holding(marked, marker) == [], marker
        for marker in acknowledged:  # acknowledged on commit: pending, then gone in seconds
            receipt = system.forget([ids[marker]])
            assert receipt.erasure == "pending"
            assert ids[marker] not in {s.id for s in system.samples()}  # forgotten already
            deadline = time.monotonic() + 10
            while not system.erasure_complete(receipt.request_id):
                assert time.monotonic() < deadline, "the erasure did not complete"
                time.sleep(0.01)
            assert system.receipt(receipt.request_id).erasure == "complete"
            assert files_holding(marked, marker) == [], marker
    finally:
        stop.set()
        for t in threads:
            t.join()
        reader.kill()
        reader.wait()
    for marker in waited + acknowledged:
        assert files_holding(marked, marker) == []
    for marker in kept:  # the scan would have found them: they are still there
        assert files_holding(marked, marker)
    assert system.verify().ok


def test_readers_in_this_process_cannot_starve_the_erasure(marked: Path) -> None:
    """Reports read their snapshot in one step (or from a copy), so however many threads
    read while the interpreter lock is contended, the erasure checkpoint finds a moment
    without an old reader: each deletion's bytes leave every file within seconds. (Reports
    that fetched row by row held their snapshot across one wait for the lock per row, and
    with readers always overlapping the erasure never completed.)"""
    ids = marker_ids(marked_dataset())
    system = S3T.open(marked)
    system.load_model()
    stop = threading.Event()

    def report() -> None:
        while not stop.is_set():
            system.samples(include_deleted=True)
            system.status()
            system.verify()
            system.audit()

    def spin() -> None:  # contention for the interpreter lock, as a busy service has
        while not stop.is_set():
            sum(range(1000))

    threads = [threading.Thread(target=report) for _ in range(6)]
    threads += [threading.Thread(target=spin) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for marker in MARKERS[:4]:
            receipt = system.forget([ids[marker]])
            began = time.monotonic()
            while not system.erasure_complete(receipt.request_id):
                assert time.monotonic() - began < 10, "readers starved the erasure"
                time.sleep(0.01)
            print("ERASED IN", time.monotonic() - began)
            assert files_holding(marked, marker) == [], marker
    finally:
        stop.set()
        for t in threads:
            t.join()
    system.close()


@pytest.mark.slow
def test_a_pinned_reader_makes_the_erasure_pending_then_it_completes_and_is_logged(
    marked: Path,
) -> None:
    ids = marker_ids(marked_dataset())
    system = S3T.open(marked)
    pinned = _python(PINNED, str(marked / "registry.sqlite"), stdin=True)
    assert pinned.stdout is not None and pinned.stdout.readline().strip() == "PINNED"
    receipt = system.forget([ids[MARKERS[0]]])
    assert receipt.erasure == "pending"  # said, never a silent leftover
    assert system.receipt(receipt.request_id).erasure == "pending"
    assert system.status().erasures_pending == 1
    report = system.verify()
    assert report.ok and any("pending" in p for p in report.pending)
    assert pinned.stdin is not None
    pinned.stdin.write("\n")
    pinned.stdin.flush()
    pinned.wait()
    deadline = time.time() + 10
    while system.receipt(receipt.request_id).erasure == "pending" and time.time() < deadline:
        time.sleep(0.05)  # this process's janitor finishes it in the background
    assert system.receipt(receipt.request_id).erasure == "complete"
    assert files_holding(marked, MARKERS[0]) == []
    done = [e for e in system.audit() if e["event"] == "erasure-completed"]
    assert done and receipt.request_id in done[-1]["detail"]["requests"]
    assert done[-1]["at"] > receipt.at
    system.close()


@pytest.mark.slow
def test_a_pending_erasure_left_by_an_exited_process_completes_on_the_next_open(
    marked: Path,
) -> None:
    ids = marker_ids(marked_dataset())
    pinned = _python(PINNED, str(marked / "registry.sqlite"), stdin=True)
    assert pinned.stdout is not None and pinned.stdout.readline().strip() == "PINNED"
    child = _python(FORGET, str(marked), ids[MARKERS[1]])
    out, _ = child.communicate(timeout=120)
    assert '"erasure": "pending"' in out  # the process exits with the erasure pending
    assert files_holding(marked, MARKERS[1])  # still on disk, and said so
    assert pinned.stdin is not None
    pinned.stdin.write("\n")
    pinned.stdin.flush()
    pinned.wait()
    system = S3T.open(marked)  # every process that opens the workspace finishes it
    assert system.status().erasures_pending == 0
    assert files_holding(marked, MARKERS[1]) == []
    assert system.verify().ok


def test_no_content_fingerprint_is_kept(marked: Path) -> None:
    import hashlib
    import json

    data = marked_dataset()
    ids = marker_ids(data)
    row = data.train.ids.index(ids[MARKERS[2]])
    record = {"text": data.train.text[row], "label": int(data.train.labels[row])}
    fingerprints = [
        hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest(),
        hashlib.sha256(data.train.text[row].encode()).hexdigest(),
    ]
    S3T.open(marked).forget([ids[MARKERS[2]]], wait_erasure=True)
    for fingerprint in fingerprints:
        assert files_holding(marked, fingerprint) == []


@pytest.mark.slow
def test_a_running_service_finishes_an_erasure_another_process_left_pending_within_a_second(
    marked: Path,
) -> None:
    ids = marker_ids(marked_dataset())
    service = S3T.open(marked)
    service.start_maintenance()  # what `s3t serve` runs
    pinned = _python(PINNED, str(marked / "registry.sqlite"), stdin=True)
    assert pinned.stdout is not None and pinned.stdout.readline().strip() == "PINNED"
    child = _python(FORGET, str(marked), ids[MARKERS[3]])
    out, _ = child.communicate(timeout=120)
    request = json.loads(out)["request"]
    assert not service.erasure_complete(request)  # the reader still holds the old pages
    assert pinned.stdin is not None
    pinned.stdin.write("\n")
    pinned.stdin.flush()
    pinned.wait()
    released = time.monotonic()
    while not service.erasure_complete(request):
        assert time.monotonic() - released < 1.5, "the service did not pick it up in time"
        time.sleep(0.01)
    assert files_holding(marked, MARKERS[3]) == []
    service.close()
