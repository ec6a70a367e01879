"""Where a server learns what to serve: the selection of served models, whether a stage was
taken out of service since, and the bytes of a stage. In one process that is the
workspace's registry and artifact files (:class:`WorkspaceSource`); on a prediction
replica of a scaled-out service it is the serving state its deletion authority last
published (:class:`~s3t.system.scaleout.replica.ReplicaState`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from s3t.core.selection import Served, serving_choice
from s3t.errors import ArtifactError
from s3t.system.config import S3TConfig
from s3t.system.store.workspace import Workspace


class ServingSource(Protocol):
    """What :class:`~s3t.system.serving.server.Server` reads (see the module docstring)."""

    @property
    def config(self) -> S3TConfig: ...
    @property
    def task(self) -> str: ...
    @property
    def modality(self) -> str: ...
    @property
    def label_names(self) -> tuple[str, ...] | None: ...

    def selection(self, budget: int | None, exclude: Collection[str] = ()) -> dict[int, Served]:
        """Each live shard's served model now, never using an artifact in ``exclude``."""
        ...

    def unusable_among(self, artifacts: Iterable[str]) -> set[str]:
        """Which of these artifacts were taken out of service (purged or quarantined)."""
        ...

    def read_artifact(self, artifact: str) -> bytes:
        """An artifact's bytes, checked against its sha256 (:class:`ArtifactError` if not:
        a missing or corrupted file is quarantined where that is possible)."""
        ...

    def may_quarantine(self, artifact: str) -> bool:
        """Whether a stage that failed to load was taken out of service for good (or
        whether this server must avoid it itself)."""
        ...


class WorkspaceSource:
    """The registry and artifact files of a workspace this process has open."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace

    @property
    def config(self) -> S3TConfig:
        return self.ws.config

    @property
    def task(self) -> str:
        return self.ws.task

    @property
    def modality(self) -> str:
        return self.ws.modality

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.ws.label_names

    def selection(self, budget: int | None, exclude: Collection[str] = ()) -> dict[int, Served]:
        rows, untrained, unusable = self.ws.registry().serving_view()
        return serving_choice(rows, budget, untrained, unusable | set(exclude))

    def unusable_among(self, artifacts: Iterable[str]) -> set[str]:
        return self.ws.registry().purged_among(artifacts)

    def read_artifact(self, artifact: str) -> bytes:
        return self.ws.read_artifact(artifact)

    def may_quarantine(self, artifact: str) -> bool:
        return not self.ws.read_only and bool(self.unusable_among([artifact]))


__all__ = ["ArtifactError", "ServingSource", "WorkspaceSource"]
