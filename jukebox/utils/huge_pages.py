"""CPU memory in 2 MiB pages for the large buffers that sampling streams through at every step.

A step reads every weight once, in order: hundreds of megabytes. In ordinary 4 KiB pages that read
misses the TLB at every page, each miss a walk of the page tables; in 2 MiB pages it misses 512 times
less often. Linux backs anonymous memory with such pages (transparent huge pages) when a mapping asks
for them with ``madvise(MADV_HUGEPAGE)`` and its ``transparent_hugepage`` setting is ``madvise`` or
``always``; elsewhere the memory here is ordinary.

Hand-written because torch's own switch (the ``THP_MEM_ALLOC_ENABLE`` environment variable) is
process-wide and read once, at torch's first allocation, before a library can set it.
"""
from __future__ import annotations

import math
import mmap
import re
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

__all__ = ["HUGE_PAGE", "HugePageArena", "empty", "setting", "process_huge_bytes"]

HUGE_PAGE = 2 << 20
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # Linux's setting, e.g. "always [madvise] never"
_ALIGN = 64  # a cache line: every buffer starts on one
_SUPPORTED = hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_ANONYMOUS")


class HugePageArena:
    """Hands out buffers carved one after another from anonymous mappings of at least ``chunk`` bytes, each
    advised for huge pages and used from its first 2 MiB boundary. A mapping is released when no tensor
    carved from it is left; the arena keeps only a weak reference to the one it is filling. Thread-safe: plans
    are built in whichever thread samples (the studio's is its worker)."""

    def __init__(self, chunk: int = 64 << 20) -> None:
        self.chunk = chunk
        self._mapping: weakref.ref[mmap.mmap] | None = None
        self._next = 0  # offset of the next free byte in the current mapping
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous CPU tensor of ``shape`` and ``dtype`` in the arena's memory (ordinary
        memory where the platform has no ``madvise(MADV_HUGEPAGE)``)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if not _SUPPORTED or nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            mapping = self._mapping() if self._mapping is not None else None
            start = -(-self._next // _ALIGN) * _ALIGN
            if mapping is None or start + nbytes > len(mapping):
                mapping, start = self._map(nbytes)
                self._mapping = weakref.ref(mapping)
            self._next = start + nbytes
            carved = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=start)  # holds the mapping
        return torch.from_numpy(carved).view(dtype).view(shape)

    def _map(self, nbytes: int) -> tuple[mmap.mmap, int]:
        """A new mapping with room for ``nbytes`` after its first huge page boundary, and that boundary's offset."""
        length = max(self.chunk, -(-nbytes // HUGE_PAGE) * HUGE_PAGE) + HUGE_PAGE
        mapping = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            mapping.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel built without transparent huge pages: ordinary pages, same memory
            pass
        address = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
        return mapping, (-address) % HUGE_PAGE


_ARENA = HugePageArena()


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``HugePageArena.empty`` of the process's arena, which the sampling kernels' streamed weights share."""
    return _ARENA.empty(shape, dtype)


def setting() -> str:
    """Linux's transparent huge page setting: ``always``, ``madvise`` or ``never`` (``madvise``: only memory
    that asks, as this arena's does), or ``unknown`` where there is none to read."""
    try:
        chosen = re.search(r"\[(\w+)\]", THP_ENABLED.read_text())
    except OSError:
        return "unknown"
    return chosen[1] if chosen else "unknown"


def process_huge_bytes() -> int:
    """Bytes of this process's anonymous memory in transparent huge pages now (``AnonHugePages``; 0 where
    the OS does not say)."""
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0
    found = re.search(r"^AnonHugePages:\s+(\d+) kB", rollup, re.MULTILINE)
    return int(found[1]) * 1024 if found else 0
