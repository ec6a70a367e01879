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

import torch

from s3t.engine.blocks import BlockModel
from s3t.engine.features import FeatureStore
from s3t.engine.settings import Family

log = logging.getLogger(__name__)


class ActivationCache:
    """Base-model hidden states entering chosen layers, per sample row of a feature store.

    Each row is computed alone (a batch of one, no padding), so its cached value depends on
    that sample only, never on which other samples happened to be computed with it: a stage
    trained in a long-lived worker and the same stage trained from scratch in a fresh
    process see the same bits. Whether to cache at all is decided once, from the size of the
    whole store, for the same reason.
    """

    def __init__(
        self,
        engine: BlockModel,
        store: FeatureStore,
        layers: Iterable[int],
        max_bytes: int = 6 * 2**30,
    ) -> None:
        self.engine = engine
        self.store = store
        self.layers = sorted({layer for layer in layers if layer > 0})
        self._data: dict[int, dict[int, torch.Tensor]] = {layer: {} for layer in self.layers}
        self.enabled = bool(self.layers) and self._estimate(range(len(store))) <= max_bytes
        if self.layers and not self.enabled:
            log.info(
                "activation cache off: %d samples would exceed %d bytes", len(store), max_bytes
            )

    def _estimate(self, rows: Iterable[int]) -> int:
        config: Any = self.engine.model.config
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        rows = list(rows)
        if self.store.family is Family.IMAGE:
            tokens = ((int(config.image_size) // int(config.patch_size)) ** 2 + 1) * len(rows)
        else:
            tokens = int(self.store.lengths(rows).sum())
        return 4 * hidden * tokens * len(self.layers)

    def covers(self, layer: int) -> bool:
        """Whether stages starting at ``layer`` can be fed from the cache."""
        return self.enabled and layer in self._data

    def ensure(self, rows: Sequence[int]) -> None:
        """Compute every cached layer's input for the rows not cached yet, one row at a time."""
        top = self._data[self.layers[-1]]
        for row in (r for r in dict.fromkeys(rows) if r not in top):
            states = self.engine.hidden_states_at(self.store.collate([row]), self.layers)
            for layer in self.layers:
                self._data[layer][row] = states[layer][0].clone()

    def batch(self, layer: int, rows: Sequence[int]) -> torch.Tensor:
        """Return the cached inputs of ``layer`` for ``rows``, zero-padded like
        :meth:`FeatureStore.collate` pads the batch (padded positions are masked anyway)."""
        table = self._data[layer]
        tensors = [table[r] for r in rows]
        width = max(t.shape[0] for t in tensors)
        out = tensors[0].new_zeros((len(tensors), width, tensors[0].shape[-1]))
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t
        return out

    @property
    def nbytes(self) -> int:
        """Memory held by the cache."""
        return sum(
            t.numel() * t.element_size() for table in self._data.values() for t in table.values()
        )
