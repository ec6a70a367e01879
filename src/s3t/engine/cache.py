"""Exact caching of frozen lower layers.

With blocks trained top-down, every layer below the block of the current stage still has
zero LoRA, so its output is the *base* model's, whatever the shard, sequence or stage. The
base model's input to each block's lowest layer is therefore computed once per sample and
reused by every stage that trains that block; the forward pass then starts there.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch

from s3t.engine.blocks import BlockModel
from s3t.engine.features import FeatureStore
from s3t.engine.settings import Family

log = logging.getLogger(__name__)


class ActivationCache:
    """Base-model hidden states entering chosen layers, per sample row of a feature store.

    Rows are computed a *group* at a time (the caller's groups, e.g. one per slice; all
    rows form one group by default): a group's rows are sorted by (length, sample id) and
    run in fixed-size batches. A cached value therefore depends only on its group's rows,
    never on which stages ran before in this process, so a stage trained in a long-lived
    worker sees the same bits as the same stage trained from scratch in a fresh process
    (or a Ray worker holding just that shard). Whether to cache at all is decided once,
    from the size of the whole store, for the same reason.
    """

    def __init__(
        self,
        engine: BlockModel,
        store: FeatureStore,
        layers: Iterable[int],
        groups: Mapping[str, Hashable] | None = None,
        batch_size: int = 64,
        max_bytes: int = 6 * 2**30,
    ) -> None:
        self.engine = engine
        self.store = store
        self.batch_size = batch_size
        self.layers = sorted({layer for layer in layers if layer > 0})
        self._data: dict[int, dict[int, torch.Tensor]] = {layer: {} for layer in self.layers}
        self._group_of = [groups.get(sid) if groups else None for sid in store.ids]
        self._members: dict[Hashable, list[int]] = {}
        for row, group in enumerate(self._group_of):
            self._members.setdefault(group, []).append(row)
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
        """Compute every cached layer's input for the groups of ``rows`` not cached yet."""
        top = self._data[self.layers[-1]]
        groups = dict.fromkeys(self._group_of[r] for r in rows if r not in top)
        for group in groups:
            members = self._members[group]
            order = sorted(
                members, key=lambda r: (int(self.store.lengths([r])[0]), self.store.ids[r])
            )
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                states = self.engine.hidden_states_at(self.store.collate(chunk), self.layers)
                image = self.store.family is Family.IMAGE
                lengths = self.store.lengths(chunk)
                for layer in self.layers:
                    for i, row in enumerate(chunk):
                        width = states[layer].shape[1] if image else int(lengths[i])
                        self._data[layer][row] = states[layer][i, :width].clone()

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
