"""Drawing tokens from an autoregressive prior through its key/value cache.

``TokenSampler`` runs the sampling loop of a ``ConditionalAutoregressive2D``: a known prefix fills a
fresh cache in chunks, then every step feeds one position and draws its token from
``softmax(filter(logits / temp))``. The steps take the fastest path that gives the plain path's numbers:

* the first position (and every step with ``plain_step``, or while attention is recorded) runs the
  model's plain cached forward;
* on CPU, priming chunks after the first run a ``StepPlan`` of chunks (the numba attention kernel, the
  products of the ``cpu_backend`` named or the plain ones) where numba's kernels run, in chunks of at least
  ``CPU_CHUNK_ROWS`` rows;
* on CPU, and on CUDA with ``cuda_graph=False``, the next ones run a ``StepPlan`` (on CPU through the
  ``cpu_backend`` named, or the one calibrated for this machine: see ``cpu_backends``);
* with ``cuda_graph`` (default: on CUDA), a ``StaticStep`` replays the whole step as a CUDA graph.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from jukebox.inference import cpu_kernels
from jukebox.inference.cpu_backends import check_backend_name
from jukebox.inference.static_step import StaticStep
from jukebox.inference.step_plan import StepPlan
from jukebox.transformer.kv_cache import KVCache
from jukebox.utils.dist_utils import print_once

__all__ = ["TokenSampler", "sample_codes", "draw", "filter_logits", "get_split_chunks"]

Hook = Callable[[], None]

# Rows a CPU priming chunk multiplies at least (samples x positions). Its products are compute-bound and a
# BLAS comes closer to its peak with more rows; ``chunk_size`` exists to bound a GPU's memory, and on a CPU
# the activations of a few hundred positions are small beside the weights.
CPU_CHUNK_ROWS = 512


def get_split_chunks(length: int, chunk_size: int | None) -> list[int]:
    """Chunk sizes for priming length tokens: full chunks, then the remainder. chunk_size None: one pass."""
    if length <= 0:
        return []
    if chunk_size is None:
        return [length]
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    full, rest = divmod(length, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                  filter_value: float = -float("inf")) -> torch.Tensor:
    """Top-k or nucleus (top-p) filtering of logits (..., V); removed entries become filter_value.

    top_k: keep the k largest logits (and any equal to the k-th). top_p: keep the most likely tokens until
    their probability mass exceeds top_p, including the token that crosses it. Equal logits are ranked
    higher index first. Returns a new tensor.
    """
    if top_k and top_p:
        raise ValueError("use either top_k or top_p, not both")
    logits = logits.clone()
    top_k = min(top_k, logits.size(-1))
    if top_k > 0:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits.masked_fill_(logits < kth, filter_value)
    if top_p > 0.0:
        # A stable ascending sort, flipped, gives a descending order that breaks ties the same on every device.
        sorted_indices = torch.sort(logits, dim=-1, stable=True).indices.flip(-1)
        sorted_logits = logits.gather(-1, sorted_indices)
        cum_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_remove = torch.zeros_like(cum_probs, dtype=torch.bool)
        sorted_remove[..., 1:] = cum_probs[..., :-1] > top_p
        remove = torch.zeros_like(sorted_remove).scatter(-1, sorted_indices, sorted_remove)
        logits.masked_fill_(remove, filter_value)
    return logits


def draw(logits: torch.Tensor, temp: float, top_k: int, top_p: float) -> torch.Tensor:
    """One categorical draw per item from ``softmax(filter(logits / temp))``: ``(N, 1, bins) -> (N, 1)``.

    The arithmetic of ``torch.distributions.Categorical(logits=...).sample()``, op for op (logits less their
    log-sum-exp, softmax, ``torch.multinomial``), so a generator state draws the same tokens; without the
    distribution object, whose Python work takes longer than the draw at a step's one token per item."""
    if temp != 1.0:
        logits = logits / temp
    if top_k or top_p:
        logits = filter_logits(logits, top_k=top_k, top_p=top_p)
    probs = F.softmax(logits - logits.logsumexp(-1, keepdim=True), dim=-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, True).view(probs.shape[:-1])


class TokenSampler:
    """Samples from ``model`` (a ``ConditionalAutoregressive2D`` in eval mode).

    ``plain_step``: every step through the model's modules (for comparison). ``cuda_graph``: fixed-shape
    steps, replayed as CUDA graphs on CUDA (None: on CUDA only; True also runs them eagerly elsewhere).
    ``cpu_backend``: the ``cpu_backends.BACKENDS`` name that runs float32 CPU steps and the products of
    priming (None: for steps the fastest exact one, calibrated per machine, for priming ``plain``'s;
    ``"fbgemm_fp16"`` on float32 weights reads them as float16 and ``"onednn_bf16"`` computes in bfloat16:
    faster, not exact).
    ``on_primed`` and ``on_draw`` are called after the prefix is cached and before every draw.
    ``cache`` is the key/value cache of the latest run, ``plan`` its ``StepPlan`` (None on the plain path).
    """

    def __init__(self, model, plain_step: bool = False, cuda_graph: bool | None = None,
                 cpu_backend: str | None = None, on_primed: Hook | None = None, on_draw: Hook | None = None):
        self.model = model
        self.plain_step = plain_step
        self.cuda_graph = cuda_graph
        check_backend_name(cpu_backend)
        self.cpu_backend = cpu_backend
        self.on_primed, self.on_draw = on_primed, on_draw
        self.cache: KVCache | None = None
        self.plan: StepPlan | None = None

    # ------------------------------------------------------------------ public
    def sample(self, n_samples: int, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
               encoder_kv: torch.Tensor | None = None, fp16: bool = False, temp: float = 1.0, top_k: int = 0,
               top_p: float = 0.0, get_preds: bool = False, sample_tokens: int | None = None):
        """Ancestral sampling; see ``ConditionalAutoregressive2D.sample``."""
        prime = torch.empty(n_samples, 0, dtype=torch.long, device=self.model.x_emb.weight.device)
        return self._sample(n_samples, prime, x_cond, y_cond, encoder_kv, fp16, temp, top_k, top_p, get_preds,
                            None, sample_tokens)

    def primed_sample(self, n_samples: int, x: torch.Tensor, x_cond: torch.Tensor | None = None,
                      y_cond: torch.Tensor | None = None, encoder_kv: torch.Tensor | None = None,
                      fp16: bool = False, temp: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                      get_preds: bool = False, chunk_size: int | None = None, sample_tokens: int | None = None):
        """Continue the prefix x ``(N, L)``; see ``ConditionalAutoregressive2D.primed_sample``."""
        if x.shape[0] != n_samples:
            raise ValueError(f"the prefix has {x.shape[0]} items but n_samples is {n_samples}")
        x = x.reshape(n_samples, -1)
        self.model.check_tokens(x, "prefix")
        return self._sample(n_samples, x, x_cond, y_cond, encoder_kv, fp16, temp, top_k, top_p, get_preds,
                            chunk_size, sample_tokens)

    def cached_logits(self, x: torch.Tensor, x_cond: torch.Tensor | None = None, y_cond: torch.Tensor | None = None,
                      encoder_kv: torch.Tensor | None = None, fp16: bool = False, n_prime: int = 0,
                      chunk_size: int | None = None) -> torch.Tensor:
        """Logits ``(N, L, bins)`` of given tokens along the sampling path; see
        ``ConditionalAutoregressive2D.cached_logits``."""
        x = x.reshape(x.shape[0], -1).long()
        self.model.check_tokens(x, "x")
        if not 0 <= n_prime < x.shape[1] <= self.model.input_dims:
            raise ValueError(f"need 0 <= n_prime ({n_prime}) < L ({x.shape[1]}) <= {self.model.input_dims}")
        with torch.no_grad():
            return self._run(x.clone(), n_prime, x_cond, y_cond, encoder_kv, fp16, chunk_size, True, draw=None)[1]

    # ------------------------------------------------------------------ the loop
    def _sample(self, n_samples: int, prime: torch.Tensor, x_cond, y_cond, encoder_kv, fp16: bool, temp: float,
                top_k: int, top_p: float, get_preds: bool, chunk_size: int | None, sample_tokens: int | None):
        m = self.model
        D = m.input_dims
        sample_tokens = D if sample_tokens is None else int(sample_tokens)
        if not 0 < sample_tokens <= D:
            raise ValueError(f"sample_tokens must be in [1, {D}] (the context of this model), got {sample_tokens}")
        n_prime = prime.shape[1]
        if n_prime >= sample_tokens:
            raise ValueError(f"the prefix has {n_prime} tokens, so sample_tokens must exceed it, got {sample_tokens}")
        with torch.no_grad():
            x = torch.zeros(n_samples, sample_tokens, dtype=torch.long, device=prime.device)
            x[:, :n_prime] = prime
            x, preds = self._run(x, n_prime, x_cond, y_cond, encoder_kv, fp16, chunk_size, get_preds,
                                 draw=lambda logits: draw(logits, temp, top_k, top_p))
        x = x.view(n_samples, *m.input_shape) if sample_tokens == D else x
        return (x, preds) if get_preds else x

    def _run(self, x: torch.Tensor, n_prime: int, x_cond, y_cond, encoder_kv, fp16: bool, chunk_size: int | None,
             get_preds: bool, draw: Callable[[torch.Tensor], torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cached loop over x ``(N, L)``, whose first n_prime tokens are known: those fill the cache
        in chunks; then each step takes one token: ``draw(logits)`` when given (written into x), else the
        token already in x. Returns (x, logits ``(N, L, bins)`` or None)."""
        m = self.model
        if m.training:
            raise RuntimeError("sampling needs the model in eval mode: call .eval() first")
        if m.only_encode:
            raise RuntimeError("an encoder-only model (only_encode=True) cannot sample")
        N, L = x.shape
        x_cond = m.check_conds(N, x_cond, y_cond)
        preds = m.x_emb.weight.new_empty(N, L, m.bins) if get_preds else None
        start = m.start_input(N, y_cond).to(m.x_emb.weight.dtype)
        pos_emb = m.pos_emb()
        dtype = m.transformer.compute_dtype(fp16, x.device)
        cache = self.cache = m.transformer.new_cache(N, dtype, x.device)
        self.plan = None
        t, chunk_plan = 0, None
        on_plan = self._primes_on_plan(cache)
        if on_plan and chunk_size is not None:
            chunk_size = max(chunk_size, -(-CPU_CHUNK_ROWS // N))
        chunks = get_split_chunks(n_prime, chunk_size)
        for i, size in enumerate(chunks):
            if i == 1 and on_plan:
                chunk_plan = StepPlan(list(m.transformer._attn_mods), cache, cache.dtype, self.cpu_backend or "plain",
                                      chunk_rows=N * chunks[0])
            if chunk_plan is not None:
                h, cond = m.sampling_inputs(x, t, t + size, start, pos_emb, x_cond)
                h = chunk_plan.chunk(h.to(chunk_plan.dtype).reshape(N * size, -1), size).view(h.shape)
                h = m.add_output_cond(h.float(), cond)
            else:
                h = m.cached_forward(*m.sampling_inputs(x, t, t + size, start, pos_emb, x_cond), encoder_kv, fp16,
                                     cache)
            if get_preds:
                preds[:, t:t + size] = m.x_out(h)
            t += size
        del chunk_plan
        if self.on_primed is not None:
            self.on_primed()
        # Chosen once, after the first position (which fills the encoder states) is cached.
        fast_step, chosen = None, False
        for t in range(n_prime, L):
            if t > 0 and not chosen:
                fast_step, chosen = self._fast_step(cache, start, pos_emb, x_cond), True
            if fast_step is not None:
                logits = fast_step(x, t)
            else:
                h = m.cached_forward(*m.sampling_inputs(x, t, t + 1, start, pos_emb, x_cond), encoder_kv, fp16, cache)
                logits = m.x_out(h)
            if get_preds:
                preds[:, t:t + 1] = logits
            if draw is not None:
                if self.on_draw is not None:
                    self.on_draw()
                x[:, t:t + 1] = draw(logits)
        return x, preds

    def _primes_on_plan(self, cache: KVCache) -> bool:
        """Whether the priming chunks after the first (which fills the encoder states) run a ``StepPlan`` of
        chunks: on CPU in float32, its products through the ``cpu_backend`` named (else ``plain``) and the numba
        attention kernel. Elsewhere (off the CPU, ``plain_step``, recorded attention, no numba kernels here)
        priming stays on the module path."""
        return not self.plain_step and cache.dtype == torch.float32 and cache.layers[0].key.device.type == "cpu" \
            and not any(block.attn.record_attn for block in self.model.transformer._attn_mods) \
            and cpu_kernels.available()

    def _fast_step(self, cache: KVCache, start: torch.Tensor, pos_emb: torch.Tensor, x_cond: torch.Tensor | None
                   ) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
        """``step(x, t) -> logits (N, 1, bins)`` of position t (the cache's) given the tokens x ``(N, L)``,
        advancing the cache; or None where the plain path must run (``plain_step``, recorded attention)."""
        m = self.model
        blocks = list(m.transformer._attn_mods)
        if self.plain_step or any(block.attn.record_attn for block in blocks):
            return None
        plan = self.plan = StepPlan(blocks, cache, cache.dtype, self.cpu_backend)
        use_graph = self.cuda_graph if self.cuda_graph is not None else pos_emb.device.type == "cuda"
        if use_graph:
            static = StaticStep(m, plan, pos_emb, x_cond)
            return lambda x, t: static(x[:, t - 1]).unsqueeze(1)
        project = self._step_output(plan)

        def step(x: torch.Tensor, t: int) -> torch.Tensor:
            h, cond = m.sampling_inputs(x, t, t + 1, start, pos_emb, x_cond)
            h = plan.step(h.to(plan.dtype).view(h.shape[0], -1)).view(h.shape)
            return project(m.add_output_cond(h.float(), cond))

        return step

    def _step_output(self, plan: StepPlan) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x_out`` for one-position steps ``(n, 1, width) -> (n, 1, bins)``, on CPU through the plan's backend
        (which reads the weight as it reads the layers')."""
        product = plan.output(self.model.x_out.weight)
        if product is None:
            return self.model.x_out
        n = plan.cache.n_samples
        return lambda h: product(h.reshape(n, -1)).view(n, 1, -1)


def sample_codes(prior, n_samples: int, z: torch.Tensor | None = None, z_conds: list[torch.Tensor] | None = None,
                 y: torch.Tensor | None = None, fp16: bool = False, temp: float = 1.0, top_k: int = 0,
                 top_p: float = 0.0, chunk_size: int | None = None, sample_tokens: int | None = None,
                 cpu_backend: str | None = None) -> torch.Tensor:
    """Codes ``(N, sample_tokens or n_ctx)`` of one window of ``prior`` (a ``SimplePrior``) given the codes of the
    levels above and labels y, continuing the prefix z ``(N, L)`` if given; ``cpu_backend`` as ``TokenSampler``'s."""
    for name, value in (("z", z), ("y", y), *((f"z_conds[{i}]", c) for i, c in enumerate(z_conds or []))):
        if value is not None and value.shape[0] != n_samples:
            raise ValueError(f"{name} has {value.shape[0]} items but n_samples is {n_samples}")
    prior.check_inputs(z, z_conds, y)
    no_past_context = z is None or z.shape[1] == 0
    print_once(f"{'Ancestral' if no_past_context else 'Primed'} sampling {n_samples} samples with temp={temp}, "
               f"top_k={top_k}, top_p={top_p}")
    sampler = TokenSampler(prior.prior, cpu_backend=cpu_backend)
    kwargs = dict(fp16=fp16, temp=temp, top_k=top_k, top_p=top_p)
    with torch.no_grad():
        x_cond, y_cond, prime = prior.get_cond(z_conds, y)
        if prior.single_enc_dec:
            # The lyric tokens are always the start of the prefix.
            xs = [prime] if no_past_context else [prime, z]
            z, x_cond = prior.prior_preprocess(xs, [None, x_cond])
            if sample_tokens is not None:
                sample_tokens += prior.n_tokens
            z = sampler.primed_sample(n_samples, z, x_cond, y_cond, chunk_size=chunk_size, sample_tokens=sample_tokens,
                                      **kwargs)
            return prior.prior_postprocess(z)
        encoder_kv = prior.get_encoder_kv(prime, fp16=fp16, sample=True)
        if no_past_context:
            return sampler.sample(n_samples, x_cond, y_cond, encoder_kv, sample_tokens=sample_tokens, **kwargs)
        return sampler.primed_sample(n_samples, z, x_cond, y_cond, encoder_kv, chunk_size=chunk_size,
                                     sample_tokens=sample_tokens, **kwargs)
