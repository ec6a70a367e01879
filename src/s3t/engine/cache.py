"""Exact caching of frozen lower layers, computed one canonical way, in memory or spilled
to disk.

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

Groups are kept in memory up to ``max_bytes``; beyond it a group is written, batch by
batch, to a memory-mapped file in ``spill_dir`` and read back from there (the same bits),
its pages released from the process after each use: resident memory stays bounded
whatever the data size. Spill files are named after their group
(``<shard>-<slice>-...``) so that a deletion can erase the files holding its samples.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3t.engine.blocks import BlockModel
from s3t.engine.features import FeatureStore
from s3t.engine.settings import Family

log = logging.getLogger(__name__)

#: around writing a spill file of these sample ids: yields whether it may be written
SpillGuard = Callable[[Sequence[str]], AbstractContextManager[bool]]

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}


class _Spilled:
    """One group's cached inputs in a memory-mapped file: per layer, rows of width hidden.

    Pages are released from the process (``MADV_DONTNEED``) once the group is written and
    after every batch read from it, so the spilled values live in the file and the kernel's
    page cache, never in the process's resident memory."""

    def __init__(
        self,
        path: Path,
        rows: dict[str, tuple[int, int]],
        layers: Sequence[int],
        hidden: int,
        dtype: torch.dtype,
    ) -> None:
        self.path = path
        self.rows = rows  # sample id -> (first row, number of rows)
        self.total = sum(n for _, n in rows.values())
        self.layers = list(layers)
        self.hidden = hidden
        self.dtype = dtype
        numpy_dtype = np.dtype(_NUMPY[dtype])
        size = max(1, len(self.layers) * self.total * hidden * numpy_dtype.itemsize)
        # the file holds encoded features: it goes when the group is dropped, or at exit
        self._finalizer = weakref.finalize(self, path.unlink, missing_ok=True)
        with open(path, "w+b") as fh:
            try:  # reserve the blocks now: a full disk is an error here, not a SIGBUS later
                os.posix_fallocate(fh.fileno(), 0, size)
            except OSError as exc:
                path.unlink(missing_ok=True)
                raise OSError(
                    exc.errno, f"cannot spill the activation cache to {path}: {exc.strerror}"
                ) from None
            self._mmap = mmap.mmap(fh.fileno(), size)
        self.map: np.ndarray[Any, Any] | None = np.frombuffer(
            self._mmap, dtype=numpy_dtype, count=len(self.layers) * self.total * hidden
        ).reshape(len(self.layers), self.total, hidden)

    def write(self, layer: int, sid: str, value: torch.Tensor) -> None:
        assert self.map is not None
        start, n = self.rows[sid]
        data = value.detach().cpu()
        array = data.view(torch.int16).numpy() if self.dtype == torch.bfloat16 else data.numpy()
        self.map[self.layers.index(layer), start : start + n] = array

    def read(self, layer: int, sid: str) -> torch.Tensor:
        assert self.map is not None
        start, n = self.rows[sid]
        tensor = torch.from_numpy(np.array(self.map[self.layers.index(layer), start : start + n]))
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor

    def release(self) -> None:
        """Drop the file's pages from this process (the data stays in the file: on a shared
        file mapping, dirty pages go to the page cache, not away)."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.map = None  # the only view of the mapping: it must go before the mapping
        self._mmap.close()
        self._finalizer()


class ActivationCache:
    """Base-model hidden states entering chosen layers, per sample id (see module docstring)."""

    def __init__(
        self,
        engine: BlockModel,
        layers: Iterable[int],
        batch_size: int = 64,
        max_bytes: int = 4 * 2**30,
        spill_dir: Path | None = None,
        spill_guard: SpillGuard | None = None,
    ) -> None:
        self.engine = engine
        self.spill_guard = spill_guard
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._to_drop: set[Hashable] = set()  # groups deletions dropped while the cache was busy
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self.layers = sorted({layer for layer in layers if layer > 0})
        self._memory: dict[Hashable, dict[int, dict[str, torch.Tensor]]] = {}
        self._spilled: dict[Hashable, _Spilled] = {}
        self._computed: dict[Hashable, tuple[str, ...]] = {}  # group -> members it holds
        self._bytes: dict[Hashable, int] = {}
        self._members: dict[Hashable, tuple[str, ...]] = {}
        self._group_of: dict[str, Hashable] = {}
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.store: FeatureStore | None = None

    @property
    def memory_bytes(self) -> int:
        """Bytes of cached values held in memory now."""
        return sum(b for g, b in self._bytes.items() if g in self._memory)

    @property
    def spilled_bytes(self) -> int:
        """Bytes of cached values in spill files now."""
        return sum(b for g, b in self._bytes.items() if g in self._spilled)

    def bind(self, store: FeatureStore, groups: Mapping[str, Hashable] | None = None) -> None:
        """Serve rows of ``store`` from now on, grouped by ``groups`` (sample id -> group;
        one group for all by default). Groups whose members are unchanged keep their
        cached values; the others are dropped (their spill files deleted)."""
        with self._locked():
            self._bind(store, groups)

    def _bind(self, store: FeatureStore, groups: Mapping[str, Hashable] | None) -> None:
        self.store = store
        self._group_of = {sid: (groups.get(sid) if groups else None) for sid in store.ids}
        members: dict[Hashable, list[str]] = {}
        for sid in sorted(store.ids):
            members.setdefault(self._group_of[sid], []).append(sid)
        self._members = {g: tuple(m) for g, m in members.items()}
        for group, held in list(self._computed.items()):
            if self._members.get(group) != held:
                self._drop(group)

    def close(self) -> None:
        """Drop everything (spill files included)."""
        with self._locked():
            for group in list(self._computed):
                self._drop(group)

    def drop(self, groups: Iterable[Hashable]) -> None:
        """Drop these groups (e.g. they held a sample just forgotten): now if the cache is
        idle, else as soon as the stage computing or reading it lets go — a deletion never
        waits for a stage's work. A stage still reading them recomputes them, in memory
        if the spill guard refuses a file."""
        with self._pending_lock:
            self._to_drop.update(groups)
        if self._lock.acquire(blocking=False):
            try:
                self._drop_pending()
            finally:
                self._lock.release()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cache; on the way out, drop what deletions asked to drop meanwhile."""
        with self._lock:
            try:
                yield
            finally:
                self._drop_pending()

    def _drop_pending(self) -> None:
        with self._pending_lock:
            groups, self._to_drop = self._to_drop, set()
        for group in groups:
            self._drop(group)

    def _drop(self, group: Hashable) -> None:
        self._computed.pop(group, None)
        self._memory.pop(group, None)
        self._bytes.pop(group, None)
        spilled = self._spilled.pop(group, None)
        if spilled is not None:
            spilled.close()

    def _hidden(self) -> int:
        config: Any = self.engine.model.config
        return int(getattr(config, "hidden_size", 0) or 0)

    def _tokens(self, rows: Iterable[int]) -> int:
        assert self.store is not None
        rows = list(rows)
        if self.store.family is Family.IMAGE:
            config: Any = self.engine.model.config
            return ((int(config.image_size) // int(config.patch_size)) ** 2 + 1) * len(rows)
        return int(self.store.lengths(rows).sum())

    def covers(self, layer: int, rows: Sequence[int]) -> bool:
        """Whether a stage starting at ``layer`` is fed from the cache (whenever the layer
        is cached: memory is bounded by spilling, never by switching the cache off)."""
        return bool(self.layers) and layer in self.layers and self.store is not None

    def ensure(self, rows: Sequence[int]) -> None:
        """Compute every cached layer's input for the groups of ``rows`` not cached yet."""
        with self._locked():
            self._ensure(rows)

    def _ensure(self, rows: Sequence[int]) -> None:
        store = self.store
        assert store is not None, "bind() a feature store first"
        wanted = dict.fromkeys(self._group_of[store.ids[r]] for r in rows)
        missing = [g for g in wanted if g not in self._computed]
        if not missing or not self.layers:
            return
        if self.spill_dir is None:  # nowhere to spill: make room by dropping other groups
            needed = self._tokens(store.row_of[s] for g in missing for s in self._members[g])
            if self.memory_bytes + needed * self._hidden() * 4 * len(self.layers) > self.max_bytes:
                for group in [g for g in self._memory if g not in wanted]:
                    self._drop(group)
        for group in missing:
            with ExitStack() as stack:
                self._compute(group, stack)

    def _compute(self, group: Hashable, stack: ExitStack) -> None:
        """Compute one group in its canonical order, into memory or a spill file (written
        while the spill guard, if any, allows it)."""
        store = self.store
        assert store is not None
        image = store.family is Family.IMAGE
        members = self._members[group]
        order = sorted(
            (store.row_of[s] for s in members),
            key=lambda r: (int(store.lengths([r])[0]), store.ids[r]),
        )
        spill: _Spilled | None = None
        memory: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in self.layers}
        size = 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            states = self.engine.hidden_states_at(store.collate(chunk), self.layers)
            if start == 0:
                first = states[self.layers[0]]
                hidden = int(first.shape[-1])
                size = self._tokens(order) * hidden * len(self.layers) * first.element_size()
                if self.memory_bytes + size > self.max_bytes and self.spill_dir is not None:
                    allowed = True
                    if self.spill_guard is not None:
                        allowed = stack.enter_context(self.spill_guard(members))
                    if allowed:
                        width = int(first.shape[1]) if image else None
                        spill = self._spill_file(group, order, width, hidden, first.dtype)
                    else:
                        log.info("activation cache: %s changed meanwhile; kept in memory", group)
            lengths = store.lengths(chunk)
            for layer in self.layers:
                for i, row in enumerate(chunk):
                    width = states[layer].shape[1] if image else int(lengths[i])
                    value = states[layer][i, :width]
                    if spill is not None:
                        spill.write(layer, store.ids[row], value)
                    else:
                        memory[layer][store.ids[row]] = value.detach().cpu().clone()
            if spill is not None and (start // self.batch_size) % 16 == 15:
                spill.release()  # a large group is never resident at once
        if spill is not None:
            self._spilled[group] = spill
            spill.release()
        else:
            self._memory[group] = memory
        self._bytes[group] = size
        self._computed[group] = members

    def _spill_file(
        self,
        group: Hashable,
        order: list[int],
        width: int | None,
        hidden: int,
        dtype: torch.dtype,
    ) -> _Spilled:
        assert self.store is not None and self.spill_dir is not None
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        rows: dict[str, tuple[int, int]] = {}
        at = 0
        for row in order:
            n = width if width is not None else int(self.store.lengths([row])[0])
            rows[self.store.ids[row]] = (at, n)
            at += n
        name = "-".join(str(x) for x in (group if isinstance(group, tuple) else (group,)))
        path = self.spill_dir / f"{name}-{self._token}.activations"
        log.info("activation cache: spilling group %s to %s", group, path)
        return _Spilled(path, rows, self.layers, hidden, dtype)

    def batch(self, layer: int, rows: Sequence[int]) -> torch.Tensor:
        """Return the cached inputs of ``layer`` for ``rows``, zero-padded like
        :meth:`FeatureStore.collate` pads the batch (padded positions are masked anyway)."""
        with self._locked():
            return self._batch(layer, rows)

    def _batch(self, layer: int, rows: Sequence[int]) -> torch.Tensor:
        assert self.store is not None
        self._ensure(rows)  # groups dropped since (a deletion) are computed again
        tensors = []
        read: set[Hashable] = set()
        for r in rows:
            sid = self.store.ids[r]
            group = self._group_of[sid]
            if group in self._spilled:
                tensors.append(self._spilled[group].read(layer, sid))
                read.add(group)
            else:
                tensors.append(self._memory[group][layer][sid])
        for group in read:
            self._spilled[group].release()
        width = max(t.shape[0] for t in tensors)
        out = tensors[0].new_zeros((len(tensors), width, tensors[0].shape[-1]))
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t
        return out.to(self.engine.device)
