"""Serving: for every live shard, the sequence with the longest valid prefix; shards'
outputs aggregated (mean logits by default). Dead shards do not vote; with no live shard
there is no answer (``ServiceUnavailableError``), never a silent guess.

The state is read from the serving source (the workspace's registry, or a replica's
published state) on every call, so a deletion or a swapped-in retrain takes effect on the
next request. Artifact tensors are cached by content hash: a deletion changes which
artifacts are chosen and invalidates nothing else.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from s3t.core.selection import Served
from s3t.engine.artifacts import decode_stage
from s3t.engine.blocks import BlockModel, State
from s3t.engine.compute import resolve_device
from s3t.engine.features import FeatureStore, plan_batches
from s3t.engine.loading import load_backbone
from s3t.engine.settings import Compute
from s3t.errors import ArtifactError, InvalidRequestError, ServiceUnavailableError
from s3t.system.serving.requests import Prediction, PredictRequest
from s3t.system.serving.source import ServingSource

#: characters of a text kept per token of max_length, before tokenisation
CHARS_PER_TOKEN = 128
_ATTEMPTS = 20  # selections tried per request (each retry follows a purge or a quarantine)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    """The backbone a workspace fine-tunes."""

    name_or_path: str
    family: str
    layers: int
    parameters: int
    parameter_bytes: int
    positions: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


class Server:
    """Assembles and runs the served models of a serving source (one model instance,
    locked)."""

    def __init__(
        self, source: ServingSource, cache_size: int = 256, compute: Compute | None = None
    ) -> None:
        self.source = source
        self.compute = compute or Compute()
        self._engine: BlockModel | None = None
        self._lock = threading.RLock()
        self._tensors: OrderedDict[str, tuple[State, State]] = OrderedDict()
        self._cache_size = cache_size
        #: artifacts that failed to load and could not be quarantined (read-only workspace)
        self._bad: set[str] = set()

    @property
    def loaded(self) -> bool:
        """Whether the model instance has been loaded."""
        return self._engine is not None

    @property
    def engine(self) -> BlockModel:
        """The model instance, loaded on first use."""
        with self._lock:
            if self._engine is None:
                config = self.source.config
                device = resolve_device(self.compute.device)
                precision = config.train.precision
                backbone = load_backbone(
                    config.model, seed=config.layout.seed, device=device, precision=precision
                )
                self._engine = BlockModel(
                    backbone, config.lora, config.layout.slices, device, precision
                )
            return self._engine

    def selection(self, budget: int | None = None) -> list[Served]:
        """Return the model every live shard serves now: the longest servable prefix (the
        lowest sequence number among equals). ``budget`` limits the choice to each shard's
        first B sequences: selectors nest, so that is exactly the system trained with
        budget B."""
        chosen = self.source.selection(budget, self._bad)
        if not chosen:
            raise ServiceUnavailableError(
                "every shard has lost every model: no prediction can be served until "
                "retraining restores one (run `s3t retrain`)"
            )
        return [chosen[k] for k in sorted(chosen)]

    def tensors(self, artifact: str) -> tuple[State, State]:
        """Return (block, head) of an artifact (LRU-cached, sha256-checked on load; a
        corrupted file is quarantined and raises :class:`ArtifactError`)."""
        with self._lock:
            if artifact in self._tensors:
                self._tensors.move_to_end(artifact)
                return self._tensors[artifact]
        try:
            data = self.source.read_artifact(artifact)
        except ArtifactError:
            if not self.source.may_quarantine(artifact):
                self._bad.add(artifact)
            raise
        block, head, _ = decode_stage(data)
        with self._lock:
            self._tensors[artifact] = (block, head)
            while len(self._tensors) > self._cache_size:
                self._tensors.popitem(last=False)
        return block, head

    def keep_tensors(self, artifacts: Collection[str]) -> None:
        """Drop the cached tensors of every artifact but these (stages no longer served)."""
        with self._lock:
            for artifact in [a for a in self._tensors if a not in artifacts]:
                del self._tensors[artifact]
            self._bad &= set(artifacts)

    def stages(self, served: Served) -> tuple[list[State], State | None]:
        """Return the block tensors of stages 1..depth and the head of stage depth."""
        blocks: list[State] = []
        head: State | None = None
        for artifact in served.artifacts:
            block, head = self.tensors(artifact)
            blocks.append(block)
        return blocks, head

    def assemble(self, served: Served) -> None:
        """Load a served model into the model instance (call under the lock)."""
        self.engine.assemble(*self.stages(served))

    def shard_logits(
        self, store: FeatureStore, batch_size: int = 64, budget: int | None = None
    ) -> tuple[list[Served], dict[int, torch.Tensor]]:
        """Return the served models and each one's logits for every row of ``store``."""
        return self.consistently(lambda served: self.logits_for(served, store, batch_size), budget)

    def consistently(
        self, compute: Callable[[list[Served]], T], budget: int | None = None
    ) -> tuple[list[Served], T]:
        """Run ``compute`` on the models served now and return (models, result), checked
        after computing: if a deletion purged any stage used meanwhile, or a stage file
        turned out corrupted (it is quarantined), the selection is made again, so nothing
        trained on a sample is served once its deletion has been acknowledged and a bad
        file costs one sequence, not the service."""
        for _ in range(_ATTEMPTS):
            served = self.selection(budget)
            try:
                result = compute(served)
            except ArtifactError:
                continue
            if self.still_valid(served):
                return served, result
        raise ServiceUnavailableError(
            "deletions kept invalidating the served models during this request; retry it"
        )

    def still_valid(self, served: Sequence[Served]) -> bool:
        """Whether none of the served stages has been purged (or quarantined) meanwhile."""
        return not self.source.unusable_among(a for s in served for a in s.artifacts)

    def logits_for(
        self, served: list[Served], store: FeatureStore, batch_size: int = 64
    ) -> dict[int, torch.Tensor]:
        """Return each given served model's logits for every row of ``store``.

        The base model's lower layers are shared: per batch, the base hidden states
        entering each served model's lowest trained layer are computed once, and each
        shard's model runs only from there (exact: below that layer it *is* the base)."""
        with self._lock:
            return self._logits(served, store, batch_size)

    def _logits(
        self, served: list[Served], store: FeatureStore, batch_size: int
    ) -> dict[int, torch.Tensor]:
        engine = self.engine
        engine.set_eval()
        top_down = engine.lora.order == "top-down"
        starts = {s.shard: engine.start_layer(s.depth) if top_down else 0 for s in served}
        parts: dict[int, list[torch.Tensor]] = {s.shard: [] for s in served}
        order: list[np.ndarray] = plan_batches(
            store.lengths(range(len(store))), batch_size, None, bucket=True
        )
        with torch.no_grad():
            for positions in order:
                batch = store.collate(positions.tolist())
                needed = sorted({k for k in starts.values() if k > 0})
                hidden = engine.hidden_states_at(batch, needed) if needed else {}
                for s in served:
                    self.assemble(s)
                    start = starts[s.shard]
                    parts[s.shard].append(engine.forward(batch, start, hidden.get(start)).cpu())
        inverse = np.argsort(np.concatenate(order)) if order else np.array([], dtype=np.int64)
        return {k: torch.cat(v)[torch.as_tensor(inverse)] for k, v in parts.items()}

    def predict(
        self, inputs: Any, aggregate: str = "mean-logits", batch_size: int = 64
    ) -> Prediction:
        """Predict labels (or values, for regression) for raw inputs: texts, (text, pair)
        tuples, or an image array (n, H, W[, C])."""
        return self.predict_many([self.request(inputs, aggregate)], batch_size)[0]

    def request(self, inputs: Any, aggregate: str = "mean-logits") -> PredictRequest:
        """Validate a prediction request without touching the model."""
        if self.source.task == "instruction":
            raise InvalidRequestError("this workspace holds a language model: use generate()")
        return PredictRequest.parse(self.source.modality, inputs, aggregate)

    def predict_many(
        self, requests: Sequence[PredictRequest], batch_size: int = 64
    ) -> list[Prediction]:
        """Answer several validated requests of one kind with one pass per served model:
        the same models (one consistent choice) answer all of them."""
        if not requests:
            return []
        kinds = {r.kind for r in requests}
        if len(kinds) != 1:
            raise InvalidRequestError(f"requests of one kind only, got {sorted(kinds)}")
        store = self._store_for(requests)
        served, logits = self.shard_logits(store, batch_size)
        out, start = [], 0
        for r in requests:
            rows = slice(start, start + len(r))
            start += len(r)
            part = [logits[s.shard][rows] for s in served]
            labels, scores = aggregate_logits(part, r.aggregate, self.source.task)
            names = self.source.label_names
            if self.source.task == "classification" and names:
                shown: list[Any] = [names[i] for i in labels]
            else:
                shown = list(labels)
            out.append(Prediction(shown, scores.tolist(), served, r.aggregate))
        return out

    def _store_for(self, requests: Sequence[PredictRequest]) -> FeatureStore:
        backbone = self.engine.backbone
        n = sum(len(r) for r in requests)
        ids = [str(i) for i in range(n)]
        if requests[0].kind == "image":
            images = np.concatenate([np.asarray(r.images) for r in requests])
            return FeatureStore(backbone, ids, image=images)
        # a text is cut before tokenisation: characters past this bound could not fit in
        # max_length tokens anyway (a token covers at most ~100 characters of a word)
        bound = CHARS_PER_TOKEN * backbone.spec.max_length
        texts = [t[:bound] for r in requests for t in r.texts or ()]
        pairs = [t[:bound] for r in requests for t in r.pairs or ()] if requests[0].pairs else None
        return FeatureStore(backbone, ids, text=texts, text_pair=pairs)

    def export(self, shard: int, out: Path) -> tuple[Served, Path]:
        """Write the model ``shard`` serves now as a PEFT adapter folder (chosen again if a
        deletion purges it meanwhile)."""
        from s3t.engine.export import export_adapter

        def tensors(selection: list[Served]) -> tuple[Served, list[State], State | None]:
            mine = [s for s in selection if s.shard == shard]
            if not mine:
                raise InvalidRequestError(f"shard {shard} serves no model (dead); see `s3t status`")
            return (mine[0], *self.stages(mine[0]))

        _, (served, blocks, head) = self.consistently(tensors)
        provenance = {
            "shard": served.shard,
            "sequence": served.seq,
            "depth": served.depth,
            "artifacts": list(served.artifacts),
            "config": self.source.config.to_dict(),
        }
        with self._lock:
            path = export_adapter(
                self.engine, blocks, head, out, provenance, seed=self.source.config.layout.seed
            )
        return served, path

    def model_info(self) -> ModelInfo:
        """The backbone: family, layers, parameters (LoRA excluded) and positions."""
        engine = self.engine
        base = [p for n, p in engine.model.named_parameters() if "lora_" not in n]
        return ModelInfo(
            name_or_path=self.source.config.model.name_or_path,
            family=str(engine.family),
            layers=engine.backbone.anatomy.num_layers,
            parameters=sum(p.numel() for p in base),
            parameter_bytes=sum(p.numel() * p.element_size() for p in base),
            positions=model_positions(engine),
        )

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = 32
    ) -> tuple[list[str], list[list[Served]]]:
        """Greedy generation with next-token logits averaged over the live shards; returns
        the responses and, for each, the models that produced it."""
        if self.source.task != "instruction":
            raise InvalidRequestError("generate() needs a workspace holding a causal LM")
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidRequestError("prompts must be a non-empty list of strings")
        engine = self.engine
        limit = model_positions(engine) - 1
        if not 1 <= max_new_tokens <= limit:
            raise InvalidRequestError(
                f"max_new_tokens must be in 1..{limit} (this model has {limit + 1} positions), "
                f"got {max_new_tokens!r}"
            )
        tokenizer: Any = engine.backbone.tokenizer
        outputs: list[str] = []
        provenance: list[list[Served]] = []
        for prompt in prompts:

            def one(chosen: list[Served], prompt: str = prompt) -> str:
                return self._generate_one(chosen, tokenizer, prompt, max_new_tokens)

            served, text = self.consistently(one)
            outputs.append(text)
            provenance.append(served)
        return outputs, provenance

    def _generate_one(
        self, served: list[Served], tokenizer: Any, prompt: str, max_new_tokens: int
    ) -> str:
        engine = self.engine
        positions = model_positions(engine)
        new: list[int] = []
        with self._lock, torch.no_grad():
            engine.set_eval()
            room = min(engine.backbone.spec.max_length, positions - max_new_tokens)
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, -room:]
            for _ in range(max_new_tokens):
                total: torch.Tensor | None = None
                for s in served:
                    self.assemble(s)
                    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                    logits = engine.forward(batch)[0, -1].cpu()
                    total = logits if total is None else total + logits
                assert total is not None
                token = int(torch.argmax(total / len(served)))
                if token == tokenizer.eos_token_id:
                    break
                new.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        return str(tokenizer.decode(new, skip_special_tokens=True))


def model_positions(engine: BlockModel) -> int:
    """How many token positions the model can attend over (its position-embedding size)."""
    config: Any = engine.model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    return 2048


def aggregate_logits(
    per_shard: list[torch.Tensor], how: str, task: str
) -> tuple[list[Any], np.ndarray]:
    """Combine shard outputs: mean of logits, mean of probabilities, or majority vote (ties
    to the lowest class). Returns (labels, scores); for regression the mean value."""
    stacked = torch.stack(per_shard).float()  # (shards, n, C)
    if task == "regression":
        values = stacked.mean(0).squeeze(-1)
        return values.tolist(), values.unsqueeze(-1).numpy()
    if how == "mean-logits":
        scores = torch.softmax(stacked.mean(0), dim=-1)
    elif how == "mean-probs":
        scores = torch.softmax(stacked, dim=-1).mean(0)
    else:
        votes = torch.nn.functional.one_hot(stacked.argmax(-1), stacked.shape[-1]).float()
        scores = votes.mean(0)
    return scores.argmax(-1).tolist(), scores.numpy()
