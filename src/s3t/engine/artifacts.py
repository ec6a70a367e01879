"""Stage artifacts: one immutable safetensors file per stage, holding block i's LoRA
tensors and the head of stage i, with a JSON manifest in the file's metadata (what it was
trained on, with which settings, by which library versions)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from s3t.errors import ArtifactError

if TYPE_CHECKING:
    from s3t.engine.blocks import State

_BLOCK = "block::"
_HEAD = "head::"


def encode_stage(block: State, head: State, manifest: dict[str, Any]) -> bytes:
    """Return the safetensors bytes of one stage snapshot."""
    from safetensors.torch import save

    tensors = {_BLOCK + k: v.contiguous() for k, v in block.items()}
    tensors.update({_HEAD + k: v.contiguous() for k, v in head.items()})
    return save(tensors, metadata={"s3t": json.dumps(manifest, sort_keys=True)})


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` durably (temp file, fsync, rename) and return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return hashlib.sha256(data).hexdigest()


def read_stage(
    path: Path, expected_sha256: str | None = None
) -> tuple[State, State, dict[str, Any]]:
    """Load (block, head, manifest) from a stage file, checking its sha256 when given."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"artifact file missing: {path}; run `s3t verify`") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ArtifactError(
            f"artifact {path.name} does not match its recorded sha256 (corrupted); "
            "run `s3t verify`, then `s3t retrain` to rebuild it"
        )
    return decode_stage(data)


def decode_stage(data: bytes) -> tuple[State, State, dict[str, Any]]:
    """Return (block, head, manifest) of stage artifact bytes."""
    from safetensors.torch import load

    try:
        header_size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as exc:
        raise ArtifactError(f"not a readable stage artifact: {exc}") from exc
    if "s3t" not in meta:
        raise ArtifactError("not an s3t stage artifact (no manifest)")
    block = {k[len(_BLOCK) :]: v for k, v in tensors.items() if k.startswith(_BLOCK)}
    head = {k[len(_HEAD) :]: v for k, v in tensors.items() if k.startswith(_HEAD)}
    return block, head, dict(json.loads(meta["s3t"]))


def read_manifest(path: Path) -> dict[str, Any]:
    """Return the manifest stored in a stage file's metadata."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc}") from exc
    if "s3t" not in meta:
        raise ArtifactError(f"{path} is not an s3t stage artifact (no manifest)")
    return dict(json.loads(meta["s3t"]))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the trained tensors."""
    import peft
    import torch
    import transformers

    from s3t import __version__

    return {
        "s3t": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
