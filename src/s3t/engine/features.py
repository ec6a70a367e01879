"""Model inputs: samples encoded once (tokens, pixels, instruction/response labels), padded
per batch only as far as the batch's longest sample, and batches planned by length so that
little padding is computed at all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from s3t.data.examples import Examples
from s3t.engine.loading import Backbone
from s3t.engine.settings import Family
from s3t.errors import DataError

IGNORE_INDEX = -100


class FeatureStore:
    """Encoded inputs of a set of samples, addressable by row or by sample id."""

    def __init__(
        self,
        backbone: Backbone,
        ids: Sequence[str],
        *,
        text: Sequence[str] | None = None,
        text_pair: Sequence[str] | None = None,
        image: np.ndarray | None = None,
        prompt: Sequence[str] | None = None,
        response: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
        regression: bool = False,
    ) -> None:
        self.ids = list(ids)
        self.row_of = {sid: i for i, sid in enumerate(self.ids)}
        self.family = backbone.anatomy.family
        self._backbone = backbone
        self._tokens: list[torch.Tensor] = []
        self._token_types: list[torch.Tensor] | None = None
        self._lm_labels: list[torch.Tensor] | None = None
        self._image: np.ndarray | None = None
        if self.family is Family.IMAGE:
            if image is None:
                raise DataError("an image model needs image inputs")
            self._image = np.asarray(image)
            self._lengths = np.ones(len(self.ids), dtype=np.int64)
        elif self.family is Family.CAUSAL_LM:
            if prompt is None:
                raise DataError("a causal LM needs instruction prompts")
            self._encode_instructions(prompt, response)
        else:
            if text is None:
                raise DataError("a text classifier needs text inputs")
            self._encode_text(text, text_pair)
        if self.family is not Family.IMAGE:
            self._lengths = np.array([len(t) for t in self._tokens], dtype=np.int64)
        self.labels: torch.Tensor | None = None
        if labels is not None:
            dtype = torch.float32 if regression else torch.int64
            self.labels = torch.as_tensor(np.asarray(labels), dtype=dtype)

    @classmethod
    def from_examples(cls, backbone: Backbone, examples: Examples) -> FeatureStore:
        """Encode a whole :class:`Examples` split."""
        return cls(
            backbone,
            examples.ids,
            text=examples.text,
            text_pair=examples.text_pair,
            image=examples.image,
            prompt=examples.prompt,
            response=examples.response,
            labels=examples.labels,
            regression=examples.task == "regression",
        )

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Sequence[str]) -> list[int]:
        """Return the rows of sample ids."""
        try:
            return [self.row_of[sid] for sid in ids]
        except KeyError as exc:
            raise DataError(f"sample id {exc.args[0]!r} has no encoded features") from None

    def lengths(self, rows: Sequence[int]) -> np.ndarray:
        """Return the token count of each row (1 for images)."""
        return self._lengths[np.asarray(rows, dtype=np.int64)]

    def collate(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Return one batch: inputs padded to the longest row, plus ``labels`` if known."""
        batch: dict[str, torch.Tensor] = {}
        if self._image is not None:
            batch["pixel_values"] = self._pixels(self._image[np.asarray(rows)])
        else:
            pad = self._backbone.tokenizer.pad_token_id if self._backbone.tokenizer else 0
            batch["input_ids"] = _pad([self._tokens[r] for r in rows], int(pad))
            batch["attention_mask"] = _pad([torch.ones_like(self._tokens[r]) for r in rows], 0)
            if self._token_types is not None:
                batch["token_type_ids"] = _pad([self._token_types[r] for r in rows], 0)
            if self._lm_labels is not None:
                batch["labels"] = _pad([self._lm_labels[r] for r in rows], IGNORE_INDEX)
        if self.labels is not None and "labels" not in batch:
            batch["labels"] = self.labels[list(rows)]
        return batch

    # ----- encoding ----------------------------------------------------------------------
    def _encode_text(self, text: Sequence[str], text_pair: Sequence[str] | None) -> None:
        tokenizer = self._require_tokenizer()
        encoded = tokenizer(
            list(text),
            list(text_pair) if text_pair is not None else None,
            truncation=True,
            max_length=self._backbone.spec.max_length,
        )
        self._tokens = [torch.tensor(ids, dtype=torch.int64) for ids in encoded["input_ids"]]
        if (
            "token_type_ids" in encoded
            and getattr(self._backbone.model.config, "type_vocab_size", 0) > 1
        ):
            self._token_types = [
                torch.tensor(t, dtype=torch.int64) for t in encoded["token_type_ids"]
            ]

    def _encode_instructions(self, prompt: Sequence[str], response: Sequence[str] | None) -> None:
        tokenizer = self._require_tokenizer()
        limit = self._backbone.spec.max_length
        eos = tokenizer.eos_token_id
        prompts = tokenizer(list(prompt))["input_ids"]
        self._tokens = []
        if response is None:  # generation inputs: the prompt only
            self._tokens = [torch.tensor(p[-limit:], dtype=torch.int64) for p in prompts]
            return
        answers = tokenizer(list(response), add_special_tokens=False)["input_ids"]
        self._lm_labels = []
        for p, a in zip(prompts, answers, strict=True):
            # keep the response (at least one token of it) and the end of the prompt, which
            # holds "### Response:"; generation truncates prompts from the left the same way
            answer = (a + ([eos] if eos is not None else []))[: max(1, limit // 2)]
            prompt = p[-(limit - len(answer)) :]
            ids = prompt + answer
            labels = [IGNORE_INDEX] * len(prompt) + answer
            self._tokens.append(torch.tensor(ids, dtype=torch.int64))
            self._lm_labels.append(torch.tensor(labels, dtype=torch.int64))

    def _require_tokenizer(self) -> Any:
        if self._backbone.tokenizer is None:
            raise DataError("this model has no tokenizer; text inputs cannot be encoded")
        return self._backbone.tokenizer

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        config = self._backbone.model.config
        x = torch.tensor(np.asarray(images))  # a copy: stored images may be read-only
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        if x.ndim != 4:
            raise DataError(
                f"images must be (n, H, W) or (n, H, W, C), got shape {tuple(images.shape)}"
            )
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        if images.dtype == np.uint8:
            x = x / 255.0
        channels = int(getattr(config, "num_channels", x.shape[1]))
        if x.shape[1] != channels:
            x = (
                x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
                if channels != 1
                else x.mean(dim=1, keepdim=True)
            )
        size = int(getattr(config, "image_size", x.shape[-1]))
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(_per_channel(self._backbone.image_mean, channels)).view(1, -1, 1, 1)
        std = torch.tensor(_per_channel(self._backbone.image_std, channels)).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)[:channels]


def _pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def plan_batches(
    lengths: np.ndarray,
    batch_size: int,
    generator: torch.Generator | None,
    bucket: bool = True,
) -> list[np.ndarray]:
    """Return batches of positions into ``lengths``: shuffled by ``generator`` (kept in order
    when ``None``), and with ``bucket`` grouped by length within windows of 64 batches, so
    that padding stays small while batch order stays random."""
    n = len(lengths)
    order = (
        torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    )
    if bucket:
        window = batch_size * 64
        chunks = [order[i : i + window] for i in range(0, n, window)]
        order = (
            np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
            if chunks
            else order
        )
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if bucket and generator is not None and len(batches) > 1:
        perm = torch.randperm(len(batches), generator=generator).numpy()
        batches = [batches[i] for i in perm]
    return batches
