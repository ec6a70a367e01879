"""The `s3t` command as users run it: --json outputs, tables, and clear errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from s3t.cli.main import app
from s3t.core.simulate import theoretical_delta
from s3t.data import load_dataset
from tiny import sentiment_texts

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    """Through the console entry point, as a user would (errors become messages)."""
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-c", "from s3t.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_simulate_json_matches_the_closed_form_within_three_percent() -> None:
    out = json.loads(
        run(
            "simulate",
            "--shards",
            "5",
            "--slices",
            "6",
            "--budget",
            "1,2,3,4,5,6",
            "--trials",
            "5000",
            "--json",
        )
    )
    assert [row["budget"] for row in out] == [1, 2, 3, 4, 5, 6]
    for row in out:
        theory = theoretical_delta(5, 6, row["budget"])
        assert row["delta_theory"] == pytest.approx(theory, abs=1e-3)
        assert abs(row["delta_mean"] - theory) / theory < 0.03


def test_simulate_table_and_plot(tmp_path: Path) -> None:
    out = run(
        "simulate",
        "-m",
        "3",
        "-L",
        "4",
        "-B",
        "1,4",
        "--trials",
        "300",
        "--plot",
        str(tmp_path / "d.png"),
    )
    assert "δ simulated" in out and "SISA" in out
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_simulate_a_retraining_service_at_deletion_rates() -> None:
    args = ["simulate", "-m", "3", "-L", "3", "-B", "3", "--samples", "600", "--rate", "2,8"]
    args += ["--stage-overhead", "0.5", "--seconds-per-sample", "0.004", "--seconds", "60"]
    out = json.loads(run(*args, "--trials", "4", "--min-depth", "2", "--json"))
    runs = {(r["order"], r["rate"]): r for r in out["availability"]}
    assert set(runs) == {(o, r) for o in ("service-first", "shard-by-shard") for r in (2.0, 8.0)}
    assert runs[("service-first", 2.0)]["up"] > runs[("service-first", 8.0)]["up"]
    assert runs[("service-first", 8.0)]["up"] > runs[("shard-by-shard", 8.0)]["up"]
    limits = {row["order"]: row for row in out["sustainable"]}
    assert limits["service-first"]["sustained_99"] > limits["shard-by-shard"]["sustained_99"]
    assert 0 < limits["service-first"]["full_depth"] < limits["service-first"]["first_stages"]
    assert "up 99% of the time up to" in run(*args, "--trials", "2")


def test_sequences_json() -> None:
    out = json.loads(run("sequences", "--slices", "4", "--budget", "6", "--json"))
    assert out["sequences"][:4] == [[0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1], [1, 2, 3, 0]]
    assert out["diversity"] > 0
    bms = json.loads(
        run("sequences", "-L", "3", "-B", "3", "--method", "bms", "--prior", "1,2,7", "--json")
    )
    assert len(bms["scores"]) == 3


def _csv(path: Path, n: int = 90) -> Path:
    texts, labels = sentiment_texts(n, seed=4)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "review", "sentiment"])
        for i, (t, y) in enumerate(zip(texts, labels, strict=True)):
            writer.writerow([f"u{i}", t, "pos" if y else "neg"])
    return path


def _train(ws: Path, model: Path, data: Path | str) -> list[str]:
    """The start of an `s3t train` command line."""
    return ["train", "-w", str(ws), "--model", str(model), "--data", str(data)]


@pytest.fixture(scope="module")
def trained_ws(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("cli")
    data = _csv(root / "reviews.csv")
    ws = root / "ws"
    out = json.loads(
        run(
            *_train(ws, tiny_bert, data),
            "--id-column",
            "uid",
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "-m",
            "2",
            "-L",
            "3",
            "-B",
            "2",
            "--epochs",
            "1",
            "--lr",
            "0.005",
            "--batch-size",
            "16",
            "--rank",
            "2",
            "--test-fraction",
            "0.2",
            "--json",
        )
    )
    assert {(s["shard"], s["stage"]) for s in out["stages"]} == {
        (k, i) for k in (0, 1) for i in (1, 2, 3)
    }
    for stage in out["stages"]:  # each reported file holds exactly the reported artifact
        assert hashlib.sha256(Path(stage["path"]).read_bytes()).hexdigest() == stage["artifact"]
    assert out["status"]["live_shards"] == 2
    held_out = load_dataset(
        str(data),
        id_column="uid",
        text_column="review",
        label_column="sentiment",
        test_fraction=0.2,
        seed=0,
    ).test
    assert held_out is not None and out["test"]["samples"] == len(held_out)
    return ws


def test_system_commands_json(trained_ws: Path, tmp_path: Path) -> None:
    ws = ["-w", str(trained_ws)]
    samples = json.loads(run("samples", *ws, "--shard", "1", "--json"))
    assert samples and all(s["shard"] == 1 for s in samples)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(samples[0]["id"] + "\n" + samples[1]["id"] + "\n")
    receipt = json.loads(run("forget", *ws, "--file", str(ids_file), "--json"))
    assert sorted(receipt["deleted"]) == sorted([samples[0]["id"], samples[1]["id"]])
    assert receipt["erasure"] == "pending" and receipt["chain_seq"] > 0  # acknowledged on commit
    shown = json.loads(run("receipt", receipt["request_id"], *ws, "--json"))
    assert shown["erasure"] == "complete"  # the command finished it before it exited
    status = json.loads(run("status", *ws, "--json"))
    assert status["deleted_samples"] == 2 and status["deletion_requests"] == 1
    predictions = json.loads(run("predict", *ws, "good film", "awful plot", "--json"))
    assert len(predictions["labels"]) == 2 and set(predictions["labels"]) <= {"neg", "pos"}
    assert json.loads(run("verify", *ws, "--json"))["ok"] is True
    retrained = json.loads(run("retrain", *ws, "--json"))
    assert retrained["status"]["sequences_below_full_depth"] == 0
    exported = json.loads(
        run("export", *ws, "--shard", "0", "--out", str(tmp_path / "exp"), "--json")
    )
    assert (Path(exported["path"]) / "adapter_config.json").exists()
    audit = json.loads(run("audit", *ws, "--json"))
    assert [e["event"] for e in audit].count("forget") == 1
    table = run("status", *ws)
    assert "served depth" in table


def test_verify_exits_nonzero_on_a_corrupted_artifact(trained_ws: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "ws"
    shutil.copytree(trained_ws, copy)
    victim = next((copy / "artifacts").rglob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-8] + b"corrupt!")
    result = runner.invoke(app, ["verify", "-w", str(copy)])
    assert result.exit_code == 1
    assert "does not match its sha256" in result.stdout


def test_each_command_closes_the_workspace_it_opened(trained_ws: Path, tmp_path: Path) -> None:
    """After a command the workspace is a plain folder again (no live SQLite side files),
    whether the command succeeded or failed."""
    import shutil

    copy = tmp_path / "ws"
    shutil.copytree(trained_ws, copy)
    side_files = ("registry.sqlite-wal", "registry.sqlite-shm")
    victim = json.loads(run("samples", "-w", str(copy), "--json"))[0]["id"]
    for args in (["status"], ["verify"], ["forget", victim], ["forget", victim]):
        runner.invoke(app, [*args, "-w", str(copy)])
        assert not any((copy / name).exists() for name in side_files), args


@pytest.mark.slow
def test_clear_errors_before_any_training(tmp_path: Path, tiny_bert: Path) -> None:
    data = _csv(tmp_path / "r.csv")
    ws = tmp_path / "ws"
    missing = run_main(
        *_train(ws, tiny_bert, data),
        "--text-column",
        "body",
    )
    assert missing.returncode == 2
    assert "body" in missing.stderr and "review" in missing.stderr  # names it and lists columns
    not_model = run_main(
        *_train(ws, tmp_path, data),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
    )
    assert not_model.returncode == 2 and "not a loadable transformer model" in not_model.stderr
    labels = run_main(
        *_train(ws, tiny_bert, "builtin:digits"),
    )
    assert labels.returncode == 2 and "image" in labels.stderr
    assert not ws.exists()
    unknown = run_main("forget", "-w", str(tmp_path / "nowhere"), "x")
    assert unknown.returncode == 2 and "no s3t workspace" in unknown.stderr


def main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the console entry point in this process: (exit status, stdout, stderr)."""
    from s3t.cli.main import main

    old = sys.argv
    sys.argv = ["s3t", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["samples", "--shard", "9223372036854775808"], "shard must be in 0..1"),
        (["audit", "--since", "9223372036854775808"], "since must be an integer"),
        (["forget", "\udcff-bad"], "unpaired surrogate"),
        (["forget", "--file", "{latin1}"], "is not UTF-8 text"),
        (["export", "--shard", "0", "--out", "{a_file}"], "is a file"),
        (["export", "--shard", "0", "--out", "{a_file}/sub/dir"], "which is a file"),
        (["export", "--shard", "0", "--out", "/proc/s3t-export"], "cannot write the export"),
        (["receipt", "no-such-request"], "no deletion request"),
        (["reference", "--shard", "7"], "shard must be in 0..1"),
        (["predict", "good", "--device", "tpu"], "device must be one of"),
        (["retrain", "--ray", "--device", "cuda"], "give --gpus-per-task"),
        (["export", "--shard", "0", "--out", "x", "--device", "mps:9"], "device"),
    ],
)
def test_bad_input_is_one_line_naming_it_and_changes_nothing(
    trained_ws: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    latin1 = tmp_path / "ids.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    args = [a.format(latin1=latin1, a_file=a_file) for a in args]
    before = json.loads(run("status", "-w", str(trained_ws), "--json"))
    code, _, err = main_in_process(capsys, *args, "-w", str(trained_ws))
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one line
    assert json.loads(run("status", "-w", str(trained_ws), "--json")) == before
    assert a_file.read_text() == "keep"


def test_receipts_prove_a_deletion_and_reference_recomputes(
    trained_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil
    import sqlite3

    ws = tmp_path / "ws"
    shutil.copytree(trained_ws, ws)
    victim = json.loads(run("samples", "-w", str(ws), "--json"))[0]["id"]
    receipt = json.loads(run("forget", "-w", str(ws), victim, "--wait-erasure", "--json"))
    assert receipt["erasure"] == "complete" and len(receipt["chain_head"]) == 64
    shown = json.loads(run("receipt", receipt["request_id"], "-w", str(ws), "--json"))
    assert shown["chain_head"] == receipt["chain_head"] and shown["deleted"] == [victim]
    kept = tmp_path / "receipt.json"
    kept.write_text(json.dumps(receipt))
    assert json.loads(run("verify", "-w", str(ws), "--receipt", str(kept), "--json"))["ok"]
    reference = json.loads(run("reference", "-w", str(ws), "--shard", "1", "--json"))
    assert reference["identical"] and len(reference["stages"]) == reference["depth"]
    db = sqlite3.connect(ws / "registry.sqlite")
    with db:
        db.execute("UPDATE samples SET deleted_at=NULL WHERE id=?", (victim,))
    db.close()
    code, out, _ = main_in_process(capsys, "verify", "-w", str(ws), "--receipt", str(kept))
    assert code == 1 and "un-forgotten" in out


def test_progress_for_a_log_is_plain_lines_at_a_steady_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from s3t.cli.output import PlainProgress

    clock = iter([0.0, 1.0, 2.0, 20.0, 21.0, 40.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    lines: list[str] = []
    progress = PlainProgress(interval=15, write=lines.append)
    progress("stage", 0, 100, "shard 0 · 0")  # first: printed
    progress("stage", 10, 100)  # within the interval: quiet
    progress("stage", 20, 100)
    progress("stage", 60, 100, "loss 0.4 · 90 samples/s")  # 20 s later: printed, with an ETA
    progress("stage", 61, 100)
    progress("stage", 100, 100)  # finished: printed
    assert len(lines) == 3
    assert "stage 60/100 · ETA 13s · loss 0.4" in lines[1]  # 60 done in 20 s: 40 left
    assert lines[2].endswith("stage 100/100") and "ETA" not in lines[2]


def test_training_options_for_large_models_run_on_a_cpu(tmp_path: Path, tiny_bert: Path) -> None:
    """bf16 autocast, gradient checkpointing, accumulation and a cache that spills at once:
    the same commands a GPU user runs, on the CPU; the spill files go with the process."""
    ws = tmp_path / "ws"
    args = [*_train(ws, tiny_bert, _csv(tmp_path / "r.csv")), "--text-column", "review"]
    args += ["--label-column", "sentiment", "-m", "1", "-L", "2", "-B", "1", "--rank", "2"]
    args += ["--precision", "bf16", "--gradient-checkpointing", "--accumulation-steps", "2"]
    out = run_main(*args, "--cache-memory", "0", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "estimated memory" in out.stderr and "on cpu" in out.stderr
    config = json.loads(run("status", "-w", str(ws), "--json"))
    assert config["live_shards"] == 1
    assert not list((ws / "cache").glob("*.activations"))
    predicted = json.loads(run("predict", "good film", "-w", str(ws), "--device", "cpu", "--json"))
    assert predicted["labels"][0] in ("pos", "neg")
    cuda = run_main("predict", "good", "-w", str(ws), "--device", "cuda")
    if not torch.cuda.is_available():
        assert (
            cuda.returncode == 2
            and "no CUDA GPU is available here; use --device cpu" in cuda.stderr
        )


def _damage(ws: Path) -> None:
    """Overwrite the header of every page of the registry but the first (the schema stays
    readable; no table's pages are)."""
    path = ws / "registry.sqlite"
    pages = path.stat().st_size // 4096
    with path.open("r+b") as fh:
        for page in range(1, pages):
            fh.seek(page * 4096)
            fh.write(b"\xff" * 16)


def test_a_damaged_registry_is_one_line_naming_the_file_and_verify_reports_it(
    trained_ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(trained_ws, ws)
    _damage(ws)
    for command in (["status"], ["predict", "good film"], ["samples"], ["forget", "u1"]):
        code, _, err = main_in_process(capsys, *command, "-w", str(ws))
        assert code == 2 and "Traceback" not in err, (command, err)
        assert len(err.strip().splitlines()) == 1
        assert str(ws / "registry.sqlite") in err and "is damaged" in err
        assert "restore the workspace from a backup" in err and "s3t verify" in err
    code, out, err = main_in_process(capsys, "verify", "-w", str(ws), "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"] and "Traceback" not in err
    assert {v["check"] for v in report["violations"]} == {"registry"}
    assert any("restore the workspace from a backup" in v["detail"] for v in report["violations"])
