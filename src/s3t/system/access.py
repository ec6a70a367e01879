"""Access tokens for the HTTP service: bearer tokens with scopes, stored hashed in the
workspace, compared in constant time, created, listed and revoked by name or id.

A token reads ``s3t_<id>_<secret>``: the id finds its record, the secret is never stored
(only its sha256; a token is 256 random bits, so a plain hash is as good as a slow one)
and never logged. ``admin`` holds every scope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from s3t.errors import InvalidRequestError, UnknownTokenError
from s3t.system.store.records import TokenRow
from s3t.system.store.workspace import Workspace

SCOPES = ("predict", "read", "forget", "admin")
SCOPE_HELP = {
    "predict": "POST /v1/predict and /v1/generate",
    "read": "status, samples, audit, receipts, verify, metrics",
    "forget": "POST /v1/forget",
    "admin": "every scope, plus retraining and token management",
}
_TOKEN = re.compile(r"s3t_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})")
_DUMMY = hashlib.sha256(b"no such token").hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A token's record as shown to people (never its secret)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created: float
    revoked: float | None

    def allows(self, scope: str) -> bool:
        """Whether this token may act in ``scope``."""
        return self.revoked is None and (scope in self.scopes or "admin" in self.scopes)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**asdict(self), "scopes": list(self.scopes)}


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated scopes (in canonical order)."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown or not wanted:
        raise InvalidRequestError(f"scopes must be some of {list(SCOPES)}, got {sorted(wanted)!r}")
    return tuple(s for s in SCOPES if s in wanted)


def create_token(
    workspace: Workspace, scopes: Iterable[str], name: str = ""
) -> tuple[TokenInfo, str]:
    """Create a token; return its record and the token itself (shown once, never stored)."""
    chosen = check_scopes(scopes)
    if len(name) > 100 or any(ord(c) < 32 for c in name):
        raise InvalidRequestError("a token name is at most 100 printable characters")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = TokenRow(
        token_id, name, chosen, hashlib.sha256(secret.encode()).hexdigest(), time.time(), None
    )
    workspace.registry().add_token(row)
    return _info(row), f"s3t_{token_id}_{secret}"


def authenticate(workspace: Workspace, presented: str) -> TokenInfo | None:
    """The token's record if ``presented`` is a valid, unrevoked token; else ``None``. The
    secret is compared in constant time, and an unknown id costs the same comparison."""
    return _check(workspace.registry().token, presented)


def _check(find: Callable[[str], TokenRow | None], presented: str) -> TokenInfo | None:
    match = _TOKEN.fullmatch(presented)
    row = find(match.group(1)) if match else None
    secret = match.group(2) if match else ""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    expected = row.secret_sha256 if row is not None else _DUMMY
    if not hmac.compare_digest(digest, expected) or row is None or row.revoked is not None:
        return None
    return _info(row)


class TokenCache:
    """The workspace's tokens held in memory, so that checking a request's token reads
    nothing from the workspace (a busy service checks one per request). It is as current
    as its last :meth:`refresh`, which reads them with ``load`` (from the workspace, or
    from what a deletion authority last sent a prediction replica): the HTTP service
    refreshes it every 0.1 s, at once after it creates or revokes a token itself, and
    before refusing a token it does not know (one created a moment ago elsewhere)."""

    def __init__(self, load: Callable[[], Iterable[TokenRow]]) -> None:
        self._load = load
        self._rows: dict[str, TokenRow] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the tokens again."""
        self._rows = {row.id: row for row in self._load()}

    def rows(self) -> list[TokenRow]:
        """The tokens held (hashed; never a secret)."""
        return list(self._rows.values())

    def knows(self, presented: str) -> bool:
        """Whether ``presented`` names a token id this cache holds."""
        match = _TOKEN.fullmatch(presented)
        return match is not None and match.group(1) in self._rows

    def authenticate(self, presented: str) -> TokenInfo | None:
        """As :func:`authenticate`, from memory."""
        return _check(self._rows.get, presented)


def list_tokens(workspace: Workspace) -> list[TokenInfo]:
    """Every token, revoked ones included."""
    return [_info(r) for r in workspace.registry().tokens()]


def revoke_token(workspace: Workspace, token_id: str) -> TokenInfo:
    """Revoke a token by id (or by name, when the name is unique)."""
    rows = workspace.registry().tokens()
    matches = [r for r in rows if r.id == token_id] or [r for r in rows if r.name == token_id]
    if len(matches) != 1:
        raise UnknownTokenError(
            f"no single token with id or name {token_id!r}; see `s3t token list`"
        )
    workspace.registry().revoke_token(matches[0].id)
    row = workspace.registry().token(matches[0].id)
    assert row is not None
    return _info(row)


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.scopes, row.created, row.revoked)
