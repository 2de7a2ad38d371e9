"""Numba kernels for float32 sampling on CPU (weights stored as float32 or float16): products of a few
rows with a large weight at memory bandwidth, and the attention of new positions over the key/value cache.

A sampling step multiplies ``n_samples`` rows (one to a few) by every weight matrix once, so its
floor is the time to read the weights. The CPU BLAS does not get there for so few rows: it
repacks the weight on every call and reads it at half the bandwidth or less (about 6 GB/s for 4
rows on the 2-core development machine, against 25 GB/s for a plain copy).

Here the weight is stored for the run in blocks of four outputs (``blocks``), each block one contiguous
stretch, float16 weights still at two bytes, in 2 MiB pages where the OS grants them
(``jukebox.utils.huge_pages``), and a small numba kernel computes four outputs for four rows
at a time: sixteen sums held in registers while it streams the block once. Every output is a float32 dot
product over ``n_in`` (partial sums added at the end; float16 weights widened exactly), so it differs from
``addmm`` of the float32 weight by float32 rounding only.

A step's other work is a few hundred tiny tensor operations, each costing more in dispatch than in
arithmetic; the kernels also take the layer norm before a product, the activation and residual
add after it, and the cache writes with the whole attention of new positions: a step's one, or a
priming chunk's (``CacheAttention``).

The kernels need numba (installed with librosa) with a parallel threading layer (OpenMP or TBB);
numba's fallback ``workqueue`` layer is slower than the BLAS, so then ``available()`` is False
and steps use another backend (``jukebox.inference.cpu_backends``) and torch's attention.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import torch

from jukebox.utils import huge_pages

__all__ = ["TILE", "available", "backend", "match_threads", "TiledLinear", "BlockedLinear", "blocks", "windows",
           "CacheAttention", "attention", "BlockedLayer", "BlockedLayers"]

TILE = 64  # columns per tile: M x 64 float32 sums stay in the L1 cache for any batch of samples

_NONE_1D, _NONE_2D = np.empty(0, np.float32), np.empty((0, 0), np.float32)  # "no norm", "no residual"


def _build_kernels():
    import numba

    from jukebox.inference import numba_kernels  # compiles on first call, or loads the cached compilation

    return numba, numba_kernels.tiled_linear, numba_kernels.blocked_linear, numba_kernels.cached_attention


@functools.cache
def _kernels():
    """``(numba, tiled_linear, blocked_linear, cached_attention)`` compiled and checked on tiny inputs, or None
    (with a warning) when numba is missing, can not compile here or has no parallel threading layer."""
    try:
        numba, tiled, blocked, attention_kernel = _build_kernels()
        products = []  # compiles them (or loads them), starts the threads
        for kernel, weight, options in ((tiled, np.ones((1, 2, 2), np.float32), ()),
                                        (blocked, blocks(torch.ones(2, 2)).numpy(), (False, True))):
            products.append(np.empty((1, 2), dtype=np.float32))
            kernel(np.ones((1, 2), np.float32), _NONE_1D, _NONE_1D, 0.0, weight, np.zeros(2, np.float32), False,
                   *options, _NONE_2D, products[-1])
        cache = np.ones((1, 2, 2), np.float32)
        attended = np.empty((1, 1, 2), np.float32)
        attention_kernel(np.ones((1, 1, 6), np.float32), cache, cache.copy(), windows((1, 0, 2, 1)), 1, 1.0, attended)
    except Exception as error:  # noqa: BLE001 (no numba, or it can not compile or run here: fall back)
        _note(f"numba kernels unavailable ({error}); CPU steps use the other backends")
        return None
    if numba.threading_layer() == "workqueue" or not all((out == 2.0).all() for out in products) \
            or not (attended == 1.0).all():
        _note("numba has no OpenMP or TBB threading layer; CPU steps use the other backends")
        return None
    return numba, tiled, blocked, attention_kernel


def _note(message: str) -> None:
    warnings.warn(message + " (see the README's Sampling speed)", stacklevel=4)


def available() -> bool:
    """Whether the kernels run in this process (compiled or loaded from the cache on the first call)."""
    return _kernels() is not None


def backend() -> str:
    """What the kernels run on here, e.g. ``"numba (omp threading layer)"``, or ``"unavailable"``."""
    kernel = _kernels()
    return "unavailable" if kernel is None else f"numba ({kernel[0].threading_layer()} threading layer)"


def match_threads() -> None:
    """Run the kernels on as many threads as torch uses (call once per step, not per product)."""
    kernel = _kernels()
    if kernel is not None:
        numba = kernel[0]
        threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)


class _FusedLinear:
    """``x -> act(norm(x) @ w + b)`` through a numba product kernel over ``weight``, the layout of a CPU weight
    ``(n_in, n_out)`` that the kernel streams (float32, or float16 kept at two bytes and widened exactly in
    the kernel), with bias ``(n_out,)``, an optional layer norm ``norm = (weight, bias, eps)`` of the
    input and, with ``gelu``, quick_gelu ``y sigmoid(1.702 y)`` of the output.

    Calling it maps x ``(M, n_in)`` (float32) to ``(M, n_out)``, plus ``residual`` ``(M, n_out)`` if
    given; the kernel does the norm, product, bias, activation and residual in one pass. Needs ``available()``.
    """

    __slots__ = ("weight", "bias", "norm", "gelu", "n_out", "_kernel", "_args")

    def __init__(self, weight: torch.Tensor, n_out: int, kernel, b: torch.Tensor, norm: tuple | None, gelu: bool,
                 options: tuple = ()):
        self.weight, self.n_out, self._kernel, self.gelu = weight, n_out, kernel, gelu
        self.bias = b.detach().float().contiguous()
        self.norm = None if norm is None else (norm[0].detach().float().contiguous(),
                                               norm[1].detach().float().contiguous(), float(norm[2]))
        norm_args = (_NONE_1D, _NONE_1D, 0.0) if norm is None else \
            (self.norm[0].numpy(), self.norm[1].numpy(), self.norm[2])
        weights = weight.view(torch.int16).numpy().view(np.uint16) if weight.dtype == torch.float16 else weight.numpy()
        self._args = (*norm_args, weights, self.bias.numpy(), gelu, *options)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = np.empty((x.shape[0], self.n_out), dtype=np.float32)
        self._kernel(x.contiguous().numpy(), *self._args,
                     _NONE_2D if residual is None else residual.contiguous().numpy(), out)
        return torch.from_numpy(out)


def _kept_dtype(w: torch.Tensor) -> torch.Tensor:
    """A weight as the kernels read it: float16 as it is, anything else as float32."""
    w = w.detach()
    return w if w.dtype == torch.float16 else w.float()


class TiledLinear(_FusedLinear):
    """A ``_FusedLinear`` over contiguous column tiles ``(ceil(n_out / TILE), n_in, TILE)`` of the weight (the
    last one zero-padded): each tile is streamed once while the ``M x TILE`` sums of its columns stay in
    the L1 cache; every output is accumulated over ``n_in`` in order (fused multiply-adds allowed)."""

    __slots__ = ()

    def __init__(self, w: torch.Tensor, b: torch.Tensor, norm: tuple | None = None, gelu: bool = False):
        n_in, n_out = w.shape
        n_tiles = -(-n_out // TILE)
        w = _kept_dtype(w)
        padded = w.new_zeros(n_in, n_tiles * TILE)
        padded[:, :n_out] = w
        tiles = _streamed(padded.view(n_in, n_tiles, TILE).permute(1, 0, 2))
        super().__init__(tiles, n_out, _kernels()[1], b, norm, gelu)

    @property
    def tiles(self) -> torch.Tensor:
        """The weight as the kernel streams it, ``(ceil(n_out / TILE), n_in, TILE)``."""
        return self.weight


class BlockedLinear(_FusedLinear):
    """A ``_FusedLinear`` over the weight in blocks of four outputs (``blocks``): four outputs for four rows at a
    time, sixteen sums held in registers while the block streams once; every output is a float32 dot product
    over ``n_in`` in partial sums added at the end. ``narrow``: groups of four rows sum in half-width vectors
    (``numba_kernels.NARROW`` floats), which the same weight blocks serve. ``single_prefetch``: a single row
    asks for the weight lines ahead (software prefetch) as groups of four rows do; else the CPU's own
    prefetchers fetch them."""

    __slots__ = ()

    def __init__(self, w: torch.Tensor, b: torch.Tensor, norm: tuple | None = None, gelu: bool = False,
                 narrow: bool = False, single_prefetch: bool = True):
        super().__init__(blocks(_kept_dtype(w)), w.shape[1], _kernels()[2], b, norm, gelu, (narrow, single_prefetch))


def blocks(w: torch.Tensor) -> torch.Tensor:
    """A weight ``(n_in, n_out)`` as ``numba_kernels.blocked_linear`` streams it: ``(ceil(n_out / 4), 4 K)``, K being
    n_in rounded up to whole vectors of ``numba_kernels.LANES`` floats; block b holds outputs 4b..4b+3, their
    vectors interleaved (output 4b+q's inputs k..k+LANES-1, for k a multiple of LANES, at 4k + q LANES), zero past
    the weight's end. Needs ``available()``."""
    from jukebox.inference.numba_kernels import LANES

    n_in, n_out = w.shape
    k, o = -(-n_in // LANES) * LANES, -(-n_out // 4) * 4
    if (k, o) != (n_in, n_out):
        padded = w.new_zeros(k, o)
        padded[:n_in, :n_out] = w
        w = padded
    return _streamed(w.detach().reshape(k // LANES, LANES, o // 4, 4).permute(2, 0, 3, 1)).view(o // 4, 4 * k)


def _streamed(w: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``w`` in the memory a step streams its weights from (``jukebox.utils.huge_pages``)."""
    return huge_pages.empty(tuple(w.shape), w.dtype).copy_(w)


def windows(*positions: tuple[int, int, int, int]) -> np.ndarray:
    """The ``(slot, start, stop, step)`` of each new position, as ``CacheAttention`` takes them: ``(Q, 4)`` int64."""
    return np.array(positions, dtype=np.int64).reshape(-1, 4)


class CacheAttention:
    """Attention of new positions over a layer's float32 key/value caches ``(N, K, n_state)`` with
    ``n_head`` heads and score scale ``scale``; needs ``available()``. The caches' numpy views are
    made once here, not at every step.

    Calling it with proj ``(N, Q, 3 n_state)``, the query, key and value of Q consecutive new positions
    (or ``(N, Q, n_state)``, queries alone, for encoder-decoder attention), and their ``windows`` ``(Q, 4)``
    (see ``windows``), takes the positions in order: each first writes its key and value to cache row
    ``slot`` (if ``slot >= 0``), in place, then attends over the rows ``start:stop:step``. Returns
    ``(N, Q, n_state)``: softmax of the scaled scores of each head, in float32.
    """

    __slots__ = ("n_state", "_kernel", "_key", "_value", "_head")

    def __init__(self, key: torch.Tensor, value: torch.Tensor, n_head: int, scale: float):
        self.n_state = key.shape[2]
        self._kernel = _kernels()[3]
        self._key, self._value, self._head = key.numpy(), value.numpy(), (n_head, scale)

    def __call__(self, proj: torch.Tensor, windows: np.ndarray) -> torch.Tensor:
        out = np.empty((proj.shape[0], proj.shape[1], self.n_state), dtype=np.float32)
        self._kernel(proj.contiguous().numpy(), self._key, self._value, windows, *self._head, out)
        return torch.from_numpy(out)


def attention(proj: torch.Tensor, key: torch.Tensor, value: torch.Tensor, n_head: int, scale: float,
              windows: np.ndarray) -> torch.Tensor:
    """``CacheAttention(key, value, n_head, scale)(proj, windows)``, for one call."""
    return CacheAttention(key, value, n_head, scale)(proj, windows)


def _typed_list(items: list):
    """``items`` (one type, at least one) as a numba typed list, through the cached ``numba_kernels`` builders."""
    from jukebox.inference import numba_kernels

    typed = numba_kernels.typed_list(items[0])
    for item in items[1:]:
        numba_kernels.typed_append(typed, item)
    return typed


@functools.cache
def _layers_kernel():
    """``numba_kernels.blocked_layers`` compiled (or loaded) and checked on a tiny layer, or None (with a warning),
    when the product and attention kernels run but it does not: layers then call them one by one."""
    if not available():
        return None
    from jukebox.inference import numba_kernels

    product = (_NONE_1D, _NONE_1D, 0.0, blocks(torch.ones(1, 1)).numpy(), np.zeros(1, np.float32), False, False, True)
    attn = (_NONE_1D, _NONE_1D, 0.0, blocks(torch.ones(1, 3)).numpy(), np.zeros(3, np.float32), False, False, True)
    cache = np.zeros((1, 1, 1), np.float32)
    try:  # one sample, one position, width 1: every product is x -> x, the residuals double it twice
        layers = _typed_list([(attn, cache, cache.copy(), 1, 1.0, product, product, product)])
        out = numba_kernels.blocked_layers(np.ones((1, 1), np.float32), 1, layers, windows((0, 0, 1, 1))[None],
                                           np.zeros(1, np.int64))
    except Exception as error:  # noqa: BLE001 (it can not compile here: the layers call the kernels one by one)
        _note(f"numba layer kernel unavailable ({error}); CPU steps call its kernels one by one")
        return None
    if out.shape != (1, 1) or out[0, 0] != 4.0:
        _note("numba layer kernel gives wrong results here; CPU steps call its kernels one by one")
        return None
    return numba_kernels.blocked_layers


class BlockedLayer:
    """The arguments of a ``ResAttnBlock`` 's step (or chunk) through ``numba_kernels.blocked_layer``: its four
    ``BlockedLinear`` products (the layer norms, the quick_gelu and residuals inside them) and its
    ``CacheAttention``. ``BlockedLayers`` runs them. Needs ``whole_layers()``."""

    __slots__ = ("args",)

    def __init__(self, c_attn: BlockedLinear, c_proj: BlockedLinear, c_fc: BlockedLinear, mlp_proj: BlockedLinear,
                 attention: CacheAttention):
        n_head, scale = attention._head
        self.args = (c_attn._args, attention._key, attention._value, int(n_head), float(scale), c_proj._args,
                     c_fc._args, mlp_proj._args)


class BlockedLayers:
    """Consecutive ``BlockedLayer`` s in one call of ``numba_kernels.blocked_layers``; ``layout_of[i]``: which of the
    windows a call is given layer i attends through.

    Calling it maps x ``(N * Q, width)`` (sample-major, Q new positions per sample) and ``windows``
    ``(layouts, Q, 4)`` (see ``windows``) to the last layer's output ``(N * Q, width)``, writing each layer's keys
    and values to its cache as ``CacheAttention`` does. Needs ``whole_layers()``.
    """

    __slots__ = ("_kernel", "_layers", "_layout_of")

    def __init__(self, layers: list[BlockedLayer], layout_of: list[int]):
        self._kernel = _layers_kernel()
        self._layers = _typed_list([layer.args for layer in layers])
        self._layout_of = np.array(layout_of, dtype=np.int64)

    def __call__(self, x: torch.Tensor, n: int, windows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._kernel(x.contiguous().numpy(), n, self._layers, windows, self._layout_of))


def whole_layers() -> bool:
    """Whether ``BlockedLayers`` runs here (compiled or loaded from the cache on the first call)."""
    return _layers_kernel() is not None
