"""Small helpers on tensors: parameters and gradients for the training loop, and the memory bandwidth that
sets the sampling steps' floor."""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = [
    "zero_grad", "count_parameters", "grad_norm", "scale_grads", "params_checksum", "synchronize", "measure_bandwidth",
]


def zero_grad(model: nn.Module) -> None:
    """Drop the gradients of ``model`` (set to None, which frees their memory)."""
    for p in model.parameters():
        p.grad = None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """Global L2 norm of the gradients, accumulated in float32; inf/nan propagate."""
    grads = _grads(params)
    if not grads:
        return 0.0
    norms = torch._foreach_norm(grads)
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))


def scale_grads(params: Iterable[torch.Tensor], factor: float) -> None:
    """Multiply every gradient by ``factor`` in place."""
    grads = _grads(params)
    if grads and factor != 1.0:
        torch._foreach_mul_(grads, factor)


def params_checksum(model: nn.Module) -> torch.Tensor:
    """Two float64 fingerprints of all parameters and buffers, ``(2,)``: their plain sum and a sum
    weighted by position, so that swapped values change it too.

    Equal models give equal checksums bit for bit; used to check that data-parallel replicas agree.
    """
    total = torch.zeros(2, dtype=torch.float64)
    for i, t in enumerate(model.state_dict().values()):
        if t.is_floating_point() or t.dtype in (torch.int32, torch.int64):
            flat = t.detach().double().flatten().cpu()
            total[0] += flat.sum()
            total[1] += (flat * torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)).sum() * (i + 1)
    return total


def transposed(w: torch.Tensor, dtype: torch.dtype | None = None, band: int = 64) -> torch.Tensor:
    """A contiguous copy of the transpose of ``w`` ``(A, B)`` -> ``(B, A)`` (in ``dtype`` if given), copied
    ``band`` rows of ``w`` at a time: ``w.t().contiguous()`` writes the whole output a row apart for every
    element it reads, so on large weights each write misses the cache; a band's rows stay in it."""
    w = w.detach()
    out = torch.empty(w.shape[1], w.shape[0], dtype=dtype or w.dtype, device=w.device)
    for start in range(0, w.shape[0], band):
        out[:, start:start + band] = w[start:start + band].t()
    return out


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, mib: int = 512, repeats: int = 7) -> float:
    """Memory bandwidth in bytes/s of copying a ``mib`` MiB float32 tensor (bytes read + written), median."""
    src = torch.ones(mib * 2 ** 18, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / statistics.median(times)
