"""The public face of an S3T system: fit, open, predict, forget, status, verify, retrain,
export, samples, audit.

    system = S3T.fit("ws", dataset, config)      # partition, select sequences, train
    system.forget(["user-42-review-7"])          # exact, durable, instant
    system.predict(["a fine film"])              # served by the longest valid prefixes
    system.retrain()                             # heal truncated sequences
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3t.core.simulate import expected_requests_to_cover
from s3t.data.examples import Dataset, Examples
from s3t.engine.settings import Family
from s3t.errors import ArtifactError, DataError, InvalidRequestError, ServiceUnavailableError
from s3t.system.background import BackgroundRetrainer, RetrainPolicy
from s3t.system.config import S3TConfig
from s3t.system.forget import Receipt, forget, remove_stale_files
from s3t.system.verify import VerifyReport, verify
from s3t.system.workspace import Workspace

if TYPE_CHECKING:  # the model stack (torch) loads only when a model is needed
    from s3t.system.serving import Prediction, Served, Server
    from s3t.system.training import EventCallback, Executor, StageOutcome, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardStatus:
    """One shard: its sequences' depths and what it serves."""

    shard: int
    served_depth: int
    serving_sequence: int | None
    depths: list[int]
    sequences: list[list[int]]
    live_samples: int
    deleted_samples: int


@dataclass(frozen=True)
class Status:
    """The state of a whole system."""

    slices: int
    budget: int
    shards: list[ShardStatus]
    live_shards: int
    deletion_requests: int
    deleted_samples: int
    estimated_deletions_left: float
    sequences_below_full_depth: int
    degraded: bool
    failed: bool
    background: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def check_fits(family: Family, train: Examples) -> None:
    """Raise :class:`DataError` unless the model family can learn this data's task."""
    expected = {"text": Family.ENCODER, "image": Family.IMAGE, "instruction": Family.CAUSAL_LM}
    if expected[train.modality] is not family:
        raise DataError(
            f"the data holds {train.modality} inputs ({train.task}) but the model is a {family} "
            f"model; use a {expected[train.modality]} model"
        )


class S3T:
    """An S3T system backed by a workspace folder."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.background: BackgroundRetrainer | None = None
        self._server: Server | None = None
        self._trainer: Trainer | None = None

    @property
    def server(self) -> Server:
        """The serving side (loads the model on first use)."""
        if self._server is None:
            from s3t.system.serving import Server

            self._server = Server(self.workspace)
        return self._server

    def _get_trainer(self, on_event: EventCallback | None = None) -> Trainer:
        from s3t.system.training import Trainer

        if self._trainer is None:
            self._trainer = Trainer(self.workspace, on_event)
        elif on_event is not None:
            self._trainer.on_event = on_event
        return self._trainer

    # ----- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        workspace: str | Path,
        dataset: Dataset,
        config: S3TConfig,
        *,
        risk: dict[str, float] | None = None,
        on_event: EventCallback | None = None,
        executor: Executor | None = None,
    ) -> S3T:
        """Create (or resume) a workspace and train every sequence of every shard to full
        depth. ``num_labels`` is taken from the data when the config leaves it at 0."""
        if config.model.num_labels == 0 and dataset.train.task != "instruction":
            config = replace(
                config, model=replace(config.model, num_labels=dataset.train.num_labels)
            )
        from s3t.engine.loading import load_backbone
        from s3t.system.training import Trainer

        backbone = load_backbone(config.model, seed=config.layout.seed)  # fail before any writing
        check_fits(backbone.anatomy.family, dataset.train)
        ws = Workspace.create(workspace, config, dataset, risk)
        system = cls(ws)
        system._trainer = Trainer(ws, on_event, backbone=None if executor else backbone)
        system._trainer.complete(executor=executor)
        return system

    @classmethod
    def open(cls, workspace: str | Path, retrain_policy: RetrainPolicy | None = None) -> S3T:
        """Open an existing workspace; with a policy, retrain in the background."""
        system = cls(Workspace(workspace))
        remove_stale_files(system.workspace)
        if retrain_policy is not None:
            system.start_background(retrain_policy)
        return system

    def start_background(
        self, policy: RetrainPolicy, on_event: EventCallback | None = None
    ) -> BackgroundRetrainer:
        """Start healing shards in a background thread according to ``policy``."""
        if self.background is None:
            self.background = BackgroundRetrainer(self.workspace, policy, on_event)
            self.background.start()
        return self.background

    def close(self) -> None:
        """Stop background work."""
        if self.background is not None:
            self.background.stop()
            self.background = None

    def __enter__(self) -> S3T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- serving ---------------------------------------------------------------------------
    def predict(self, inputs: Any, aggregate: str = "mean-logits") -> Prediction:
        """Predict for texts, (text, pair) tuples or images; see :class:`Server`."""
        return self.server.predict(inputs, aggregate)

    def generate(self, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Generate responses (causal LM workspaces), averaging shards' next-token logits."""
        return self.server.generate(prompts, max_new_tokens)[0]

    def evaluate(
        self,
        examples: Examples | None = None,
        aggregate: str = "mean-logits",
        budget: int | None = None,
    ) -> dict[str, float]:
        """Score the served system on labelled examples (default: the stored test split):
        accuracy for classification, MSE for regression. ``budget`` scores the system as if
        only each shard's first B sequences had been trained."""
        from s3t.engine.features import FeatureStore
        from s3t.system.serving import aggregate_logits

        data = examples if examples is not None else self.workspace.examples("eval_data")
        if data.task == "instruction":
            raise InvalidRequestError("evaluate() scores classifiers and regressors")
        store = FeatureStore.from_examples(self.server.engine.backbone, data)
        served, logits = self.server.shard_logits(store, budget=budget)
        labels, _ = aggregate_logits(list(logits.values()), aggregate, data.task)
        truth = np.asarray(data.labels)
        out: dict[str, float] = {"samples": float(len(data)), "shards_serving": float(len(served))}
        if data.task == "regression":
            out["mse"] = float(np.mean((np.asarray(labels) - truth) ** 2))
        else:
            out["accuracy"] = float(np.mean(np.asarray(labels) == truth))
        return out

    # ----- deletion and healing ------------------------------------------------------------------
    def forget(self, ids: Any) -> Receipt:
        """Delete samples now (exact, durable); see :mod:`s3t.system.forget`."""
        receipt = forget(self.workspace, ids)
        if self.background is not None and receipt.truncated:
            self.background.wake()
        return receipt

    def retrain(
        self,
        shards: list[int] | None = None,
        on_event: EventCallback | None = None,
        executor: Executor | None = None,
        stop: threading.Event | None = None,
    ) -> list[StageOutcome]:
        """Bring every truncated sequence (of some shards) back to full depth, now; the
        sequence closest to full depth first, so served depth returns early. ``stop`` ends
        it after the current stage; ``executor`` trains elsewhere (e.g. on Ray)."""
        count = self.workspace.config.layout.shards
        bad = [k for k in shards or [] if not 0 <= k < count]
        if bad:
            raise InvalidRequestError(f"shards must be in 0..{count - 1}, got {bad!r}")
        return self._get_trainer(on_event).complete(shards, stop=stop, executor=executor)

    # ----- reports --------------------------------------------------------------------------
    def status(self) -> Status:
        """Per-shard depths, live shards, deletions so far and the expected number of further
        deletions (uniform over live samples, no retraining) before service failure."""
        registry = self.workspace.registry()
        db = registry.db
        config = self.workspace.config
        rows = registry.sequences()
        counts = {
            (k, s): (live, dead)
            for k, s, live, dead in db.execute(
                "SELECT shard, slice, sum(deleted_at IS NULL), sum(deleted_at IS NOT NULL) "
                "FROM samples GROUP BY shard, slice"
            )
        }
        total_live = sum(live for live, _ in counts.values())
        shards = []
        cells: set[tuple[int, int]] = set()
        for k in range(config.layout.shards):
            mine = [r for r in rows if r.shard == k]
            best = max(mine, key=lambda r: (r.depth, -r.seq)) if mine else None
            served_depth = best.depth if best else 0
            cells |= {(k, r.perm[0]) for r in mine if r.depth >= 1}
            shards.append(
                ShardStatus(
                    shard=k,
                    served_depth=served_depth,
                    serving_sequence=best.seq if best and served_depth > 0 else None,
                    depths=[r.depth for r in mine],
                    sequences=[list(r.perm) for r in mine],
                    live_samples=sum(
                        counts.get((k, s), (0, 0))[0] for s in range(config.layout.slices)
                    ),
                    deleted_samples=sum(
                        counts.get((k, s), (0, 0))[1] for s in range(config.layout.slices)
                    ),
                )
            )
        probs = [counts.get(c, (0, 0))[0] / total_live for c in sorted(cells)] if total_live else []
        live_shards = sum(1 for s in shards if s.served_depth > 0)
        requests = db.execute("SELECT count(*) FROM deletions").fetchone()[0]
        background: dict[str, Any] = {}
        if self.background is not None:
            background = {
                "running": True,
                "stages_retrained": sum(o.status == "trained" for o in self.background.outcomes),
                "stages_discarded": sum(o.status == "discarded" for o in self.background.outcomes),
                "error": str(self.background.error) if self.background.error else None,
            }
        return Status(
            slices=config.layout.slices,
            budget=config.layout.budget,
            shards=shards,
            live_shards=live_shards,
            deletion_requests=int(requests),
            deleted_samples=sum(s.deleted_samples for s in shards),
            estimated_deletions_left=expected_requests_to_cover(probs) if cells else 0.0,
            sequences_below_full_depth=sum(r.depth < config.layout.slices for r in rows),
            degraded=any(s.served_depth < config.layout.slices for s in shards),
            failed=live_shards == 0,
            background=background,
        )

    def verify(self) -> VerifyReport:
        """Recompute every exactness invariant; see :mod:`s3t.system.verify`."""
        return verify(self.workspace)

    def samples(
        self, shard: int | None = None, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Return sample ids with their shard, slice and deletion time."""
        where = []
        args: list[Any] = []
        if shard is not None:
            where.append("shard=?")
            args.append(shard)
        if not include_deleted:
            where.append("deleted_at IS NULL")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.workspace.registry().db.execute(
            f"SELECT id, shard, slice, deleted_at FROM samples {clause} ORDER BY shard, slice, id",
            args,
        )
        return [{"id": i, "shard": k, "slice": s, "deleted_at": d} for i, k, s, d in rows]

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        """Return the audit log (append-only), oldest first."""
        return [
            {"seq": seq, "at": at, "event": event, "detail": detail}
            for seq, at, event, detail in self.workspace.registry().audit_log(since)
        ]

    def served(self) -> list[Served]:
        """Which (shard, sequence, depth) answers requests now."""
        return self.server.selection()

    def export(self, shard: int, out_dir: str | Path) -> Path:
        """Write the model ``shard`` serves now as a standard PEFT adapter folder."""
        from s3t.engine.export import export_adapter

        for _ in range(5):
            chosen = [s for s in self.server.selection() if s.shard == shard]
            if not chosen:
                raise InvalidRequestError(
                    f"shard {shard} serves no model (dead or unknown); see `s3t status`"
                )
            served = chosen[0]
            try:
                blocks, head = self.server.stages(served)
            except ArtifactError:  # purged by a deletion meanwhile: choose again
                continue
            if self.server.still_valid([served]):  # as of now no deletion touched it
                break
        else:
            raise ServiceUnavailableError(
                "deletions kept invalidating the served model during the export; retry it"
            )
        provenance = {
            "shard": served.shard,
            "sequence": served.seq,
            "depth": served.depth,
            "artifacts": list(served.artifacts),
            "config": self.workspace.config.to_dict(),
        }
        return export_adapter(
            self.server.engine,
            blocks,
            head,
            out_dir,
            provenance,
            seed=self.workspace.config.layout.seed,
        )
