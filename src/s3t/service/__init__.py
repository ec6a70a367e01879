"""The HTTP face of s3t: a FastAPI service over one workspace (the ``serve`` extra).

``app_for_workspace("ws")`` opens a workspace and returns its app (run it with uvicorn, or
with ``s3t serve -w ws``); ``create_app(system)`` serves a system that is already open.
Imported lazily, so that the settings can be read without FastAPI installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s3t.service.app import app_for_workspace, create_app
    from s3t.service.errors import ERROR_STATUS, status_for

__all__ = ["ERROR_STATUS", "app_for_workspace", "create_app", "status_for"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        home = "errors" if name in ("ERROR_STATUS", "status_for") else "app"
        value = getattr(importlib.import_module(f"s3t.service.{home}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3t.service' has no attribute {name!r}")
