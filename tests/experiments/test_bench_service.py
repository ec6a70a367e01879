"""The service benchmark's reading of the server's access log: per route, the time the
server spent, from the lines a run added (other lines and non-JSON output are skipped)."""

from __future__ import annotations

import json
from pathlib import Path

from s3t.experiments.bench_service import server_side_latencies


def test_server_side_latencies_come_from_the_lines_a_run_added(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    before = [{"route": "/v1/forget", "ms": 900.0}]  # an earlier run: not counted
    during = [{"route": "/v1/forget", "ms": float(ms)} for ms in range(1, 101)]
    during += [{"route": "/v1/predict", "ms": 5.0}, {"event": "no timing"}]
    lines = [json.dumps(e) for e in before] + ["INFO: uvicorn started"]
    log.write_text("\n".join(lines + [json.dumps(e) for e in during]) + "\n")
    spent, seen = server_side_latencies(log, len(lines))
    assert seen == len(lines) + len(during)
    assert spent["forget"] == {"p50_ms": 50.5, "p99_ms": 99.01}
    assert spent["predict"] == {"p50_ms": 5.0, "p99_ms": 5.0}
    assert set(spent) == {"forget", "predict"}
    again, _ = server_side_latencies(log, seen)  # nothing new since
    assert again == {}


def test_pressure_outages_and_erasure_latencies_are_read_from_what_happened() -> None:
    from s3t.experiments.bench_pressure import _erasure_latencies, _outages

    answers = [(0.0, 200), (1.0, 503), (1.5, 503), (2.25, 200), (3.0, 503), (3.5, 200)]
    assert _outages(answers) == [1.25, 0.5]  # a first 503 to the next answer
    assert _outages([(0.0, 503), (1.0, 503)]) == []  # never answered again: no end to time
    audit = [
        {"event": "forget", "at": 10.0, "detail": {"request_id": "a"}},
        {"event": "forget", "at": 11.0, "detail": {"request_id": "b"}},
        {"event": "erasure-completed", "at": 10.02, "detail": {"requests": ["a"]}},
        {"event": "erasure-completed", "at": 11.5, "detail": {"requests": ["b", "a"]}},
    ]
    erased = _erasure_latencies(audit)
    assert erased["completed"] == 2 and erased["of"] == 2
    assert erased["max_ms"] == 500.0 and erased["p50_ms"] == 260.0
