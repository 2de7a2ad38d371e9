"""The memory that the CPU kernels stream their weights from (jukebox.utils.huge_pages)."""
from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jukebox.utils import huge_pages
from jukebox.utils.huge_pages import HUGE_PAGE, HugePageArena

THP_SETTING = huge_pages.THP_ENABLED


def _huge_kib(tensor: torch.Tensor) -> int:
    """KiB of this process's mapping that holds ``tensor`` backed by transparent huge pages."""
    address = tensor.data_ptr()
    lines = Path("/proc/self/smaps").read_text().splitlines()
    inside = False
    for line in lines:
        span = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if span:
            inside = int(span[1], 16) <= address < int(span[2], 16)
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    raise AssertionError("the tensor's mapping is not in /proc/self/smaps")


def test_buffers_are_separate_aligned_and_keep_their_contents():
    arena = HugePageArena(chunk=4 << 20)
    shapes = [((3, 5), torch.float32), ((7,), torch.float16), ((1000, 300), torch.float32), ((2, 3), torch.int64)]
    tensors = []
    for i, (shape, dtype) in enumerate(shapes):
        t = arena.empty(shape, dtype)
        assert t.shape == shape and t.dtype == dtype and t.is_contiguous()
        assert t.data_ptr() % 64 == 0
        t.fill_(i + 1)
        tensors.append(t)
    for i, t in enumerate(tensors):  # the 1.2 MB one did not fit the first mapping's rest: nothing overlaps
        assert bool((t == i + 1).all())


def test_a_mapping_is_released_with_its_last_tensor():
    arena = HugePageArena(chunk=4 << 20)
    first = arena.empty((16,), torch.float32)
    second = arena.empty((16,), torch.float32)
    mapping = arena._mapping
    assert mapping is not None and mapping() is not None
    del first
    gc.collect()
    assert mapping() is not None  # still holds `second`
    del second
    gc.collect()
    assert mapping() is None
    assert arena.empty((4,), torch.float32).shape == (4,)  # and the arena maps anew


def test_a_buffer_larger_than_a_chunk_gets_a_mapping_of_its_own():
    arena = HugePageArena(chunk=2 << 20)
    small = arena.empty((10,), torch.float32)
    big = arena.empty((3 << 20,), torch.uint8)
    big.fill_(7)
    small.fill_(1)
    assert int(big.sum()) == 7 * (3 << 20) and bool((small == 1).all())


@pytest.mark.skipif(not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
                    reason="this kernel has transparent huge pages turned off")
def test_linux_backs_a_large_buffer_with_huge_pages():
    before = huge_pages.process_huge_bytes()
    t = HugePageArena().empty((4 * HUGE_PAGE // 4,), torch.float32)
    t.fill_(1.0)  # touched: now backed
    assert _huge_kib(t) >= HUGE_PAGE // 1024
    assert huge_pages.process_huge_bytes() >= before + HUGE_PAGE  # what the benchmark reports


def test_the_setting_is_the_one_the_kernel_marks():
    if not THP_SETTING.exists():
        assert huge_pages.setting() == "unknown"
        return
    text = THP_SETTING.read_text()  # e.g. "always [madvise] never"
    assert huge_pages.setting() in ("always", "madvise", "never")
    assert f"[{huge_pages.setting()}]" in text


def test_without_madvise_the_memory_is_ordinary(monkeypatch):
    monkeypatch.setattr(huge_pages, "_SUPPORTED", False)
    arena = HugePageArena()
    t = arena.empty((5, 4), torch.float16)
    assert t.shape == (5, 4) and t.dtype == torch.float16 and arena._mapping is None


def test_the_kernels_weights_live_there_and_give_the_same_products():
    cpu_kernels = pytest.importorskip("jukebox.inference.cpu_kernels")
    if not cpu_kernels.available():
        pytest.skip("numba has no parallel threading layer here")
    torch.manual_seed(0)
    w, b, x = torch.randn(300, 70), torch.randn(70), torch.randn(3, 300)
    for build in (cpu_kernels.BlockedLinear, cpu_kernels.TiledLinear):
        linear = build(w, b)
        mapping = huge_pages._ARENA._mapping()  # the one it was carved from, the arena's latest
        start = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
        assert start <= linear.weight.data_ptr() < start + len(mapping)
        torch.testing.assert_close(linear(x), torch.addmm(b, x, w), rtol=1e-5, atol=1e-5)
