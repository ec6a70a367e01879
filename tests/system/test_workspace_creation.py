"""Creating a workspace is all-or-nothing: a crash leaves nothing half-made (and any
scratch copy it left is removed by the next process), and of concurrent creators one wins
while the others resume it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from helpers import toy_dataset
from s3t.errors import WorkspaceError
from s3t.system.config import S3TConfig
from s3t.system.store.registry import Registry
from s3t.system.store.workspace import Workspace


def test_workspace_creation_is_all_or_nothing_and_one_process_wins(
    tmp_path: Path, toy_config: S3TConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toy_dataset()
    root = tmp_path / "ws"

    def crash(self: Registry, event: str, detail: object, at: float | None = None) -> None:
        raise KeyboardInterrupt  # killed half-way through writing the registry

    with monkeypatch.context() as m:
        m.setattr(Registry, "audit", crash)
        with pytest.raises(KeyboardInterrupt):
            Workspace.create(root, toy_config, data)
    assert sorted(p.name for p in root.iterdir()) == []  # nothing half-created is left

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(Workspace.create(root, toy_config, data)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(isinstance(r, Workspace) for r in results)
    assert sorted(p.name for p in root.iterdir() if "creating" in p.name) == []
    assert len(Workspace(root).registry().sequences()) == 6

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        Workspace.create(not_a_folder, toy_config, data)


def test_closing_a_system_releases_the_workspace_and_using_it_again_reopens(
    trained: Path,
) -> None:
    """`close` closes the database connection (SQLite's -wal and -shm side files go with
    the last one), so a closed workspace can be copied or moved as a plain folder; a later
    call on the same system opens a fresh connection."""
    from s3t.system.api import S3T

    side_files = ("registry.sqlite-wal", "registry.sqlite-shm")
    system = S3T.open(trained)
    first = system.samples(0)[0].id
    assert any((trained / name).exists() for name in side_files)  # held open
    system.close()
    assert not any((trained / name).exists() for name in side_files)
    system.forget([first])
    assert first not in {s.id for s in system.samples(0)}
    with S3T.open(trained, read_only=True) as reader:
        assert reader.status().deleted_samples == 1
    system.close()
    assert not any((trained / name).exists() for name in side_files)
