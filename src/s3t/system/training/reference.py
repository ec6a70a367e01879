"""From-scratch references: retrain a sequence's stages on the samples its slices hold now,
in a fresh model instance, through the same canonical computation as the trainer, and
compare them with what the workspace serves.

On the machine (CPU kernels, thread count) that trained a stage, its reference is
bit-identical: the same tensors, bit for bit, and with the same s3t and library versions
and device type (recorded in the manifest) the same artifact bytes, hence the same artifact
id. Elsewhere the tensors agree within floating-point tolerance (see README, "Exactness"). Either way a stage that
was trained on a sample that is no longer there cannot match: its tensors depend on it.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from s3t.core.schedule import StageKey
from s3t.engine.artifacts import decode_stage
from s3t.engine.blocks import State
from s3t.engine.loading import Backbone
from s3t.engine.settings import Compute
from s3t.errors import ArtifactError, InvalidRequestError
from s3t.system.store.workspace import Workspace
from s3t.system.training.stage_worker import ShardWork, StageJob, StageWorker

log = logging.getLogger(__name__)

#: stated cross-machine tolerance: |a - b| <= ATOL + RTOL * max|b|, per tensor (measured:
#: up to 1e-5 relative between code paths that pad differently, AVX-512 vs AVX2 kernels)
RTOL = 1e-4
ATOL = 1e-6
#: the same for mixed precision, scaled to the half-precision dtypes' rounding (bf16 keeps
#: 8 bits of mantissa, fp16 11); not measured across devices (no GPU was available)
TOLERANCE = {"fp32": (RTOL, ATOL), "bf16": (2e-2, 1e-4), "fp16": (4e-3, 1e-5)}


@dataclass(frozen=True)
class ReferenceStage:
    """One stage of a reference: the artifact the workspace holds at that position and the
    one recomputed from scratch, and how far their tensors are apart."""

    stage: int
    slices: list[int]
    samples: int
    recorded: str | None
    recomputed: str
    identical: bool  # every tensor bit for bit
    max_abs_diff: float
    within_tolerance: bool
    same_artifact: bool = False  # also the same manifest (versions, device): the same id


@dataclass
class ReferenceReport:
    """A sequence retrained from scratch, stage by stage, next to what is recorded."""

    shard: int
    seq: int
    depth: int
    stages: list[ReferenceStage] = field(default_factory=list)
    blocks: list[State] = field(default_factory=list, repr=False)
    head: State | None = field(default=None, repr=False)

    @property
    def identical(self) -> bool:
        """Every stage bit-identical to the recorded artifact."""
        return all(s.identical for s in self.stages)

    @property
    def within_tolerance(self) -> bool:
        """Every stage within the stated cross-machine tolerance."""
        return all(s.within_tolerance for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (without the tensors)."""
        return {
            "shard": self.shard,
            "seq": self.seq,
            "depth": self.depth,
            "identical": self.identical,
            "within_tolerance": self.within_tolerance,
            "tolerance": {"rtol": RTOL, "atol": ATOL},
            "stages": [asdict(s) for s in self.stages],
        }


def reference(
    workspace: Workspace,
    shard: int,
    seq: int,
    depth: int | None = None,
    backbone: Backbone | None = None,
    compute: Compute | None = None,
) -> ReferenceReport:
    """Retrain stages 1..``depth`` (default: the sequence's valid depth) of sequence ``seq``
    of ``shard`` from scratch on the live samples of their slices, and compare each with
    the artifact the sequence holds at that stage."""
    registry = workspace.registry()
    with registry.reading():
        rows = {r.seq: r for r in registry.sequences(shard)}
        homes = registry.live_homes(shard)
    if seq not in rows:
        raise InvalidRequestError(f"shard {shard} has no sequence {seq}; see `s3t status`")
    row = rows[seq]
    depth = row.depth if depth is None else depth
    if not 0 <= depth <= len(row.perm):
        raise InvalidRequestError(f"depth must be in 0..{len(row.perm)}, got {depth!r}")
    report = ReferenceReport(shard, seq, depth)
    if depth == 0:
        return report
    jobs = [
        StageJob(
            StageKey(shard, row.perm[:d]),
            sorted(s for s, (_, sl) in homes.items() if sl in row.perm[:d]),
        )
        for d in range(1, depth + 1)
    ]
    work = ShardWork(shard, jobs, {}, workspace.examples().subset(sorted(homes)), dict(homes))
    compute = compute or Compute()
    if compute.device == "auto":  # where the recorded stages were trained, if it is here
        compute = replace(compute, device=_recorded_device(workspace, row.positions))
    rtol, atol = TOLERANCE[workspace.config.train.precision]
    with ExitStack() as stack:
        # spill into the workspace, where a deletion erases it; a read-only one cannot hold it
        scratch = (
            Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3t-reference-")))
            if workspace.read_only
            else workspace.files.cache_folder
        )
        worker = StageWorker(
            workspace.config,
            backbone,
            replace(compute, cache_dir=scratch),
            None if workspace.read_only else workspace.spill_guard,
        )
        stack.callback(worker.close)
        for d, trained in enumerate(worker.run(work), start=1):
            recorded = row.positions[d - 1] if d <= len(row.positions) else None
            worst, ok, equal = _difference(
                workspace, recorded, trained.block, trained.head, rtol, atol
            )
            report.stages.append(
                ReferenceStage(
                    stage=d,
                    slices=list(row.perm[:d]),
                    samples=len(trained.samples),
                    recorded=recorded,
                    recomputed=trained.artifact,
                    identical=equal,
                    max_abs_diff=worst,
                    within_tolerance=ok,
                    same_artifact=recorded == trained.artifact,
                )
            )
            report.blocks.append(trained.block)
            report.head = trained.head
    return report


def _recorded_device(workspace: Workspace, positions: tuple[str, ...]) -> str:
    """The device type the first recorded stage was trained on, if this machine has one
    (stages trained on a GPU are recomputed on a GPU); else ``auto``."""
    import torch

    try:
        _, _, manifest = decode_stage(workspace.files.read(positions[0]))
    except (ArtifactError, IndexError, OSError):
        return "auto"
    kind = str(manifest.get("device", "cpu"))
    if kind == "cpu" or (kind == "cuda" and torch.cuda.is_available()):
        return kind
    if kind == "mps" and torch.backends.mps.is_available():
        return kind
    log.warning("stages were trained on %s, which is not here: recomputing on another device", kind)
    return "auto"


def _difference(
    workspace: Workspace,
    recorded: str | None,
    block: State,
    head: State,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> tuple[float, bool, bool]:
    """(largest absolute difference, within tolerance, bit-identical) of recorded vs
    recomputed tensors."""
    if recorded is None:
        return float("inf"), False, False
    try:
        theirs_block, theirs_head, _ = decode_stage(workspace.files.read(recorded))
    except ArtifactError:
        return float("inf"), False, False
    worst, ok, equal = 0.0, True, True
    for mine, theirs in ((block, theirs_block), (head, theirs_head)):
        if set(mine) != set(theirs):
            return float("inf"), False, False
        for name, tensor in mine.items():
            other = theirs[name]
            if tensor.shape != other.shape:
                return float("inf"), False, False
            gap = float((tensor.double() - other.double()).abs().max()) if tensor.numel() else 0.0
            scale = float(other.double().abs().max()) if other.numel() else 0.0
            worst = max(worst, gap)
            ok &= gap <= atol + rtol * scale
            equal &= tensor.dtype == other.dtype and bool(torch.equal(_bits(tensor), _bits(other)))
    return worst, ok, equal


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes (so that -0.0 differs from 0.0 and NaNs compare)."""
    return tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8)


def stage_tensors(workspace: Workspace, artifact: str) -> tuple[State, State]:
    """(block, head) tensors of a recorded artifact (sha256-checked)."""
    block, head, _ = decode_stage(workspace.read_artifact(artifact))
    return block, head
