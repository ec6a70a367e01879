"""The service's settings: who may call it, what a request may ask, and how predictions
are batched. Each is described once; `s3t serve --help` shows the same text."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from s3t.engine.settings import option
from s3t.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServiceSettings:
    """Limits are checked before any work; each refusal names its limit."""

    max_body_bytes: int = option(1 << 20, "Largest request body, in bytes (413 beyond).")
    max_inputs: int = option(256, "Most inputs per predict request (413 beyond).")
    max_chars: int = option(20_000, "Most characters per text input or prompt (413 beyond).")
    max_forget_ids: int = option(10_000, "Most sample ids per forget request (413 beyond).")
    max_new_tokens: int = option(
        512, "Most tokens a generate request may ask for (also capped by the model's positions)."
    )
    max_batch: int = option(64, "Most inputs answered in one batch.")
    max_wait_ms: float = option(5.0, "How long a batch waits for more requests, in milliseconds.")
    max_queued: int = option(
        4096, "Most inputs waiting for the model; beyond, 503 with Retry-After."
    )
    chunk: int = option(
        32, "Inputs a request contributes to each batch (a small request waits one chunk at most)."
    )
    erase_wait: float = option(
        30.0,
        "Longest a forget request asking ?wait=erasure waits for the erasure, in seconds.",
    )
    labels_only: bool = option(
        False,
        "Answer predictions without scores (scores before and after a deletion can reveal "
        "whom it concerned).",
    )
    trusted_hosts: tuple[str, ...] = option(
        LOOPBACK_NAMES, "Host names the service answers to (the Host header); * for any."
    )
    require_tokens: bool = option(
        True, "Refuse requests without a valid bearer token (scopes: predict, read, forget, admin)."
    )

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_inputs",
            "max_chars",
            "max_forget_ids",
            "max_new_tokens",
            "max_batch",
            "max_queued",
            "chunk",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.erase_wait < 0:
            raise ConfigError(f"erase_wait must be >= 0 seconds, got {self.erase_wait!r}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if not self.trusted_hosts:
            raise ConfigError("trusted_hosts must name at least one host (or *)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) is a loopback address or name."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
