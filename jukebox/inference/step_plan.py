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
* ``static_step(x, pos)``: the position is a 0-d int64 tensor and every shape is fixed: cache
  writes are ``index_copy_`` at computed slots and each pattern sees a fixed window with a mask.
  Nothing in it depends on Python values of the position, so it can be captured once as a CUDA
  graph (see ``jukebox.inference.static_step``) and replayed for every token. On CUDA its
  arithmetic between the matrix products runs as ``torch.compile`` d fused kernels.

Both take slots and windows from the layers' ``CacheLayout`` s, as the plain path does.

On CPU in float32, the numba kernels of ``cpu_kernels`` (where numba has a parallel threading
layer) do the attention of the new position in ``step``, with its cache write, and for float32
weights the products with the layer norms, activation and residual adds around them; they read the
weights at about the memory bandwidth and differ from the plain path by float32 rounding.

Weights: on CUDA they are used as stored; float16 weights on CPU (``fp16_params`` checkpoints) run
through FBGEMM's float16-weight GEMM, which reads half the bytes and computes in float32 on the
exact float16 values. ``cpu_fp16_weights=True`` packs float32 weights to float16 the same way:
faster on CPU but no longer exact (an opt-in trade, off by default).
"""
from __future__ import annotations

import math
import warnings
import weakref

import torch
import torch.nn.functional as F

from jukebox.inference import cpu_kernels
from jukebox.transformer.kv_cache import KVCache, LayerCache
from jukebox.transformer.ops import Conv1D, quick_gelu
from jukebox.transformer.patterns import AttentionPattern

__all__ = ["StepPlan", "fp16_gemm_available"]


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


def fp16_gemm_available() -> bool:
    """Whether this PyTorch build has FBGEMM's float16-weight GEMM (x86 CPU builds)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized,
                                                                                "linear_dynamic_fp16")


class _Linear:
    """A ``Conv1D`` resolved for one run: ``(M, n_in) -> (M, n_out)`` in the compute dtype.

    Float32 weights on CPU are copied, for the run, into column tiles (``cpu_kernels.TiledLinear``,
    which also applies ``norm`` to its input and ``gelu`` to its output), read at about the memory bandwidth
    where the BLAS reads a plain ``(n_in, n_out)`` matrix times a few rows at a fraction of it.
    Results differ from ``addmm`` by float32 rounding. The copy holds the weights' memory again
    while the run lasts.
    """

    __slots__ = ("w", "b", "packed", "cast", "tiles")

    def __init__(self, conv: Conv1D, dtype: torch.dtype, pack_fp16: bool, tile: bool = False,
                 norm: tuple | None = None, gelu: bool = False):
        self.packed = self.tiles = None
        self.cast = False
        if pack_fp16:
            self.packed = _packed_fp16(conv)
            self.w = self.b = None
            return
        self.b = conv.b.detach().to(dtype)
        self.w = conv.w.detach()
        # Off CPU a float32 copy of float16 weights would double their memory: cast per call instead.
        self.cast = self.w.dtype != dtype
        if tile and not self.cast:
            self.tiles = cpu_kernels.TiledLinear(self.w, self.b, norm, gelu)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        if self.tiles is not None:
            return self.tiles(x)
        return torch.addmm(self.b, x, self.w.to(x.dtype) if self.cast else self.w)


_PACKED: weakref.WeakKeyDictionary[Conv1D, tuple] = weakref.WeakKeyDictionary()


def _packed_fp16(conv: Conv1D):
    """fbgemm's float16 packing of ``conv`` (float16 stored weights round-trip exactly).

    Packing a 161 M parameter prior takes seconds, so the packed copy (the memory of float16
    weights) is kept while the module lives and redone only when its weight or bias changes.
    """
    w, b = conv.w, conv.b
    key = (w.data_ptr(), w._version, w.dtype, b.data_ptr(), b._version)
    cached = _PACKED.get(conv)
    if cached is None or cached[0] != key:
        wt = w.detach().t().to(torch.float32).contiguous()
        cached = _PACKED[conv] = (key, torch.ops.quantized.linear_prepack_fp16(wt, b.detach().to(torch.float32)))
    return cached[1]


def _norm_args(ln: torch.nn.LayerNorm) -> tuple:
    return ln.weight.detach(), ln.bias.detach(), ln.eps


class _Layer:
    """Everything one ``ResAttnBlock`` needs for a step, as plain attributes."""

    def __init__(self, block, cache: LayerCache, dtype: torch.dtype, pack_fp16: bool):
        attn = block.attn
        self.func = attn.attn_func
        self.layout = cache.layout
        self.ln_0 = _norm_args(block.ln_0)
        self.ln_1 = _norm_args(block.ln_1)
        self.act = None if block.mlp.act is quick_gelu else block.mlp.act
        self.res_scale = block.res_scale
        convs = (attn.c_attn, attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        cpu_float32 = attn.c_attn.w.device.type == "cpu" and dtype == torch.float32
        tile = cpu_float32 and not pack_fp16
        # The numba kernels attend (any weights), and with tiles also do the layer norms before
        # c_attn and c_fc, the activation after c_fc and the residual adds.
        kernels = cpu_float32 and cpu_kernels.available()
        self.cpu_fused = tile and kernels and self.act is None and self.res_scale == 1.0 and all(
            conv.w.dtype == torch.float32 for conv in convs)
        norm_0, norm_1 = (self.ln_0, self.ln_1) if self.cpu_fused else (None, None)
        self.c_attn = _Linear(attn.c_attn, dtype, pack_fp16, tile, norm_0)
        self.c_proj = _Linear(attn.c_proj, dtype, pack_fp16, tile)
        self.c_fc = _Linear(block.mlp.c_fc, dtype, pack_fp16, tile, norm_1, gelu=self.cpu_fused)
        self.mlp_proj = _Linear(block.mlp.c_proj, dtype, pack_fp16, tile)
        linears = (self.c_attn, self.c_proj, self.c_fc, self.mlp_proj)
        # Plain (w, b) products in the compute dtype with the quick_gelu of the priors: the fused form applies.
        self.fusable = self.act is None and all(lin.packed is None and not lin.cast for lin in linears)
        self.n_state, self.n_head = attn.n_state, attn.n_head
        self.d_head = attn.n_state // attn.n_head
        self.scale = attn.score_scale
        self.key, self.value = cache.key, cache.value
        self.cpu_attention = cpu_kernels.CacheAttention(self.key, self.value, self.n_head, self.scale) \
            if kernels else None


class StepPlan:
    """One-token steps through ``layers`` (the ``ResAttnBlock`` s of a Transformer) and their ``cache``,
    which holds at least one position (the first, with the encoder states, runs on the plain path).
    ``dtype``: the compute dtype. ``fuse``: run
    the layer arithmetic through ``torch.compile`` d functions (None: wherever that is possible,
    CUDA with Triton, weights in the compute dtype; ``TORCH_COMPILE_DISABLE=1`` turns it off). The
    fused kernels round intermediate sums once instead of after every op, so half-precision results
    differ from the unfused ones by about that rounding."""

    def __init__(self, layers, cache: KVCache, dtype: torch.dtype, cpu_fp16_weights: bool = False,
                 fuse: bool | None = None):
        self.dtype = dtype
        self.cache = cache
        device = cache.layers[0].key.device
        self.on_cpu = device.type == "cpu"
        cpu_float32 = self.on_cpu and dtype == torch.float32
        if cpu_fp16_weights and cpu_float32 and not fp16_gemm_available():
            warnings.warn("cpu_fp16_weights needs PyTorch's FBGEMM (x86 builds); using the float32 weights",
                          stacklevel=3)
        self.layers = []
        for block, layer_cache in zip(layers, cache.layers):
            stored_fp16 = block.attn.c_attn.w.dtype == torch.float16
            pack = cpu_float32 and (stored_fp16 or cpu_fp16_weights) and fp16_gemm_available()
            self.layers.append(_Layer(block, layer_cache, dtype, pack))
        self.fuse = _can_compile(device) if fuse is None else fuse and _can_compile(device)
        if self.fuse:  # resolved once: a step calls them for every layer
            self._fused_in, self._fused_out, self._fused_attention = (
                _compiled(_attn_in_tensors), _compiled(_attn_out_tensors), _compiled(_attention))
        self._shared: dict = {}

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
        if L.cpu_fused:  # norms inside c_attn and c_fc, quick_gelu after c_fc, residuals: all in the kernels
            h = L.c_proj.tiles(attend(L, L.c_attn(x)), residual=x)
            return L.mlp_proj.tiles(L.c_fc(h), residual=h)
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
        self._t = self.cache.position
        self._shared.clear()
        if self.on_cpu:
            cpu_kernels.match_threads()
        for L in self.layers:
            x = self._layer(L, x, self._attend_dynamic)
        self.cache.advance(1)
        return x

    def _dynamic_window(self, layout) -> tuple[int, int, int, int]:
        return layout.slot(self._t), *layout.window(self._t), layout.step

    def _attend_dynamic(self, L: _Layer, proj: torch.Tensor) -> torch.Tensor:
        slot, start, stop, step = self._once(L.layout.key, lambda: self._dynamic_window(L.layout))
        if L.cpu_attention is not None:
            return L.cpu_attention(proj, slot, start, stop, step)
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
