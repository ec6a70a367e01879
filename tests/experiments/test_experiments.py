"""Every experiment command and the demo run end to end at a small size on a tiny model,
writing results.json and their plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s3t.cli.main import app
from s3t.experiments.common import ExperimentSettings, workspace_path
from s3t.system.api import S3T
from tiny import sentiment_texts

runner = CliRunner()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    texts, labels = sentiment_texts(150, seed=9)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows(
            (f"x{i}", t, int(y)) for i, (t, y) in enumerate(zip(texts, labels, strict=True))
        )
    return path


def small(model: Path, data: Path) -> list[str]:
    return [
        "--model",
        str(model),
        "--data",
        str(data),
        "--epochs",
        "1",
        "--lr",
        "0.005",
        "--rank",
        "2",
    ]


def assert_png(path: Path) -> None:
    """A real figure: a PNG of a plausible size that is not one flat colour."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 250
        assert len(set(image.convert("L").get_flattened_data())) > 8


def invoke(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_rq1(tiny_bert: Path, reviews: Path, tmp_path: Path) -> None:
    out = invoke("experiment", "rq1", "--out", str(tmp_path), *small(tiny_bert, reviews))
    runs = [r["run"] for r in out["rows"]]
    assert runs == [
        "ordinary LoRA (all layers)",
        "S3T one sequence, L=2",
        "S3T one sequence, L=3",
        "S3T one sequence, L=6",
    ]
    n = out["rows"][0]["sample_passes"]  # ordinary LoRA: every sample once per epoch
    for r in out["rows"][1:]:  # stage i of L sees i/L of the data
        slices = r["slices"]
        assert abs(r["sample_passes"] - n * (slices + 1) / 2) <= slices * 2, r
    for r in out["rows"]:  # the reported accuracy is the stored system's, recomputed
        system = S3T.open(workspace_path(tmp_path, r["run"]), read_only=True)
        assert r["accuracy"] == round(system.evaluate()["accuracy"], 4)
    assert_png(tmp_path / "rq1_accuracy.png")
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == out["rows"]


@pytest.mark.slow
def test_rq2(tiny_bert: Path, reviews: Path, tmp_path: Path) -> None:
    out = invoke(
        "experiment",
        "rq2",
        "--out",
        str(tmp_path),
        *small(tiny_bert, reviews),
        "-m",
        "2",
        "-L",
        "3",
        "--deletions",
        "6",
        "--streams",
        "8",
    )
    assert [d["budget"] for d in out["delta"]] == [1, 2, 3]
    assert out["delta"][0]["measured_mean"] <= out["delta"][-1]["measured_mean"] + 1e-9
    assert out["accuracy_vs_deletions"][-1]["deletions"] == 6
    times = out["deletion_time"]
    assert set(times) >= {"s3t_forget_ms", "sisa_retrain_s", "full_retrain_s"}
    for plot in ("accuracy_vs_deletions", "delta_vs_budget", "deletion_time", "storage_vs_delta"):
        assert_png(tmp_path / f"rq2_{plot}.png")


def test_rq3(tmp_path: Path) -> None:
    out = invoke(
        "experiment", "rq3", "--out", str(tmp_path), "-m", "3", "-L", "4", "--trials", "300"
    )
    assert len(out["diversity"]["cyclic"]) == 4
    zipf = next(r for r in out["rows"] if r["prior"] == "zipf" and r["budget"] == 2)
    assert zipf["bms"]["depth"] > zipf["cyclic"]["depth"]
    diversity = out["diversity"]
    assert diversity["cyclic"][-1] >= diversity["random (mean of 20)"][-1]  # cyclic is maximal
    assert_png(tmp_path / "rq3_diversity.png")


def test_ablation(tiny_bert: Path, reviews: Path, tmp_path: Path) -> None:
    out = invoke(
        "experiment", "ablation", "--out", str(tmp_path), *small(tiny_bert, reviews), "-L", "3"
    )
    variants = [r["variant"] for r in out["rows"]]
    assert variants == [
        "top-down, 1 layer(s) per slice",
        "top-down, 2 layer(s) per slice",
        "bottom-up, 2 layer(s) per slice",
    ]


@pytest.mark.slow
def test_demo_writes_a_report_with_plots(tiny_bert: Path, reviews: Path, tmp_path: Path) -> None:
    args = [
        "demo",
        "-w",
        str(tmp_path),
        "--model",
        str(tiny_bert),
        "--data",
        str(reviews),
        "--limit",
        "100",
        "--epochs",
        "1",
        "--deletions",
        "6",
        "--deletion-batch",
        "3",
    ]
    out = invoke(*args)
    assert set(out["accuracy"]) == {"system", "one-sequence", "ordinary-lora"}
    assert out["verify_ok"] is True
    report = (tmp_path / "report.md").read_text()
    pngs = [p for p in tmp_path.glob("*.png")]
    assert len(pngs) >= 3 and all(p.name in report for p in pngs)
    for png in pngs:
        assert_png(png)
    trained = [s.artifact for s in S3T.open(tmp_path / "system", read_only=True).stages()]
    again = invoke(*args)  # re-running reuses the trained workspaces: nothing is retrained
    assert [s.artifact for s in S3T.open(tmp_path / "system", read_only=True).stages()] == trained
    assert again["accuracy"] == out["accuracy"]


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        ExperimentSettings(limit=0)
