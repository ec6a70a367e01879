"""Optional parts of s3t and the extras that install them: ``pip install s3t`` gives the
library and the CLI (train, forget, verify, …); the HTTP service, the experiments and
plots, and Ray training each come with an extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from s3t.errors import MissingExtraError

#: extra -> what it adds (the README's table)
EXTRAS = {
    "serve": "the HTTP service and its client (`s3t serve`, s3t.Client)",
    "experiments": "the demo, the paper's experiments, benchmarks and plots",
    "ray": "training shards in parallel on a Ray cluster",
    "models": "the packaged all-MiniLM-L6-v2 model (builtin:minilm)",
}


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]!r}, which comes with an extra: "
            f"pip install 's3t[{extra}]'"
        ) from None
