"""`pip install s3t` without extras: the library and the CLI train, forget and verify; the
parts that need an extra say which one to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BLOCKED = (
    "fastapi",
    "uvicorn",
    "starlette",
    "matplotlib",
    "sklearn",
    "ray",
    "httpx",
    "bitsandbytes",
)

CLI = textwrap.dedent(
    """
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # as if the extra were not installed
    from s3t.cli.main import main
    sys.argv = ["s3t", *sys.argv[1:]]
    main()
    """
).format(blocked=BLOCKED)


def _s3t(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, COLUMNS="300"),
    )


@pytest.mark.slow
def test_the_core_works_without_any_extra(tmp_path: Path, tiny_bert: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("id,text,label\n" + "".join(f"s{i},good film {i},{i % 2}\n" for i in range(24)))
    ws = str(tmp_path / "ws")
    trained = _s3t(
        "train",
        "-w",
        ws,
        "--model",
        str(tiny_bert),
        "--data",
        str(data),
        "-m",
        "1",
        "-L",
        "2",
        "-B",
        "2",
        "--rank",
        "2",
        "--json",
    )
    assert trained.returncode == 0, trained.stderr
    forgot = _s3t("forget", "-w", ws, "s3", "--json")
    assert forgot.returncode == 0 and '"deleted"' in forgot.stdout, forgot.stderr
    verified = _s3t("verify", "-w", ws)
    assert verified.returncode == 0 and "no violations" in verified.stdout


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve", "-w", "anywhere"], "serve"),
        (["demo"], "experiments"),
        (["experiment", "rq3"], "experiments"),
        (
            ["simulate", "-m", "2", "-L", "2", "-B", "1", "--trials", "10", "--plot", "x.png"],
            "experiments",
        ),
    ],
)
def test_a_missing_extra_is_named(args: list[str], extra: str) -> None:
    out = _s3t(*args)
    assert out.returncode == 2, out.stderr
    assert f"pip install 's3t[{extra}]'" in out.stderr and "Traceback" not in out.stderr


def test_a_quantised_base_names_its_extra(tmp_path: Path, tiny_llama64: Path) -> None:
    args = ["train", "-w", str(tmp_path / "ws"), "--model", str(tiny_llama64)]
    out = _s3t(
        *args,
        "--data",
        "builtin:tiny_alpaca",
        "--quantize",
        "4bit",
        "-m",
        "1",
        "-L",
        "2",
        "-B",
        "2",
    )
    assert out.returncode == 2, out.stderr
    assert "pip install 's3t[quantize]'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "ws").exists(), "a failed start left a workspace behind"
