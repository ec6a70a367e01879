"""What the service reads and writes: request bodies, the JSON response, and the
conversions between them and the library's inputs and outputs.

Each request field's description is its API documentation (it shows in ``/docs``). Shapes
are checked here; meaning (an empty list, an unknown id) is checked by the library, whose
errors the service maps to status codes."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from s3t.core.jsonable import jsonable
from s3t.data.images import stack_images
from s3t.errors import InvalidRequestError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Body):
    """Inputs to classify (or score, for regression) with the served models."""

    inputs: list[str | list[Any]] = Field(
        description=(
            "Text workspaces: texts, or [text, pair] pairs (all of one kind). Image "
            "workspaces: images as nested lists of pixel values, shape (n, H, W[, C]); "
            "integers in 0..255 are read as 8-bit pixels."
        ),
        examples=[["a fine film", "a dull plot"]],
    )
    aggregate: Literal["mean-logits", "mean-probs", "vote"] = Field(
        "mean-logits",
        description="How the live shards' outputs are combined: mean of logits (the "
        "paper's choice), mean of probabilities, or majority vote.",
    )


class GenerateRequest(_Body):
    """Prompts for a language-model workspace."""

    prompts: list[str] = Field(
        description="Prompts; each gets one greedy response.",
        examples=[["What is the capital of France?"]],
    )
    max_new_tokens: int = Field(
        32,
        ge=1,
        description="Most tokens generated per prompt (at most the service's max_new_tokens "
        "and the model's positions).",
    )


class ForgetRequest(_Body):
    """Samples to forget now."""

    ids: list[StrictStr | StrictInt] = Field(
        default_factory=list,
        description="Sample ids (strings, or integers meaning their decimal string). "
        "If any id is unknown nothing changes and the response is 404 naming them.",
        examples=[["r0007", 42]],
    )
    subjects: list[StrictStr | StrictInt] = Field(
        default_factory=list,
        description="Data subjects: every sample of each is forgotten, in the same "
        "transaction as the ids. An unknown subject changes nothing (404).",
        examples=[["user-42"]],
    )


class TokenRequest(_Body):
    """A new access token."""

    scopes: list[Literal["predict", "read", "forget", "admin"]] = Field(
        description="What the token may do: predict; read (status, samples, audit, receipts, "
        "verify, metrics); forget; admin (everything, retraining and tokens).",
        examples=[["predict", "read"]],
    )
    name: str = Field("", max_length=100, description="A name to recognise it by.")


class RetrainRequest(_Body):
    """Bring truncated sequences back to full depth."""

    shards: list[int] | None = Field(
        None,
        description="Only these shards (null: every shard). Only with wait=true: the "
        "background retrainer heals the shards its policy selects.",
    )
    wait: bool = Field(
        True,
        description="true: retrain now and answer with each stage's outcome. false: hand "
        "the work to the background retrainer (started if none runs) and answer 202 at once.",
    )


class S3TJSONResponse(JSONResponse):
    """JSON with non-finite floats written as ``null`` (JSON has no NaN or Infinity)."""

    def render(self, content: Any) -> bytes:
        """Encode ``content`` compactly as UTF-8 JSON."""
        return json.dumps(
            jsonable(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")


def image_array(inputs: list[Any]) -> np.ndarray:
    """Return images sent as nested lists as one (n, H, W[, C]) array (uint8 when every
    pixel is an integer in 0..255, as stored images are)."""
    if not inputs:
        raise InvalidRequestError("image inputs must be a non-empty list of images, got []")
    return stack_images(inputs, [str(i) for i in range(len(inputs))], "inputs")
