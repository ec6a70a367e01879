"""Exact caching of frozen lower layers.

With blocks trained top-down, every layer below the block of the current stage still has
zero LoRA, so its output is the *base* model's, whatever the shard, sequence or stage. The
base model's input to each block's lowest layer is therefore computed once per sample and
reused by every stage that trains that block; the forward pass then starts there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from s3t.engine.blocks import BlockModel
from s3t.engine.features import FeatureStore
from s3t.engine.settings import Family

log = logging.getLogger(__name__)


class ActivationCache:
    """Base-model hidden states entering chosen layers, per sample row of a feature store."""

    def __init__(
        self,
        engine: BlockModel,
        store: FeatureStore,
        batch_size: int = 64,
        max_bytes: int = 6 * 2**30,
    ) -> None:
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._data: dict[int, dict[int, torch.Tensor]] = {}
        self._bytes = 0

    def fits(self, layers: Iterable[int], rows: Sequence[int]) -> bool:
        """Whether caching ``layers`` for ``rows`` stays within the memory budget."""
        hidden = int(getattr(self.engine.model.config, "hidden_size", 0) or 0)
        if self.store.family is Family.IMAGE:
            config: Any = self.engine.model.config
            tokens = ((int(config.image_size) // int(config.patch_size)) ** 2 + 1) * len(rows)
        else:
            tokens = int(self.store.lengths(rows).sum())
        need = 4 * hidden * tokens * len(set(layers))
        return self._bytes + need <= self.max_bytes

    def ensure(self, layers: Iterable[int], rows: Sequence[int]) -> None:
        """Compute the hidden states of every row not yet cached, for all ``layers`` at once."""
        wanted = sorted({layer for layer in layers if layer > 0})
        if not wanted:
            return
        missing = sorted(
            {r for layer in wanted for r in rows if r not in self._data.get(layer, {})}
        )
        if not missing:
            return
        order = np.asarray(missing)[np.argsort(self.store.lengths(missing), kind="stable")]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size].tolist()
            batch = self.store.collate(chunk)
            states = self.engine.hidden_states_at(batch, wanted)
            lengths = self.store.lengths(chunk)
            for layer in wanted:
                table = self._data.setdefault(layer, {})
                for i, row in enumerate(chunk):
                    if row not in table:
                        value = (
                            states[layer][i, : int(lengths[i])].clone()
                            if self.store.family is not Family.IMAGE
                            else states[layer][i].clone()
                        )
                        table[row] = value
                        self._bytes += value.numel() * value.element_size()
        log.debug("activation cache: %d rows, %.1f MB", len(missing), self._bytes / 2**20)

    def batch(self, layer: int, rows: Sequence[int]) -> torch.Tensor:
        """Return the cached inputs of ``layer`` for ``rows``, zero-padded like
        :meth:`FeatureStore.collate` pads the batch (padded positions are masked anyway)."""
        table = self._data[layer]
        tensors = [table[r] for r in rows]
        if tensors[0].ndim == 2 and self.store.family is not Family.IMAGE:
            width = max(t.shape[0] for t in tensors)
            out = tensors[0].new_zeros((len(tensors), width, tensors[0].shape[-1]))
            for i, t in enumerate(tensors):
                out[i, : t.shape[0]] = t
            return out
        return torch.stack(tensors)

    @property
    def nbytes(self) -> int:
        """Memory held by the cache."""
        return self._bytes
