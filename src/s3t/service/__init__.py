"""The HTTP face of s3t: a FastAPI service over one workspace.

``app_for_workspace("ws")`` opens a workspace and returns its app (run it with uvicorn, or
with ``s3t serve -w ws``); ``create_app(system)`` serves a system that is already open.
"""

from s3t.service.app import ERROR_STATUS, app_for_workspace, create_app, status_for

__all__ = ["ERROR_STATUS", "app_for_workspace", "create_app", "status_for"]
