"""Exact caching of frozen lower layers, computed one canonical way.

With blocks trained top-down, every layer below the block of the current stage still has
zero LoRA, so its output is the *base* model's, whatever the shard, sequence or stage. The
base model's input to each block's lowest layer is therefore computed once per sample and
reused by every stage that trains that block; the forward pass then starts there.

Floating-point results can depend on how a sample is batched and padded (attention kernels
differ in the last bits between padded lengths on some CPUs). So cached values are computed
one canonical way: a *group* at a time (the caller's groups: one per (shard, slice)), its
live members sorted by (length, sample id), in fixed-size batches. A cached value then
depends only on its group's current members, never on what ran before in this process, so
a long-lived trainer, a Ray worker holding one shard and a from-scratch reference all
compute the same bits. A group whose members change (a deletion) is recomputed.
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
    """Base-model hidden states entering chosen layers, per sample id."""

    def __init__(
        self,
        engine: BlockModel,
        layers: Iterable[int],
        batch_size: int = 64,
        max_bytes: int = 6 * 2**30,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.layers = sorted({layer for layer in layers if layer > 0})
        self._data: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in self.layers}
        self._computed: dict[Hashable, tuple[str, ...]] = {}  # group -> members it holds
        self._members: dict[Hashable, tuple[str, ...]] = {}
        self._group_of: dict[str, Hashable] = {}
        self.store: FeatureStore | None = None

    def bind(self, store: FeatureStore, groups: Mapping[str, Hashable] | None = None) -> None:
        """Serve rows of ``store`` from now on, grouped by ``groups`` (sample id -> group;
        one group for all by default). Groups whose members are unchanged keep their
        cached values; the others are dropped and recomputed when needed."""
        self.store = store
        self._group_of = {sid: (groups.get(sid) if groups else None) for sid in store.ids}
        members: dict[Hashable, list[str]] = {}
        for sid in sorted(store.ids):
            members.setdefault(self._group_of[sid], []).append(sid)
        self._members = {g: tuple(m) for g, m in members.items()}
        for group, held in list(self._computed.items()):
            if self._members.get(group) != held:
                self._drop(group)

    def _drop(self, group: Hashable) -> None:
        for sid in self._computed.pop(group, ()):
            for table in self._data.values():
                table.pop(sid, None)

    def _estimate(self, rows: Iterable[int]) -> int:
        assert self.store is not None
        config: Any = self.engine.model.config
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        rows = list(rows)
        if self.store.family is Family.IMAGE:
            tokens = ((int(config.image_size) // int(config.patch_size)) ** 2 + 1) * len(rows)
        else:
            tokens = int(self.store.lengths(rows).sum())
        return 4 * hidden * tokens * len(self.layers)

    def covers(self, layer: int, rows: Sequence[int]) -> bool:
        """Whether a stage starting at ``layer`` on ``rows`` is fed from the cache: a pure
        function of the stage (its layer and its groups' sizes), never of history."""
        if not (self.layers and layer in self._data and self.store is not None):
            return False
        groups = {self._group_of[self.store.ids[r]] for r in rows}
        members = [self.store.row_of[s] for g in groups for s in self._members[g]]
        return self._estimate(members) <= self.max_bytes

    def ensure(self, rows: Sequence[int]) -> None:
        """Compute every cached layer's input for the groups of ``rows`` not cached yet
        (dropping other groups first when the memory budget would be exceeded)."""
        store = self.store
        assert store is not None, "bind() a feature store first"
        wanted = dict.fromkeys(self._group_of[store.ids[r]] for r in rows)
        missing = [g for g in wanted if g not in self._computed]
        if not missing or not self.layers:
            return
        held = [
            store.row_of[s] for g in self._computed for s in self._computed[g] if s in store.row_of
        ]
        needed = [store.row_of[s] for g in missing for s in self._members[g]]
        if self._estimate(held + needed) > self.max_bytes:
            for group in [g for g in self._computed if g not in wanted]:
                self._drop(group)
        image = store.family is Family.IMAGE
        for group in missing:
            members = self._members[group]
            order = sorted(
                (store.row_of[s] for s in members),
                key=lambda r: (int(store.lengths([r])[0]), store.ids[r]),
            )
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                states = self.engine.hidden_states_at(store.collate(chunk), self.layers)
                lengths = store.lengths(chunk)
                for layer in self.layers:
                    for i, row in enumerate(chunk):
                        width = states[layer].shape[1] if image else int(lengths[i])
                        self._data[layer][store.ids[row]] = states[layer][i, :width].clone()
            self._computed[group] = members

    def batch(self, layer: int, rows: Sequence[int]) -> torch.Tensor:
        """Return the cached inputs of ``layer`` for ``rows``, zero-padded like
        :meth:`FeatureStore.collate` pads the batch (padded positions are masked anyway)."""
        assert self.store is not None
        table = self._data[layer]
        tensors = [table[self.store.ids[r]] for r in rows]
        width = max(t.shape[0] for t in tensors)
        out = tensors[0].new_zeros((len(tensors), width, tensors[0].shape[-1]))
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t
        return out
