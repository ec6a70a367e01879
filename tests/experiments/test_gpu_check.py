"""bench/gpu.py, the GPU check, runs end to end on a CPU with tiny configs: the same path
(fit, reference, every precision, a 4-bit base) that it runs at real sizes on a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_on_a_cpu_with_tiny_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Path(__file__).parents[2] / "bench" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_check", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "rows.json"
    assert module.main(["--device", "cpu", "--tiny", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    ran = [r for r in rows if "skipped" not in r]
    assert {(r["model"], r["precision"]) for r in ran} >= {
        ("roberta", "fp32"),
        ("roberta", "bf16"),
        ("roberta", "fp16"),
        ("llama", "bf16"),
    }
    assert all(r["identical_to_reference"] and r["samples_per_second"] > 0 for r in ran)
    printed = capsys.readouterr().out
    assert "| model | precision |" in printed and printed.count("| yes |") == len(ran)
