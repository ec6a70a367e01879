"""The public face of an S3T system. The CLI, the HTTP service and the experiments use this
class and nothing under it.

    system = S3T.fit("ws", dataset, config)      # partition, select sequences, train
    system.forget(["user-42-review-7"])          # exact, durable, instant
    system.predict(["a fine film"])              # served by the longest valid prefixes
    system.retrain()                             # heal truncated sequences
    system.verify()                              # an auditor's check, read-only
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3t.core.selection import Served
from s3t.data.examples import Dataset, Examples
from s3t.engine.settings import Compute
from s3t.errors import InvalidRequestError, RegistryDamagedError, UnknownRequestError
from s3t.system.access import (
    TokenCache,
    TokenInfo,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)
from s3t.system.config import S3TConfig
from s3t.system.forget import Receipt, forget, stored_receipt
from s3t.system.maintenance import Janitor
from s3t.system.reports import (
    ExportInfo,
    Generation,
    Health,
    SampleInfo,
    SequenceInfo,
    StageInfo,
    Status,
    audit_events,
    compute_health,
    compute_status,
    sample_infos,
    sequence_infos,
    stage_infos,
)
from s3t.system.serving.requests import Prediction, PredictRequest
from s3t.system.store.database import DB_NAME
from s3t.system.store.workspace import Workspace
from s3t.system.training.background import BackgroundRetrainer, RetrainPolicy
from s3t.system.verify import VerifyReport, damaged_registry_report, verify, verify_receipt

if TYPE_CHECKING:  # the model stack (torch) loads only when a model is needed
    from s3t.system.serving.batcher import Batcher
    from s3t.system.serving.membership import MembershipReport
    from s3t.system.serving.scoring import Evaluator
    from s3t.system.serving.server import ModelInfo, Server
    from s3t.system.training.reference import ReferenceReport
    from s3t.system.training.trainer import EventCallback, Executor, StageOutcome, Trainer

log = logging.getLogger(__name__)

_MAX_INT = 2**63 - 1
#: the longest a caller who asked to wait for a deletion's erasure waits, by default
ERASE_WAIT_SECONDS = 30.0


class S3T:
    """An S3T system backed by a workspace folder."""

    def __init__(self, workspace: Workspace, compute: Compute | None = None) -> None:
        self._ws = workspace
        self._compute = compute or Compute()
        self.background: BackgroundRetrainer | None = None
        self._server: Server | None = None
        self._trainer: Trainer | None = None
        self._janitor: Janitor | None = None
        self._lock = threading.Lock()

    # ----- what it is --------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The workspace folder."""
        return self._ws.root

    @property
    def config(self) -> S3TConfig:
        """The system's configuration."""
        return self._ws.config

    @property
    def task(self) -> str:
        """classification, regression or instruction."""
        return self._ws.task

    @property
    def modality(self) -> str:
        """text, image or instruction."""
        return self._ws.modality

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """The class names of a classification task (``None``: plain indices)."""
        return self._ws.label_names

    @property
    def read_only(self) -> bool:
        """Whether the workspace can only be read here."""
        return self._ws.read_only

    @property
    def has_test_split(self) -> bool:
        """Whether a held-out test split is stored."""
        return self._ws.registry().has_test_split()

    @property
    def model_loaded(self) -> bool:
        """Whether the model is in memory (serving loads it on first use), and the
        background retrainer's too when one runs."""
        served = self._server is not None and self._server.loaded
        return served and (self.background is None or self.background.prepared)

    def load_model(self) -> None:
        """Load the model into memory now (serving otherwise loads it on first use), and
        the background retrainer's model instance when one runs."""
        _ = self._serving.engine
        if self.background is not None:
            self.background.prepare()

    @property
    def _serving(self) -> Server:
        if self._server is None:
            with self._lock:
                if self._server is None:
                    from s3t.system.serving.server import Server
                    from s3t.system.serving.source import WorkspaceSource

                    self._server = Server(WorkspaceSource(self._ws), compute=self._compute)
        return self._server

    def _get_trainer(self, on_event: EventCallback | None = None) -> Trainer:
        from s3t.system.training.trainer import Trainer

        if self._trainer is None:
            self._trainer = Trainer(self._ws, on_event, compute=self._compute)
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
        compute: Compute | None = None,
    ) -> S3T:
        """Create (or resume) a workspace and train every sequence of every shard to full
        depth (see :func:`~s3t.system.creation.create_and_train`). ``num_labels`` is taken
        from the data when the config leaves it at 0; ``compute`` chooses the device and the
        activation cache's memory budget."""
        from s3t.system.creation import create_and_train

        compute = compute or Compute()
        ws, trainer = create_and_train(
            workspace,
            dataset,
            config,
            risk=risk,
            on_event=on_event,
            compute=compute,
            remote=executor is not None,
        )
        system = cls(ws, compute)
        system._trainer = trainer
        trainer.complete(executor=executor)
        return system

    @classmethod
    def open(
        cls,
        workspace: str | Path,
        retrain_policy: RetrainPolicy | None = None,
        *,
        read_only: bool = False,
        compute: Compute | None = None,
    ) -> S3T:
        """Open an existing workspace. Unless ``read_only``, leftovers of crashed processes
        are removed and pending erasures finished first; with a policy, truncated shards
        are retrained in the background. ``compute`` chooses the device serving and
        retraining use (a workspace trained on a GPU serves on a CPU and vice versa)."""
        system = cls(Workspace(workspace, read_only=read_only), compute)
        if not system._ws.read_only:
            system._ws.sweep()
        if retrain_policy is not None:
            system.start_background(retrain_policy)
        return system

    def start_background(
        self,
        policy: RetrainPolicy,
        on_event: EventCallback | None = None,
        executor: Executor | None = None,
    ) -> BackgroundRetrainer:
        """Start healing shards in a background thread according to ``policy`` (training
        in this process, or with ``executor`` elsewhere, e.g. in Ray tasks)."""
        if self.background is None:
            slices = self.config.layout.slices
            if policy.min_depth is not None and policy.min_depth > slices:
                raise InvalidRequestError(
                    f"the retrain policy's min_depth must be at most the workspace's {slices} "
                    f"slices, got {policy.min_depth!r}"
                )
            self.background = BackgroundRetrainer(
                self._ws, policy, on_event, self._compute, executor
            )
            self.background.start()
        return self.background

    def retrain_in_background(self) -> dict[str, Any]:
        """Hand every truncated sequence to the background retrainer (starting one that
        brings every shard back to full depth, if none runs): whether one was started, its
        policy, and the shards it has to heal now."""
        with self._lock:
            started = self.background is None
            if started:
                slices = self.config.layout.slices
                self.start_background(RetrainPolicy(min_depth=slices, when_dead=True))
            background = self.background
        assert background is not None
        if not started:
            background.wake()
        return {
            "accepted": True,
            "started": started,
            "policy": asdict(background.policy),
            "due": background.due(),
        }

    def start_maintenance(self, sweep_seconds: float = 60.0) -> Janitor:
        """Keep the workspace clean from a daemon thread: pending erasures finished as soon
        as possible, crash leftovers swept every ``sweep_seconds``."""
        with self._lock:
            if self._janitor is None:
                self._janitor = Janitor(self._ws, sweep_seconds)
                self._janitor.start()
        return self._janitor

    def close(self) -> None:
        """Stop background work, finish a pending erasure, release the database connection."""
        if self.background is not None:
            self.background.stop()
            self.background = None
        if self._janitor is not None:
            self._janitor.stop()
            self._janitor = None
        if self._trainer is not None:
            self._trainer.close()
        if not self._ws.read_only:
            self._ws.erase_pending()
        self._ws.close()

    def __enter__(self) -> S3T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- serving -----------------------------------------------------------------------------
    def predict(self, inputs: Any, aggregate: str = "mean-logits") -> Prediction:
        """Predict for texts, (text, pair) tuples or images (an array (n, H, W[, C]))."""
        return self._serving.predict(inputs, aggregate)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> Generation:
        """Generate responses (causal LM workspaces), averaging shards' next-token logits;
        with, for each prompt, the models that produced it."""
        outputs, served = self._serving.generate(prompts, max_new_tokens)
        return Generation(outputs, served)

    def served(self, budget: int | None = None) -> list[Served]:
        """Which (shard, sequence, depth) answers requests now; ``budget`` views the system
        as if only each shard's first B sequences had been trained."""
        return self._serving.selection(budget)

    def validate_request(self, inputs: Any, aggregate: str = "mean-logits") -> PredictRequest:
        """Check a prediction request (inputs and aggregation) without touching the model."""
        return self._serving.request(inputs, aggregate)

    def batcher(
        self,
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queued: int = 4096,
        chunk: int = 32,
        on_batch: Callable[[int, int], None] | None = None,
        admit: Callable[[list[Prediction]], list[Any] | None] | None = None,
    ) -> Batcher:
        """A worker that answers concurrent prediction requests in batches (see
        :mod:`s3t.system.serving.batcher`; ``admit`` orders answers with other events);
        ``stop()`` it when done."""
        from s3t.system.serving.batcher import Batcher

        return Batcher(self._serving, max_batch, max_wait, max_queued, chunk, on_batch, admit)

    def still_valid(self, served: Sequence[Served]) -> bool:
        """Whether none of these served stages was purged (or quarantined) since chosen."""
        return self._serving.still_valid(served)

    def answering(self) -> dict[str, Any]:
        """Who answers predictions, for their provenance: nothing to add for a system in
        one process (a prediction replica names itself and its serving epoch)."""
        return {}

    def artifact_bytes(self, artifacts: Sequence[str]) -> dict[str, bytes]:
        """The files of these stage artifacts, each checked against its sha256 (a corrupted
        one is quarantined and raises :class:`~s3t.errors.ArtifactError`)."""
        return {a: self._ws.read_artifact(a) for a in artifacts}

    # ----- access tokens (the HTTP service's) -----------------------------------------------
    def create_token(self, scopes: Sequence[str], name: str = "") -> tuple[TokenInfo, str]:
        """A new access token for the service: its record, and the token (shown once)."""
        return create_token(self._ws, scopes, name)

    def tokens(self) -> list[TokenInfo]:
        """Every access token, revoked ones included (never a secret)."""
        return list_tokens(self._ws)

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke an access token (by id, or by a unique name) now."""
        return revoke_token(self._ws, token_id)

    def authenticate(self, token: str) -> TokenInfo | None:
        """The record of a valid, unrevoked token (constant-time check), else ``None``."""
        return authenticate(self._ws, token)

    def token_cache(self) -> TokenCache:
        """The tokens in memory, to check many requests' tokens without reading the
        workspace each time (see :class:`~s3t.system.access.TokenCache`)."""
        return TokenCache(lambda: self._ws.registry().tokens())

    def served_depths(self, budget: int | None = None) -> dict[int, int]:
        """Every shard's served depth now (0 = dead), optionally in a budget-B view."""
        chosen = self._ws.serving(budget)
        return {k: chosen[k].depth if k in chosen else 0 for k in range(self.config.layout.shards)}

    def evaluate(
        self,
        examples: Examples | None = None,
        aggregate: str = "mean-logits",
        budget: int | None = None,
    ) -> dict[str, float]:
        """Score the served system on labelled examples (default: the stored test split):
        accuracy for classification, MSE for regression."""
        from s3t.system.serving.scoring import evaluate

        data = examples if examples is not None else self._ws.examples("eval_data")
        return evaluate(self._serving, data, aggregate, budget)

    def evaluator(self, examples: Examples | None = None) -> Evaluator:
        """A scorer that evaluates several budget views and deletion states of this
        system on the same examples, computing each served model's outputs once."""
        from s3t.system.serving.scoring import Evaluator

        data = examples if examples is not None else self._ws.examples("eval_data")
        return Evaluator(self._serving, data)

    def membership(
        self, deleted: Examples, retained: Examples, unseen: Examples
    ) -> MembershipReport:
        """Loss-threshold membership inference against the served system."""
        from s3t.system.serving.membership import membership_report

        return membership_report(self._serving, deleted, retained, unseen)

    # ----- deletion and healing ----------------------------------------------------------------
    def forget(
        self,
        ids: Sequence[str | int] = (),
        *,
        subjects: Sequence[str | int] = (),
        wait_erasure: bool | float = False,
    ) -> Receipt:
        """Delete samples — and every sample of some data subjects — now, in one
        transaction (exact, durable); see :mod:`s3t.system.forget`. Returns once the
        deletion is committed and no longer served; the erasure of the samples' bytes
        from every file follows in the background within milliseconds, and the receipt
        says ``pending`` until it is ``complete``. ``wait_erasure`` waits for it before
        returning: ``True`` for up to :data:`ERASE_WAIT_SECONDS`, or a number of
        seconds (a reader of an older snapshot in another process can hold it up)."""
        receipt = forget(self._ws, ids, subjects)
        if receipt.deleted:
            # this process's trainers let go of the cached features of those samples (their
            # spill files go with the erasure; this closes the mappings), and the
            # background retrainer gives up a stage this deletion makes moot
            groups = self._ws.registry().deleted_groups([receipt.request_id])
            if self._trainer is not None:
                self._trainer.drop_cached(groups)
            if self.background is not None:
                died = any(
                    receipt.served_depth_before.get(k, 0) > 0 and d == 0
                    for k, d in receipt.served_depth_after.items()
                )
                self.background.note_deletion(receipt.at, groups, died)
        if receipt.erasure == "pending":
            self.start_maintenance().wake()
            if wait_erasure is not False:
                bound = ERASE_WAIT_SECONDS if wait_erasure is True else float(wait_erasure)
                receipt = self.finish_erasure(receipt.request_id, bound)
        return receipt

    def forget_subject(self, subjects: Sequence[str | int]) -> Receipt:
        """Delete every sample of these data subjects (a person's request) in one
        transaction; the receipt lists every sample removed."""
        return self.forget(subjects=subjects)

    def finish_erasure(self, request_id: str, timeout: float = ERASE_WAIT_SECONDS) -> Receipt:
        """Wait up to ``timeout`` seconds for a deletion's erasure to complete; return its
        receipt with the state reached."""
        deadline = time.monotonic() + timeout
        if not self._ws.read_only:
            self.start_maintenance().wake()
        while not self.erasure_complete(request_id) and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.receipt(request_id)

    def erasure_complete(self, request_id: str) -> bool:
        """Whether no byte of this deletion's samples is left in any file of the workspace
        (False while its erasure is pending)."""
        return request_id not in self._ws.registry().pending_erasures()

    def receipt(self, request_id: str) -> Receipt:
        """The receipt of an earlier deletion request, with its erasure state now."""
        found = stored_receipt(self._ws, str(request_id))
        if found is None:
            raise UnknownRequestError(
                f"no deletion request {request_id!r} in this workspace; see `s3t audit`"
            )
        return found

    def retrain(
        self,
        shards: Sequence[int] | None = None,
        on_event: EventCallback | None = None,
        executor: Executor | None = None,
        stop: threading.Event | None = None,
    ) -> list[StageOutcome]:
        """Bring every truncated sequence (of some shards) back to full depth, now; the
        sequence closest to full depth first, so served depth returns early. ``stop`` ends
        it after the current stage; ``executor`` trains elsewhere (e.g. on Ray)."""
        chosen = [self._check_shard(k) for k in shards] if shards is not None else None
        return self._get_trainer(on_event).complete(chosen, stop=stop, executor=executor)

    # ----- reports ------------------------------------------------------------------------------
    def status(self) -> Status:
        """Per-shard depths, live shards, deletions, quarantined stages, pending erasures and
        the expected number of further deletions before service failure."""
        background: dict[str, Any] = {}
        if self.background is not None:
            outcomes = self.background.outcomes
            background = {
                "running": True,
                "stages_retrained": sum(o.status == "trained" for o in outcomes),
                "stages_discarded": sum(o.status == "discarded" for o in outcomes),
                "error": str(self.background.error) if self.background.error else None,
            }
        return compute_status(self._ws, background)

    def health(self) -> Health:
        """Cheap liveness from the registry alone (never loads the model)."""
        return compute_health(self._ws)

    def verify(self, recompute: bool = False) -> VerifyReport:
        """Recompute every exactness invariant from one snapshot (read-only); see
        :mod:`s3t.system.verify`. ``recompute`` also retrains every served model from
        scratch and checks it against what is served (slow: one training per shard)."""
        report = verify(self._ws)
        if recompute:
            for served in self._serving.selection():
                result = self.reference(served.shard, served.seq, served.depth)
                report.checked["recomputed_stages"] = report.checked.get(
                    "recomputed_stages", 0
                ) + len(result.stages)
                for stage in result.stages:
                    if not stage.within_tolerance:
                        report.flag(
                            "recompute",
                            f"shard {served.shard} sequence {served.seq} stage {stage.stage}: "
                            f"retrained from scratch it differs by {stage.max_abs_diff:.3g}",
                        )
        return report

    @staticmethod
    def verify_damaged(workspace: str | Path, error: RegistryDamagedError) -> VerifyReport:
        """The auditor's report on a workspace whose registry is too damaged to open (the
        ``error`` opening it raised): what SQLite's page check of the file finds."""
        return damaged_registry_report(error, Path(workspace) / DB_NAME)

    def verify_receipt(self, receipt: Receipt | dict[str, Any]) -> VerifyReport:
        """Prove one deletion is still in force and the log up to it was not rewritten."""
        if isinstance(receipt, dict):
            receipt = Receipt.from_dict(receipt)
        return verify_receipt(self._ws, receipt)

    def reference(
        self, shard: int, seq: int | None = None, depth: int | None = None
    ) -> ReferenceReport:
        """Retrain a sequence's stages from scratch on the samples its slices hold now and
        compare them with the recorded ones (default: the sequence shard ``shard`` serves,
        at its served depth)."""
        from s3t.system.training.reference import reference

        self._check_shard(shard)
        if seq is None:
            chosen = [s for s in self._serving.selection() if s.shard == shard]
            if not chosen:
                raise InvalidRequestError(f"shard {shard} serves no model; give a sequence")
            seq, depth = chosen[0].seq, chosen[0].depth if depth is None else depth
        return reference(
            self._ws, shard, self._check_index(seq, "sequence"), depth, compute=self._compute
        )

    def samples(
        self, shard: int | None = None, include_deleted: bool = False, subject: str | None = None
    ) -> list[SampleInfo]:
        """Sample ids with shard, slice, subject and deletion time (of a shard or subject)."""
        if shard is not None:
            self._check_shard(shard)
        return sample_infos(self._ws, shard, include_deleted, subject)

    def sequences(self, shard: int | None = None) -> list[SequenceInfo]:
        """Every sequence (of one shard) with its valid depth and stage artifacts."""
        if shard is not None:
            self._check_shard(shard)
        return sequence_infos(self._ws, shard)

    def stages(self) -> list[StageInfo]:
        """Every stage artifact, where it sits, what it was trained on and how it went."""
        return stage_infos(self._ws)

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        """Return the audit log (append-only, hash-chained), oldest first."""
        return audit_events(self._ws, self._check_index(since, "since"))

    def model_info(self) -> ModelInfo:
        """The backbone: family, layers, parameter count and size, positions."""
        return self._serving.model_info()

    def backup(self, dest: str | Path) -> Path:
        """Copy the workspace (registry by SQLite's online backup, artifact files) to a
        new folder, consistent even while this or other processes serve and forget."""
        return self._ws.backup(Path(dest))

    def export(self, shard: int, out_dir: str | Path) -> ExportInfo:
        """Write the model ``shard`` serves now as a standard PEFT adapter folder."""
        out = Path(out_dir)
        _check_export_folder(out)
        self._check_shard(shard)
        try:
            served, path = self._serving.export(shard, out)
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot write the export to {out}: {exc.strerror or exc} (the folder may hold a "
                "partial export); choose another --out, or free space"
            ) from None
        return ExportInfo(path, served.shard, served.seq, served.depth, list(served.artifacts))

    # ----- checks ------------------------------------------------------------------------------
    def _check_shard(self, shard: int) -> int:
        count = self.config.layout.shards
        if (
            isinstance(shard, bool)
            or not isinstance(shard, (int, np.integer))
            or not 0 <= shard < count
        ):
            raise InvalidRequestError(f"shard must be in 0..{count - 1}, got {shard!r}")
        return int(shard)

    @staticmethod
    def _check_index(value: int, name: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 0 <= value <= _MAX_INT
        ):
            raise InvalidRequestError(f"{name} must be an integer in 0..{_MAX_INT}, got {value!r}")
        return int(value)


def _check_export_folder(out: Path) -> None:
    """Refuse an export folder that cannot be created or written, before any work: one
    that is a file, lies under a file, or sits where this process may not write."""
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(f"--out {out} is a file; give a folder to export into")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidRequestError(
            f"--out {out} lies under {existing}, which is a file; give a folder to export into"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidRequestError(
            f"--out {out}: {existing} cannot be written by this process; choose a folder "
            "you can write"
        )
