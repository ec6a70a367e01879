"""Scoring examples with the served system, in one place: accuracy or MSE for evaluation,
per-sample losses for membership inference, and an evaluator that scores several budget
views and deletion states while computing each served model's outputs once."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from s3t.core.selection import Served
from s3t.data.examples import Examples
from s3t.engine.features import FeatureStore
from s3t.errors import InvalidRequestError, ServiceUnavailableError
from s3t.system.serving.server import Server, aggregate_logits


def served_outputs(
    server: Server, examples: Examples, aggregate: str = "mean-logits", budget: int | None = None
) -> tuple[list[Served], list[Any], np.ndarray]:
    """(served models, labels, scores) of the served system on ``examples``."""
    store = FeatureStore.from_examples(server.engine.backbone, examples)
    served, logits = server.shard_logits(store, budget=budget)
    labels, scores = aggregate_logits(list(logits.values()), aggregate, examples.task)
    return served, labels, scores


def evaluate(
    server: Server, examples: Examples, aggregate: str = "mean-logits", budget: int | None = None
) -> dict[str, float]:
    """Accuracy (classification) or MSE (regression) of the served system on ``examples``."""
    if examples.task == "instruction":
        raise InvalidRequestError("evaluate() scores classifiers and regressors")
    served, labels, _ = served_outputs(server, examples, aggregate, budget)
    truth = np.asarray(examples.labels)
    out: dict[str, float] = {"samples": float(len(examples)), "shards_serving": float(len(served))}
    if examples.task == "regression":
        out["mse"] = float(np.mean((np.asarray(labels) - truth) ** 2))
    else:
        out["accuracy"] = float(np.mean(np.asarray(labels) == truth))
    return out


def sample_losses(server: Server, examples: Examples, aggregate: str = "mean-logits") -> np.ndarray:
    """Each sample's loss under the served system (cross-entropy of the aggregated
    probabilities; squared error for regression)."""
    if examples.labels is None:
        raise InvalidRequestError("membership inference needs labelled examples")
    _, _, scores = served_outputs(server, examples, aggregate)
    truth = np.asarray(examples.labels)
    if examples.task == "regression":
        return np.asarray((scores[:, 0] - truth) ** 2, dtype=np.float64)
    probs = np.clip(scores[np.arange(len(truth)), truth.astype(np.int64)], 1e-12, 1.0)
    return np.asarray(-np.log(probs), dtype=np.float64)


class Evaluator:
    """Accuracy of a system on fixed examples, for any budget view and at any moment; a
    served model's logits are computed once and reused while it stays served."""

    def __init__(self, server: Server, examples: Examples) -> None:
        if examples.task != "classification":
            raise InvalidRequestError("the evaluator scores classifiers")
        self.server = server
        self.examples = examples
        self.store = FeatureStore.from_examples(server.engine.backbone, examples)
        self._memo: dict[tuple[str, ...], torch.Tensor] = {}

    def accuracy(self, budget: int | None = None) -> float | None:
        """Accuracy of the budget-B view now, or ``None`` when every shard is dead."""

        def logits(served: list[Served]) -> torch.Tensor:
            missing = [s for s in served if s.artifacts not in self._memo]
            if missing:
                computed = self.server.logits_for(missing, self.store, 128)
                for s in missing:
                    self._memo[s.artifacts] = computed[s.shard]
            return torch.stack([self._memo[s.artifacts] for s in served]).mean(0)

        try:
            _, mean = self.server.consistently(logits, budget)
        except ServiceUnavailableError:
            return None
        return float((mean.argmax(-1).numpy() == np.asarray(self.examples.labels)).mean())
