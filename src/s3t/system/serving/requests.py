"""What a prediction request and its answer are: validated before any model work, and
torch-free, so that the service and the client can use them too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from s3t.core.selection import Served
from s3t.errors import InvalidRequestError

AGGREGATIONS = ("mean-logits", "mean-probs", "vote")


@dataclass
class Prediction:
    """Predictions for a batch of inputs and which models produced them (``scores`` is
    empty when a service answers with labels only)."""

    labels: list[Any]
    scores: list[list[float]]
    served: list[Served]
    aggregate: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "labels": self.labels,
            "scores": self.scores,
            "aggregate": self.aggregate,
            "served": [asdict(s) for s in self.served],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prediction:
        """Rebuild a prediction from :meth:`to_dict` output."""
        served = [
            Served(s["shard"], s["seq"], s["depth"], tuple(s["artifacts"])) for s in data["served"]
        ]
        return cls(list(data["labels"]), list(data.get("scores") or []), served, data["aggregate"])


@dataclass(frozen=True)
class PredictRequest:
    """A validated prediction request: texts, (text, pair) pairs, or images."""

    kind: str  # text | pair | image
    aggregate: str
    texts: tuple[str, ...] | None = None
    pairs: tuple[str, ...] | None = None
    images: Any = None  # an array (n, H, W[, C])

    def __len__(self) -> int:
        return len(self.images) if self.kind == "image" else len(self.texts or ())

    @classmethod
    def parse(cls, modality: str, inputs: Any, aggregate: str = "mean-logits") -> PredictRequest:
        """Check a request's shape and content; raise :class:`InvalidRequestError` naming
        what is wrong."""
        if aggregate not in AGGREGATIONS:
            raise InvalidRequestError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        if modality == "image":
            try:
                images = np.asarray(inputs)
            except ValueError as exc:
                raise InvalidRequestError(f"image inputs must all have one shape: {exc}") from None
            if images.ndim not in (3, 4) or len(images) == 0 or images.dtype.kind not in "biuf":
                raise InvalidRequestError(
                    "image inputs must be a non-empty numeric array (n, H, W[, C]), got shape "
                    f"{images.shape} of {images.dtype}"
                )
            return cls("image", aggregate, images=images)
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or len(inputs) == 0:
            raise InvalidRequestError(
                "text inputs must be a non-empty list of strings (or of (text, pair) tuples)"
            )
        for i, x in enumerate(inputs):
            for text in x if isinstance(x, (tuple, list)) else [x]:
                if isinstance(text, str) and not _is_unicode(text):
                    raise InvalidRequestError(
                        f"input {i} is not valid Unicode text (it holds an unpaired surrogate)"
                    )
        if all(isinstance(x, str) for x in inputs):
            return cls("text", aggregate, texts=tuple(inputs))
        if all(
            isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(y, str) for y in x)
            for x in inputs
        ):
            return cls(
                "pair",
                aggregate,
                texts=tuple(x[0] for x in inputs),
                pairs=tuple(x[1] for x in inputs),
            )
        bad = next(
            x
            for x in inputs
            if not isinstance(x, str)
            and not (
                isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(y, str) for y in x)
            )
        )
        raise InvalidRequestError(
            f"text inputs must be strings or (text, pair) tuples, got {bad!r}"
        )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
