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
