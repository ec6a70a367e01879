"""The workspace's files: content-addressed stage artifacts, quarantined ones, and what
crashed processes leave behind. Only this module builds paths, and only from ids that
are sha256 hex digests, so a crafted registry can never point a file operation outside
the workspace.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s3t.engine.artifacts import write_atomic
from s3t.errors import ArtifactError, WorkspaceError

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"\.tmp(\d+)$")
_SCRATCH = re.compile(r"\.creating-(\d+)-\d+(-wal|-shm|-journal)?$")
_SPILL = re.compile(r"(\d+)-(\d+)-(\d+)-[0-9a-f]+\.activations")


def check_artifact_id(artifact_id: object) -> str:
    """Return ``artifact_id`` if it is a sha256 hex digest; otherwise raise
    :class:`WorkspaceError` (the registry was edited by hand or is corrupted)."""
    if not isinstance(artifact_id, str) or not _DIGEST.fullmatch(artifact_id):
        raise WorkspaceError(
            f"the registry names an artifact id that is not a sha256 hex digest: "
            f"{artifact_id!r}; the workspace was tampered with or is corrupted — run `s3t verify`"
        )
    return artifact_id


class ArtifactFiles:
    """The artifact folders of one workspace."""

    def __init__(self, root: Path, registry_name: str) -> None:
        self.root = root
        self.folder = root / "artifacts"
        self.quarantine_folder = root / "quarantine"
        self.cache_folder = root / "cache"  # activation-cache spill files of live trainers
        self._registry_name = registry_name

    def path(self, artifact_id: str) -> Path:
        """Where an artifact's file lives (by content hash)."""
        aid = check_artifact_id(artifact_id)
        return self.folder / aid[:2] / f"{aid}.safetensors"

    def quarantine_path(self, artifact_id: str) -> Path:
        """Where a quarantined artifact's file is kept for inspection."""
        return self.quarantine_folder / f"{check_artifact_id(artifact_id)}.safetensors"

    def exists(self, artifact_id: str) -> bool:
        """Whether the artifact's file is on disk (in service)."""
        return self.path(artifact_id).exists()

    def read(self, artifact_id: str) -> bytes:
        """The artifact file's bytes (:class:`ArtifactError` if missing)."""
        try:
            return self.path(artifact_id).read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                f"artifact file missing: {self.path(artifact_id)}; run `s3t verify`"
            ) from None

    def write(self, artifact_id: str, blob: bytes) -> bool:
        """Write an artifact durably unless it is already there; True if written now.
        A full disk is a :class:`WorkspaceError` that leaves no partial file."""
        path = self.path(artifact_id)
        if path.exists():
            return False
        try:
            write_atomic(path, blob)
        except OSError as exc:
            raise WorkspaceError(
                f"cannot write stage artifact {path}: {exc.strerror or exc}; nothing was "
                "registered — free space (or fix permissions) and retry"
            ) from exc
        return True

    def remove(self, artifact_id: str) -> bool:
        """Delete an artifact's file and any quarantined copy; True if something was removed."""
        removed = False
        for path in (self.path(artifact_id), self.quarantine_path(artifact_id)):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed

    def quarantine(self, artifact_id: str) -> None:
        """Move a corrupted artifact's file out of service (kept for inspection)."""
        source = self.path(artifact_id)
        if source.exists():
            self.quarantine_folder.mkdir(exist_ok=True)
            shutil.move(str(source), self.quarantine_path(artifact_id))

    def on_disk(self) -> Iterator[tuple[str | None, Path]]:
        """Every file under the artifact folders, with its artifact id when its name is one."""
        for folder in (self.folder, self.quarantine_folder):
            if not folder.exists():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    stem = path.name.split(".", 1)[0]
                    yield (
                        (
                            stem
                            if _DIGEST.fullmatch(stem) and path.suffix == ".safetensors"
                            else None
                        ),
                        path,
                    )

    def leftovers(self, known: set[str], min_age_seconds: float = 600.0) -> list[Path]:
        """Files no registry row accounts for: unregistered stage files and temp files of
        a process killed mid-write, and half-created registries. A file is a leftover
        once the process that wrote it is gone, or it is older than ``min_age_seconds``
        (so a stage being swapped in right now is never taken)."""
        cutoff = time.time() - min_age_seconds
        out = []
        for aid, path in self.on_disk():
            if aid is not None and aid in known:
                continue  # in service, or a quarantined copy kept for inspection
            temp = _TEMP.search(path.name)
            if (temp and not _alive(int(temp.group(1)))) or _older(path, cutoff):
                out.append(path)
        for path in self.root.glob(self._registry_name + ".creating-*"):
            scratch = _SCRATCH.search(path.name)
            if (scratch and not _alive(int(scratch.group(1)))) or _older(path, cutoff):
                out.append(path)
        return sorted(out)

    @contextmanager
    def cache_lock(self, exclusive: bool, timeout: float | None = None) -> Iterator[bool]:
        """Hold the activation-cache folder's lock: shared while a trainer writes a spill
        file, exclusive while an erasure deletes them. Yields False if an exclusive lock
        was not had within ``timeout`` seconds (None: wait)."""
        self.cache_folder.mkdir(parents=True, exist_ok=True)
        with open(self.cache_folder / ".lock", "a+b") as fh:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, mode | (fcntl.LOCK_NB if deadline is not None else 0))
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.02)
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def cache_files(self, groups: set[tuple[int, int]] | None = None) -> list[Path]:
        """Activation-cache spill files (of these (shard, slice) groups): they hold encoded
        features of the samples of their group."""
        if not self.cache_folder.exists():
            return []
        out = []
        for path in sorted(self.cache_folder.glob("*.activations")):
            match = _SPILL.fullmatch(path.name)
            if (
                match is None
                or groups is None
                or (int(match.group(1)), int(match.group(2))) in groups
            ):
                out.append(path)
        return out

    def stale_cache_files(self) -> list[Path]:
        """Spill files of processes that are gone."""
        return [
            p
            for p in self.cache_files()
            if (m := _SPILL.fullmatch(p.name)) is None or not _alive(int(m.group(3)))
        ]

    def unregistered(self, known: set[str], written_before: float) -> list[Path]:
        """Stage files in service folders that no registry row names, written before
        ``written_before`` (stages a trainer wrote but has not swapped in, or never will)."""
        return [
            path
            for aid, path in self.on_disk()
            if aid is not None
            and aid not in known
            and path.parent.parent == self.folder
            and _older(path, written_before)
        ]


def unlink_all(paths: list[Path]) -> int:
    """Delete files (already gone is fine); return how many this call removed."""
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:  # read-only medium or permissions: reported, never fatal here
            log.warning("could not remove %s: %s", path, exc)
    return removed


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
