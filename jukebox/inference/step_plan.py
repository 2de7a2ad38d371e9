"""The one-token sampling step of a ``Transformer``, lean enough to sit near the weight-read floor.

Sampling advances one position at a time through every layer, so a step costs at least the time
to read all weights once. The plain module path adds thousands of small Python calls, views and
allocations per step (module calls, dtype casts, pattern dispatch), which on CPU costs about as
much as the weight reads themselves. ``StepPlan`` resolves, once per sampling run, every layer's
parameters, its attention function and its cache buffers into plain attributes, then runs a step
as a short flat sequence of tensor ops with the same arithmetic as the plain path (same
``layer_norm``, products, ``scaled_dot_product_attention`` calls in the same order), so results
match it to float rounding. Work per step is independent of the position.

Two step kinds share the layer arithmetic:

* ``step(x)``: the position is the cache's, a Python int; keys are sliced to what the pattern sees
  (CPU default).
* ``chunk(x, length)``: several consecutive positions at once (priming on CPU): the products take all
  their rows in one call and the numba attention kernel takes the positions in order, as steps would.
* ``static_step(x, pos)``: the position is a 0-d int64 tensor and every shape is fixed: cache
  writes are ``index_copy_`` at computed slots and each pattern sees a fixed window with a mask.
  Nothing in it depends on Python values of the position, so it can be captured once as a CUDA
  graph (see ``jukebox.inference.static_step``) and replayed for every token. On CUDA its
  arithmetic between the matrix products runs as ``torch.compile`` d fused kernels.

Both take slots and windows from the layers' ``CacheLayout`` s, as the plain path does.

On CPU in float32 the products come from a ``cpu_backends.Backend`` (numba blocks, MKL or oneDNN
with weights packed once for the run, FBGEMM's float16 GEMM, or plain ``addmm``): the one named,
or the fastest exact one for this machine, model shape and batch, found by timing a few steps the
first time (``cpu_backends.choose``) and cached. The numba backend also runs the layer norms,
activation and residual adds inside its products, and every backend but ``plain`` attends with
the numba cache attention where numba runs. Exact backends differ from the plain path by float32
rounding; ``fbgemm_fp16`` on float32 weights reads them rounded to float16 (an opt-in). On CUDA
weights are used as stored.
"""
from __future__ import annotations

import gc
import logging
import math
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from jukebox.inference import cpu_backends, cpu_kernels
from jukebox.inference.cpu_backends import Addmm, Backend, Product
from jukebox.transformer.kv_cache import KVCache, LayerCache
from jukebox.transformer.ops import Conv1D, quick_gelu
from jukebox.transformer.patterns import AttentionPattern

__all__ = ["StepPlan"]

log = logging.getLogger(__name__)

CALIBRATION_STEPS = 8  # timed steps per backend (the median counts), after one warm-up step
CALIBRATION_SCREEN_STEPS = 3  # after this many, backends slower than CALIBRATION_SCREEN_MARGIN x the fastest stop
CALIBRATION_SCREEN_MARGIN = 1.3
CALIBRATION_SCREEN_MIB = 16  # every candidate's trial runs the fewest leading layers with this many MiB of weights
CALIBRATION_PROXY_MIB = 128  # those within the margin of the fastest then run the layers with this many


# ---------------------------------------------------------------------- the layer arithmetic
# Pure functions of tensors (and linear maps), shared by every step kind. On CUDA they are also
# compiled (see ``_compiled``): their normalisation, casts, biases, activation and residual adds
# then run as a few fused kernels between the matrix products instead of about twenty small ones.
def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """As ``ops.LayerNorm``: half-precision inputs are normalised in float32."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.layer_norm(x.float(), x.shape[-1:], weight, bias, eps).to(x.dtype)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _attn_in(x: torch.Tensor, norm: tuple, c_attn) -> torch.Tensor:
    """x ``(N, width)`` -> the attention projection of its normed value ``(N, 3 n_state)``
    (``(N, n_state)`` queries for encoder-decoder attention)."""
    return c_attn(_layer_norm(x, *norm))


def _attn_out(x: torch.Tensor, a: torch.Tensor, c_proj, norm: tuple, c_fc, mlp_proj, act,
              res_scale: float) -> torch.Tensor:
    """The rest of a ``ResAttnBlock`` after attention: x ``(N, width)``, attention output a
    ``(N, n_state)`` -> ``(N, width)``. ``act`` None is ``quick_gelu``."""
    a = c_proj(a)
    h = x + a
    m = c_fc(_layer_norm(h, *norm))
    m = mlp_proj(m * torch.sigmoid(1.702 * m) if act is None else act(m))
    if res_scale == 1.0:
        return h + m
    return x + res_scale * (a + m)


def _attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, n_head: int,
               scale: float, idx: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sample, written out for fusion: q ``(N, n_state)`` over the cache rows ``idx``
    (all when None) of key/value ``(N, K, n_state)``, additive mask ``(1, K)`` -> ``(N, n_state)``.
    Scores, softmax and the weighted sum are computed in float32."""
    if idx is not None:
        key, value = key.index_select(1, idx), value.index_select(1, idx)
    n, k, state = key.shape
    heads = (n, k, n_head, state // n_head)
    scores = (q.view(n, 1, n_head, -1).float() * key.view(heads).float()).sum(-1) * scale  # (N, K, H)
    if mask is not None:
        scores = scores + mask.float().view(1, k, 1)
    probs = torch.softmax(scores, dim=1)
    return (probs.unsqueeze(-1) * value.view(heads).float()).sum(1).to(q.dtype).view(n, state)


def _affine(w: torch.Tensor, b: torch.Tensor):
    return lambda y: torch.addmm(b, y, w)


def _attn_in_tensors(x, ln_w, ln_b, eps: float, w, b):
    return _attn_in(x, (ln_w, ln_b, eps), _affine(w, b))


def _attn_out_tensors(x, a, w_proj, b_proj, ln_w, ln_b, eps: float, w_fc, b_fc, w_mlp, b_mlp, res_scale: float):
    return _attn_out(x, a, _affine(w_proj, b_proj), (ln_w, ln_b, eps), _affine(w_fc, b_fc), _affine(w_mlp, b_mlp),
                     None, res_scale)


_COMPILED: dict = {}


def _compiled(fn):
    """``fn`` compiled once per process (shapes are fixed per run; every layer of a model shares it)."""
    if fn not in _COMPILED:
        # Inductor notes that it splits long softmax reductions; that is expected here, not news to a user.
        warnings.filterwarnings("ignore", message="(?s).*Online softmax is disabled")
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores")
        # One specialisation per model width, batch and projection shape: allow more than the default 8.
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 64))
        _COMPILED[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[fn]


def _can_compile(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def _norm_args(ln: torch.nn.LayerNorm) -> tuple:
    return ln.weight.detach(), ln.bias.detach(), ln.eps


class _Layer:
    """Everything one ``ResAttnBlock`` needs for a step, as plain attributes; its products come from ``backend``
    (None: ``addmm`` in ``dtype`` off the CPU or in half precision) for batches of ``batch`` rows."""

    def __init__(self, block, cache: LayerCache, dtype: torch.dtype, backend: Backend | None, batch: int,
                 kernel_attention: bool):
        attn = block.attn
        self.func = attn.attn_func
        self.layout = cache.layout
        self.ln_0 = _norm_args(block.ln_0)
        self.ln_1 = _norm_args(block.ln_1)
        self.act = None if block.mlp.act is quick_gelu else block.mlp.act
        self.res_scale = block.res_scale
        # A fusing backend takes the layer norms before c_attn and c_fc, quick_gelu after c_fc and the residuals.
        self.fused = backend is not None and backend.fuses and self.act is None and self.res_scale == 1.0
        norm_0, norm_1 = (self.ln_0, self.ln_1) if self.fused else (None, None)

        def product(conv: Conv1D, norm: tuple | None = None, gelu: bool = False):
            if backend is None:
                return Addmm(conv.w, conv.b, dtype)
            return backend.linear(conv.w, conv.b, batch, norm, gelu)

        self.c_attn = product(attn.c_attn, norm_0)
        self.c_proj = product(attn.c_proj)
        self.c_fc = product(block.mlp.c_fc, norm_1, gelu=self.fused)
        self.mlp_proj = product(block.mlp.c_proj)
        linears = (self.c_attn, self.c_proj, self.c_fc, self.mlp_proj)
        # Plain (w, b) products in the compute dtype with the quick_gelu of the priors: the compiled form applies.
        self.fusable = self.act is None and all(isinstance(lin, Addmm) and not lin.cast for lin in linears)
        self.n_state, self.n_head = attn.n_state, attn.n_head
        self.d_head = attn.n_state // attn.n_head
        self.scale = attn.score_scale
        self.key, self.value = cache.key, cache.value
        self.cpu_attention = cpu_kernels.CacheAttention(self.key, self.value, self.n_head, self.scale) \
            if kernel_attention else None
        # Fused numba block products and the kernel attention: the layer runs in the one call of all layers (_one_call).
        whole = self.fused and self.cpu_attention is not None and cpu_kernels.whole_layers() and \
            all(isinstance(lin, cpu_kernels.BlockedLinear) for lin in linears)
        self.whole = cpu_kernels.BlockedLayer(*linears, self.cpu_attention) if whole else None


class StepPlan:
    """One-token steps through ``layers`` (the ``ResAttnBlock`` s of a Transformer) and their ``cache``,
    which holds at least one position (the first, with the encoder states, runs on the plain path).
    ``dtype``: the compute dtype. ``cpu_backend``: on CPU in float32, the name of the
    ``cpu_backends.BACKENDS`` entry that does the products (None: the calibrated choice for this
    machine, shape and batch; the chosen name is ``backend``). ``fuse``: run the layer arithmetic
    through ``torch.compile`` d functions (None: wherever that is possible, CUDA with Triton, weights
    in the compute dtype; ``TORCH_COMPILE_DISABLE=1`` turns it off). The fused kernels round
    intermediate sums once instead of after every op, so half-precision results differ from the
    unfused ones by about that rounding. ``chunk_rows``: a plan for ``chunk`` s (priming on CPU), its
    products built for calls of that many rows and its attention through the numba kernel whatever
    the backend (which must then be named)."""

    def __init__(self, layers, cache: KVCache, dtype: torch.dtype, cpu_backend: str | None = None,
                 fuse: bool | None = None, chunk_rows: int | None = None):
        self.dtype = dtype
        self.cache = cache
        self.chunk_rows = chunk_rows
        device = cache.layers[0].key.device
        self.on_cpu = device.type == "cpu"
        self._shared: dict = {}
        self.fuse = _can_compile(device) if fuse is None else fuse and _can_compile(device)
        if self.fuse:  # resolved once: a step calls them for every layer
            self._fused_in, self._fused_out, self._fused_attention = (
                _compiled(_attn_in_tensors), _compiled(_attn_out_tensors), _compiled(_attention))
        self._blocks = list(layers)
        if self.on_cpu and dtype == torch.float32:
            # A finished window's plan can sit in a reference cycle with its sampler; its packed weights (the size
            # of the model) would then wait for Python's next full collection, which tensors never trigger. Freed
            # before packing a copy of them again (calibration packs every candidate).
            forced = cpu_backends.get_backend(cpu_backend) if cpu_backend is not None else None
            if forced is None or forced.packs:
                gc.collect()
            backend, trial = (forced, []) if forced is not None else self._calibrate()
            self.backend = backend.name
        else:
            backend, trial, self.backend = None, [], None
        self.layers = trial + self._build(backend, len(trial))
        self._whole = self._one_call(self.layers)

    def _build(self, backend: Backend | None, start: int = 0, stop: int | None = None) -> list[_Layer]:
        """Layers ``start`` to ``stop`` (default: the last) with their products through ``backend``."""
        kernels = backend is not None and (backend.attends or self.chunk_rows is not None) and cpu_kernels.available()
        if self.chunk_rows is not None and not kernels:
            raise ValueError("a chunk plan needs the numba attention kernels, which do not run here")
        rows = self.chunk_rows or self.cache.n_samples
        return [_Layer(block, layer_cache, self.dtype, backend, rows, kernels)
                for block, layer_cache in zip(self._blocks[start:stop], self.cache.layers[start:stop])]

    def shape(self) -> dict:
        """What the step's speed depends on, for the calibration cache: products, layers, batch, dtypes."""
        convs = [(b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj) for b in self._blocks]
        products = sorted({tuple(conv.w.shape) for group in convs for conv in group})
        return dict(layers=len(convs), products=products, context=self.cache.layers[0].key.shape[1],
                    batch=self.cache.n_samples, weights=str(convs[0][0].w.dtype), dtype=str(self.dtype))

    def _leading(self, mib: float) -> int:
        """How many leading layers first hold ``mib`` MiB of weights (every layer, for a smaller model)."""
        held = 0.0
        for count, block in enumerate(self._blocks, 1):
            held += sum(p.numel() * p.element_size() for p in block.parameters()) / 2 ** 20
            if held >= mib:
                return count
        return len(self._blocks)

    def _calibrate(self) -> tuple[Backend, list[_Layer]]:
        """The fastest exact backend for this step (see ``cpu_backends.choose``) and the layers its trial built
        (the plan's leading layers; none where the choice was cached).

        Trials run leading layers only: a model's layers share one shape, so they rank the backends as the whole
        step would, and what each backend packs stays small. Every candidate first runs the layers that hold
        ``CALIBRATION_SCREEN_MIB`` of weights; those within ``CALIBRATION_SCREEN_MARGIN`` of the fastest then run
        again on the layers that hold ``CALIBRATION_PROXY_MIB``, so that a close choice is made on a trial less
        favoured by the caches, and the fastest of that longer trial wins. In a trial each candidate's layers are
        built first (those that fail to build or run are passed by), then each runs one step in turn, for
        ``CALIBRATION_STEPS`` turns: a slow moment of a shared machine falls on all of them alike. A backend's time
        is the median of its steps. After ``CALIBRATION_SCREEN_STEPS`` turns, those whose median is over the margin
        of the fastest one's are out of the race and their times stand; the rest go on (none, once one is left).
        The steps run at the cache's position without advancing it: the key and value rows they write are those
        the real step at this position overwrites first."""
        screen, proxy = self._leading(CALIBRATION_SCREEN_MIB), self._leading(CALIBRATION_PROXY_MIB)
        width = self._blocks[0].ln_0.weight.shape[0]
        x = torch.linspace(-1.0, 1.0, self.cache.n_samples * width).view(self.cache.n_samples, width)
        trials: dict[str, tuple] = {}  # name: (its leading layers, their one call)

        def run(name: str) -> float | None:
            """Seconds of one step through ``name``'s trial layers; None (logged) if it fails."""
            self.layers, self._whole = trials[name]
            started = time.perf_counter()
            try:
                self._forward(x)
            except Exception as error:  # noqa: BLE001 (a backend that can not run here is passed by)
                log.debug("cpu backend %s failed: %s", name, error)
                return None
            return time.perf_counter() - started

        def build(backend: Backend, stop: int) -> None:
            """Extend ``backend``'s trial to the first ``stop`` layers and run its warm-up step; where either
            fails, it is passed by."""
            layers = trials.pop(backend.name, ([], None))[0]
            try:
                layers = layers + self._build(backend, len(layers), stop)
                trials[backend.name] = layers, self._one_call(layers)
            except Exception as error:  # noqa: BLE001 (a backend that can not pack here is passed by)
                log.debug("cpu backend %s failed: %s", backend.name, error)
                return
            if run(backend.name) is None:
                del trials[backend.name]

        def race() -> tuple[dict, list]:
            """Every trial's median step time, and those that ran to the end."""
            times: dict = {name: [] for name in trials}
            going = list(trials)
            for turn in range(CALIBRATION_STEPS):
                for name in list(going) if turn % 2 == 0 else going[::-1]:
                    seconds = run(name)
                    if seconds is None:
                        going.remove(name)
                        del trials[name], times[name]
                    else:
                        times[name].append(seconds)
                if turn + 1 == CALIBRATION_SCREEN_STEPS and going:
                    fastest = min(statistics.median(times[name]) for name in going)
                    going = [name for name in going
                             if statistics.median(times[name]) <= CALIBRATION_SCREEN_MARGIN * fastest]
                if turn + 1 >= CALIBRATION_SCREEN_STEPS and len(going) <= 1:
                    break
            return {name: statistics.median(steps) for name, steps in times.items()}, going

        def measure(candidates: list[Backend]) -> dict:
            for backend in candidates:
                build(backend, screen)
            times, going = race()
            result = {name: (seconds, screen) for name, seconds in times.items()}
            if len(going) > 1 and proxy > screen:
                for name in set(trials) - set(going):  # their packed weights go before the finalists pack more
                    del trials[name]
                for backend in candidates:
                    if backend.name in going:
                        build(backend, proxy)
                result.update((name, (seconds, proxy)) for name, seconds in race()[0].items())
            self.layers, self._whole = [], None
            return result

        name = cpu_backends.choose(self.shape(), self._blocks[0].attn.c_attn.w.dtype, measure)
        return cpu_backends.BACKENDS[name], trials.get(name, ([], None))[0]

    # ------------------------------------------------------------------ shared layer arithmetic
    def _heads(self, t: torch.Tensor, L: _Layer) -> torch.Tensor:
        """``(N, K, n_state)`` -> ``(N, H, K, d_head)``."""
        return t.view(t.shape[0], t.shape[1], L.n_head, L.d_head).transpose(1, 2)

    def _attend(self, L: _Layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None, idx: torch.Tensor | None = None,
                fixed_shape: bool = False) -> torch.Tensor:
        """q ``(N, n_state)`` over keys/values ``(N, K, n_state)`` (their rows ``idx`` if given),
        mask ``(1, K)`` (boolean or additive) -> ``(N, n_state)``. ``fixed_shape``: K is the same at
        every step (the static step), so the compiled attention applies without recompiling."""
        if self.fuse and fixed_shape:
            return self._fused_attention(q, k, v, mask, L.n_head, L.scale, idx)
        if idx is not None:
            k, v = k.index_select(1, idx), v.index_select(1, idx)
        qh = q.view(q.shape[0], 1, L.n_head, L.d_head).transpose(1, 2)
        a = F.scaled_dot_product_attention(qh, self._heads(k, L), self._heads(v, L), attn_mask=mask,
                                           scale=L.scale)
        return a.transpose(1, 2).reshape(q.shape[0], L.n_state)

    def _layer(self, L: _Layer, x: torch.Tensor, attend) -> torch.Tensor:
        """One ``ResAttnBlock`` on x ``(N, width)``; ``attend(L, proj)`` maps the attention
        projection ``c_attn`` of the normed input to the attention output before ``c_proj``."""
        if L.fused:  # norms inside c_attn and c_fc, quick_gelu after c_fc, residuals: all in the products
            h = L.c_proj(attend(L, L.c_attn(x)), residual=x)
            return L.mlp_proj(L.c_fc(h), residual=h)
        if self.fuse and L.fusable:
            proj = self._fused_in(x, *L.ln_0, L.c_attn.w, L.c_attn.b)
            return self._fused_out(x, attend(L, proj), L.c_proj.w, L.c_proj.b, *L.ln_1, L.c_fc.w, L.c_fc.b,
                                   L.mlp_proj.w, L.mlp_proj.b, L.res_scale)
        a = attend(L, _attn_in(x, L.ln_0, L.c_attn))
        return _attn_out(x, a, L.c_proj, L.ln_1, L.c_fc, L.mlp_proj, L.act, L.res_scale)

    @staticmethod
    def _qkv(L: _Layer, qkv: torch.Tensor):
        s = L.n_state
        return qkv[:, :s], qkv[:, s:2 * s], qkv[:, 2 * s:]

    # ------------------------------------------------------------------ dynamic (Python int) step
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(N, width)`` at the cache's position -> ``(N, width)``; advances the cache by one."""
        x = self._forward(x)
        self.cache.advance(1)
        return x

    def chunk(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """x ``(N * length, width)`` (sample-major) at the cache's next ``length`` positions -> ``(N * length,
        width)``; advances the cache by ``length``. The positions attend in order through the numba kernel,
        as ``length`` steps would (a plan built with ``chunk_rows``, priming on CPU)."""
        x = self._forward(x, length)
        self.cache.advance(length)
        return x

    def _forward(self, x: torch.Tensor, length: int = 1) -> torch.Tensor:
        """``step`` (``chunk`` of ``length``) without advancing the cache."""
        self._t, self._length = self.cache.position, length
        self._shared.clear()
        if self.on_cpu:
            cpu_kernels.match_threads()
        if self._whole is not None:
            stack, layouts = self._whole
            return stack(x, self.cache.n_samples, np.stack([self._kernel_windows_once(layout) for layout in layouts]))
        for L in self.layers:
            x = self._layer(L, x, self._attend_dynamic)
        return x

    @staticmethod
    def _one_call(layers: list[_Layer]) -> tuple | None:
        """``(cpu_kernels.BlockedLayers, layouts)``: one call of every layer's kernels and the layouts whose windows
        it takes, where each layer has them; else None (the layers step one by one)."""
        if not layers or any(L.whole is None for L in layers):
            return None
        layouts = list({L.layout.key: L.layout for L in layers}.values())
        keys = [layout.key for layout in layouts]
        return cpu_kernels.BlockedLayers([L.whole for L in layers], [keys.index(L.layout.key) for L in layers]), layouts

    def output(self, w: torch.Tensor) -> Product | None:
        """The product ``h (N, in) -> h @ w.T`` of an output weight ``w`` ``(out, in)`` through this plan's
        backend, or None where the plain module should run (off the CPU, the plain backend, or a backend
        not exact for these weights)."""
        backend = cpu_backends.BACKENDS.get(self.backend)
        if backend is None or backend.name == "plain" or not backend.exact(w.dtype):
            return None
        return backend.linear(w.t(), torch.zeros(w.shape[0]), self.cache.n_samples)

    @staticmethod
    def _dynamic_window(layout, t: int) -> tuple[int, int, int, int]:
        return layout.slot(t), *layout.window(t), layout.step

    def _kernel_windows_once(self, layout) -> np.ndarray:
        """The windows of this step's (chunk's) positions in ``layout``, as the numba attention takes them."""
        return self._once(("kernel", layout.key), lambda: cpu_kernels.windows(
            *(self._dynamic_window(layout, t) for t in range(self._t, self._t + self._length))))

    def _attend_dynamic(self, L: _Layer, proj: torch.Tensor) -> torch.Tensor:
        if L.cpu_attention is not None:
            windows = self._kernel_windows_once(L.layout)
            n = self.cache.n_samples
            return L.cpu_attention(proj.view(n, self._length, -1), windows).view(n * self._length, -1)
        slot, start, stop, step = self._once(L.layout.key, lambda: self._dynamic_window(L.layout, self._t))
        if L.func == AttentionPattern.ENCODER_DECODER:
            return self._attend(L, proj, L.key, L.value)
        q, k, v = self._qkv(L, proj)
        if slot >= 0:
            L.key[:, slot] = k
            L.value[:, slot] = v
        return self._attend(L, q, L.key[:, start:stop:step], L.value[:, start:stop:step])

    # ------------------------------------------------------------------ static (tensor position) step
    def static_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x ``(N, width)`` at position ``pos`` (0-d int64 tensor) -> ``(N, width)``.

        Every shape is fixed, so the step can be captured as a CUDA graph. It leaves the cache's
        position to the caller (a replayed graph runs no Python), who advances it after each step.
        """
        self._pos = pos
        self._shared.clear()
        if self.on_cpu:
            cpu_kernels.match_threads()
        for L in self.layers:
            x = self._layer(L, x, self._attend_static)
        self._shared.clear()
        return x

    def _once(self, key: tuple, make):
        """What this step needs that depends only on the position and the layout (slots, windows, masks),
        computed by the first layer that needs it and reused by the others."""
        value = self._shared.get(key)
        if value is None:
            value = self._shared[key] = make()
        return value

    @staticmethod
    def _write(buf: torch.Tensor, slot: torch.Tensor, new: torch.Tensor, keep: torch.Tensor) -> None:
        """``buf[:, slot] = new`` for a one-element slot tensor; where ``keep`` is True the old row stays."""
        new = torch.where(keep, buf.index_select(1, slot)[:, 0], new)
        buf.index_copy_(1, slot, new[:, None])

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        """A boolean mask ``(1, K)`` as the additive one attention takes without converting it per layer."""
        return torch.zeros(visible.shape, dtype=self.dtype, device=visible.device).masked_fill(~visible, -math.inf)

    def _static_window(self, layout) -> tuple:
        slot = layout.slot(self._pos)
        idx, visible = layout.rows(self._pos)
        return slot < 0, slot.clamp(min=0).view(1), idx, self._additive(visible)

    def _attend_static(self, L: _Layer, proj: torch.Tensor) -> torch.Tensor:
        if L.func == AttentionPattern.ENCODER_DECODER:
            return self._attend(L, proj, L.key, L.value, fixed_shape=True)
        q, k, v = self._qkv(L, proj)
        layout = L.layout
        keep, slot, idx, mask = self._once(layout.key, lambda: self._static_window(layout))
        self._write(L.key, slot, k, keep)
        self._write(L.value, slot, v, keep)
        return self._attend(L, q, L.key, L.value, mask, idx, fixed_shape=True)
