"""Every error s3t raises on purpose.

One base, :class:`S3TError`; each subclass also inherits the built-in exception that fits,
so ``except KeyError`` keeps working for callers who do not know s3t. The HTTP service maps
these classes to status codes in a single table (``s3t.service.errors.ERROR_STATUS``).

    S3TError
    ├── ConfigError (ValueError)            a setting out of range or inconsistent
    ├── PartitionError (ValueError)         bad ids, shard/slice counts or risk scores
    ├── SequenceError (ValueError)          budgets, priors or sequences that cannot be used
    ├── DataError (ValueError)              a data source, column or label that does not fit
    ├── ModelError (ValueError)             a model s3t cannot train (no transformer layers)
    ├── InvalidRequestError (ValueError)    an empty or malformed request (forget / predict)
    ├── UnknownSampleError (KeyError)       sample ids the workspace never held
    ├── UnknownSubjectError (KeyError)      data subjects the workspace never held
    ├── UnknownRequestError (KeyError)      a deletion request id the workspace never issued
    ├── UnknownTokenError (KeyError)        an access token the workspace does not hold
    ├── AccessDeniedError (PermissionError) a service refused the token (client side)
    ├── WorkspaceError (RuntimeError)       a missing, locked or corrupted workspace
    │   ├── SchemaVersionError              a workspace written by another schema version
    │   └── ArtifactError                   an artifact file missing or not matching its record
    ├── MissingExtraError (ImportError)     an optional part whose extra is not installed
    ├── QueueFullError (RuntimeError)       the service's prediction queue is full: retry later
    ├── ServiceUnavailableError (RuntimeError)  every shard has lost every model
    └── RetrainConflictError (RuntimeError) a retrain whose data saw a sample deleted meanwhile
"""

from __future__ import annotations

from collections.abc import Iterable


class S3TError(Exception):
    """Base of every error s3t raises on purpose."""


class ConfigError(S3TError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class PartitionError(S3TError, ValueError):
    """Sample ids, shard/slice counts or risk scores that cannot be partitioned."""


class SequenceError(S3TError, ValueError):
    """A budget, prior or sequence that sequence selection cannot use."""


class DataError(S3TError, ValueError):
    """A data source, column or label set that does not fit the request."""


class ModelError(S3TError, ValueError):
    """A model that s3t cannot train or serve."""


class InvalidRequestError(S3TError, ValueError):
    """An empty or malformed request (e.g. ``forget([])`` or a predict input of the wrong type)."""


class UnknownSampleError(S3TError, KeyError):
    """Sample ids that the workspace never held. Carries them in ``.ids``."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = sorted(ids)
        shown = ", ".join(repr(i) for i in self.ids[:10])
        more = f" (and {len(self.ids) - 10} more)" if len(self.ids) > 10 else ""
        super().__init__(
            f"unknown sample id(s): {shown}{more}; nothing was changed. "
            "List known ids with `s3t samples`."
        )

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class UnknownSubjectError(S3TError, KeyError):
    """Data subjects that the workspace never held. Carries them in ``.subjects``."""

    def __init__(self, subjects: Iterable[str]) -> None:
        self.subjects = sorted(subjects)
        shown = ", ".join(repr(s) for s in self.subjects[:10])
        more = f" (and {len(self.subjects) - 10} more)" if len(self.subjects) > 10 else ""
        super().__init__(
            f"unknown subject(s): {shown}{more}; nothing was changed. "
            "List subjects with `s3t samples --json`."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownRequestError(S3TError, KeyError):
    """A deletion request id that the workspace never issued."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class UnknownTokenError(S3TError, KeyError):
    """An access token id or name that the workspace does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return str(self.args[0])


class AccessDeniedError(S3TError, PermissionError):
    """A service refused the request's token (missing, unknown, revoked or under-scoped)."""


class WorkspaceError(S3TError, RuntimeError):
    """A workspace that is missing, locked or corrupted."""


class RegistryDamagedError(WorkspaceError):
    """The workspace's registry file is damaged (a page SQLite cannot read); the message
    names the file and what to do, ``problems`` what SQLite's page check found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class SchemaVersionError(WorkspaceError):
    """A workspace written with another registry schema version."""


class ArtifactError(WorkspaceError):
    """An artifact file that is missing or does not match its recorded sha256."""


class MissingExtraError(S3TError, ImportError):
    """An optional part of s3t whose extra is not installed (the message names it)."""


class QueueFullError(S3TError, RuntimeError):
    """The service's prediction queue is full: retry after a moment (HTTP 503, Retry-After)."""


class ServiceUnavailableError(S3TError, RuntimeError):
    """Every shard has lost every model: predictions would be a guess, so none is given."""


class RetrainConflictError(S3TError, RuntimeError):
    """A retrain's training data contains a sample deleted after the retrain started."""
