"""The fast sampling paths (jukebox/inference: step plans, fixed-shape steps, CPU kernels) against the plain
module path.

For every attention function and a mix of them, one-token steps through the ``StepPlan``, both the
Python-position step and the fixed-shape (CUDA-graph-ready) step run eagerly on CPU, must give the
logits of the plain path and of one full forward pass. Where CUDA is available the prior-level tests
also run there, with the step captured and replayed as a real CUDA graph. No test here measures time.
"""
from __future__ import annotations

import functools
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_weights
from jukebox.inference import cpu_backends, cpu_kernels, sampler
from jukebox.inference.sampler import TokenSampler
from jukebox.inference.step_plan import StepPlan
from jukebox.prior.autoregressive import ConditionalAutoregressive2D
from jukebox.transformer.ops import convert_conv_weights_to_fp16
from jukebox.transformer.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

W, N_CTX, BLOCKS, HEADS, SPREAD, ENC, PRIME = 32, 72, 6, 2, 3, 16, 16
N = 2
# CPU always; CUDA too where there is one (the CUDA graph capture and half-precision steps).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# One layer per attention function, then orders mixing them.
ORDERS = {f"func_{f}": (order, depth) for f, order, depth in
          [(0, 0, 1), (1, 1, 1), (2, 9, 4), (3, 2, 3), (4, 3, 2), (5, 4, 2), (6, 6, 4), (7, 12, 16)]}
ORDERS.update(order_2=(2, 3), order_8=(8, 10), order_11=(11, 16))


def _transformer(order: int, depth: int, res_scale: bool = False) -> Transformer:
    t = Transformer(W, N_CTX, HEADS, depth, mask=True, attn_order=order, blocks=BLOCKS, spread=SPREAD,
                    encoder_dims=ENC, prime_len=PRIME, res_scale=res_scale)
    randomize_weights(t, seed=order)
    return t.eval()


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, N_CTX, W, generator=g), torch.randn(N, ENC, W, generator=g)


def _stepped(model: Transformer, x, enc, n_prime: int, fast: bool, static: bool = False,
             cpu_backend: str | None = None) -> torch.Tensor:
    """Prime n_prime positions in one chunk, then step one position at a time (through a StepPlan if fast)."""
    cache = model.new_cache(N)
    outs = [model(x[:, :n_prime], enc, cache=cache)]
    plan = StepPlan(list(model._attn_mods), cache, torch.float32, cpu_backend) if fast else None
    for t in range(n_prime, N_CTX):
        xt = x[:, t:t + 1]
        if plan is None:
            out = model(xt, enc, cache=cache)
        elif static:
            out = plan.static_step(xt[:, 0], torch.tensor(t)).unsqueeze(1)
            cache.advance(1)  # what StaticStep does after every replay
        else:
            out = plan.step(xt[:, 0]).unsqueeze(1)
        outs.append(out)
    return torch.cat(outs, dim=1)


def _plan(model: Transformer, x, enc, cpu_backend: str | None = None) -> StepPlan:
    """The step plan after one plain position."""
    cache = model.new_cache(N)
    model(x[:, :1], enc, cache=cache)
    return StepPlan(list(model._attn_mods), cache, torch.float32, cpu_backend)


def _runnable(name: str) -> str:
    """A CPU backend's name, after skipping (saying why) where it can not run."""
    reason = cpu_backends.BACKENDS[name].missing()
    if reason is not None:
        pytest.skip(f"cpu backend {name} can not run here: {reason}")
    return name


@pytest.fixture(params=[name for name, b in cpu_backends.BACKENDS.items() if b.exact(torch.float32)])
def backend(request) -> str:
    """Every CPU backend exact for float32 weights (``fbgemm_fp16`` rounds them: an opt-in, tested on its own)."""
    return _runnable(request.param)


@pytest.fixture(params=list(cpu_backends.BACKENDS))
def any_backend(request) -> str:
    return _runnable(request.param)


@pytest.mark.parametrize("name", sorted(ORDERS))
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fast_step_matches_plain_path_and_full_forward(name, static, backend):
    order, depth = ORDERS[name]
    model = _transformer(order, depth)
    x, enc = _inputs()
    with torch.no_grad():
        full = model(x, enc)
        plain = _stepped(model, x, enc, n_prime=1, fast=False)
        fast = _stepped(model, x, enc, n_prime=1, fast=True, static=static, cpu_backend=backend)
        primed = _stepped(model, x, enc, n_prime=29, fast=True, static=static, cpu_backend=backend)
    torch.testing.assert_close(plain, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(primed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_chunk_plan_primes_like_the_full_forward(name, backend):
    """Priming on CPU: after one plain position, chunks of several positions (crossing block boundaries, the
    last one shorter) through a StepPlan built with chunk_rows, with the numba attention kernel taking the
    positions in order, give the full forward's outputs and leave a cache that steps go on from."""
    _needs_numba()
    order, depth = ORDERS[name]
    model = _transformer(order, depth)
    x, enc = _inputs(3)
    with torch.no_grad():
        full = model(x, enc)
        cache = model.new_cache(N)
        outs = [model(x[:, :1], enc, cache=cache)]
        plan = StepPlan(list(model._attn_mods), cache, torch.float32, backend, chunk_rows=N * 13)
        t = 1
        for size in (13, 7, 13, 13, 5):
            outs.append(plan.chunk(x[:, t:t + size].reshape(N * size, W), size).view(N, size, W))
            t += size
        assert cache.position == t == 52
        step = StepPlan(list(model._attn_mods), cache, torch.float32, backend)
        outs += [step.step(x[:, u]).unsqueeze(1) for u in range(t, N_CTX)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)
    # The numba block products run each layer, attention included, in one kernel call.
    assert [L.whole is not None for L in plan.layers + step.layers] == [backend.startswith("numba_blocks")] * 2 * depth


def test_fast_steps_and_plain_chunks_share_the_cache():
    model = _transformer(2, 3, res_scale=True)
    x, enc = _inputs(1)
    with torch.no_grad():
        full = model(x, enc)
        cache = model.new_cache(N)
        model(x[:, :5], cache=cache)
        plan = StepPlan(list(model._attn_mods), cache, torch.float32)
        out = plan.step(x[:, 5]).unsqueeze(1)
        assert cache.position == 6
        # A chunk after fast steps goes through the plain path on the same caches, and steps go on after it.
        rest = model(x[:, 6:20], cache=cache)
        assert cache.position == 20
        after = plan.step(x[:, 20]).unsqueeze(1)
        assert cache.position == 21
    torch.testing.assert_close(torch.cat([out, rest, after], 1), full[:, 5:21], atol=1e-5, rtol=0)


def test_sampler_uses_the_plain_path_where_it_must():
    m = _prior()
    x, x_cond, y_cond, enc = _prior_inputs(2)
    with torch.no_grad():
        cache = m.transformer.new_cache(N)
        m.transformer(torch.randn(N, 3, W), enc, cache=cache)
        with pytest.raises(RuntimeError, match="new cache"):
            m.transformer(torch.randn(1, 1, W), enc[:1], cache=cache)  # another batch
    m.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        m.sample(N, x_cond, y_cond, enc, sample_tokens=4)
    m.eval()
    start = m.start_input(N, y_cond)
    m.transformer.set_record_attn(True)  # recorded attention needs the module path
    assert TokenSampler(m)._fast_step(m.transformer.new_cache(N), start, m.pos_emb(), x_cond) is None
    m.transformer.set_record_attn(False)
    assert TokenSampler(m, plain_step=True)._fast_step(m.transformer.new_cache(N), start, m.pos_emb(),
                                                       x_cond) is None


def _prior(device: str = "cpu") -> ConditionalAutoregressive2D:
    m = ConditionalAutoregressive2D((N_CTX,), bins=40, width=W, depth=4, heads=HEADS, attn_order=6, blocks=BLOCKS,
                                    x_cond=True, y_cond=True, encoder_dims=ENC)
    randomize_weights(m, seed=7)
    return m.eval().to(device)


def _prior_inputs(seed: int, device: str = "cpu"):
    """Tokens ``(N, N_CTX)`` and x_cond, y_cond, encoder_kv for ``_prior``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(40, (N, N_CTX), generator=g)
    conds = (torch.randn(N, N_CTX, W, generator=g), torch.randn(N, 1, W, generator=g),
             torch.randn(N, ENC, W, generator=g))
    return x.to(device), *(c.to(device) for c in conds)


def test_prior_cached_logits_fast_equal_plain_and_forward(monkeypatch):
    monkeypatch.setattr(sampler, "CPU_CHUNK_ROWS", 1)  # the asked chunks of 4, so that the chunk plan runs
    m = _prior()
    x, x_cond, y_cond, enc = _prior_inputs(3)
    with torch.no_grad():
        _, full = m(x, x_cond, y_cond, enc, get_preds=True)
        fast = m.cached_logits(x, x_cond, y_cond, enc, n_prime=10, chunk_size=4)
        plain = TokenSampler(m, plain_step=True).cached_logits(x, x_cond, y_cond, enc, n_prime=10, chunk_size=4)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=0)


def test_cpu_priming_chunks_multiply_at_least_cpu_chunk_rows(monkeypatch):
    """On CPU, chunk_size (which bounds a GPU's memory) is raised until a chunk multiplies CPU_CHUNK_ROWS rows
    (samples x positions): 12 rows over N = 2 samples make chunks of 6 where 4 were asked, and the logits are
    the plain path's."""
    _needs_numba()
    monkeypatch.setattr(sampler, "CPU_CHUNK_ROWS", 12)
    lengths = []
    chunk = StepPlan.chunk
    monkeypatch.setattr(StepPlan, "chunk", lambda plan, x, length: lengths.append(length) or chunk(plan, x, length))
    m = _prior()
    x, x_cond, y_cond, enc = _prior_inputs(4)
    with torch.no_grad():
        got = m.cached_logits(x, x_cond, y_cond, enc, n_prime=20, chunk_size=4)
        plain = TokenSampler(m, plain_step=True).cached_logits(x, x_cond, y_cond, enc, n_prime=20, chunk_size=4)
    assert lengths == [6, 6, 2]  # after the first chunk of 6, which fills the encoder states on the module path
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_prior_static_step_matches_plain_path(device):
    """cuda_graph=True runs the fixed-shape step (a replayed CUDA graph on CUDA, eagerly elsewhere):
    same logits, same draws. On CUDA, half precision too: the replayed fp16 step gives the eager fp16
    step's logits, both within half-precision rounding of the float32 forward pass."""
    m = _prior(device)
    x, x_cond, y_cond, enc = _prior_inputs(5, device)
    atol = 1e-5 if device == "cpu" else 1e-4  # CUDA kernels reduce in another order
    graph_steps, plain_steps = TokenSampler(m, cuda_graph=True), TokenSampler(m, cuda_graph=False)
    with torch.no_grad():
        plain = plain_steps.cached_logits(x, x_cond, y_cond, enc, n_prime=7, chunk_size=3)
        static = graph_steps.cached_logits(x, x_cond, y_cond, enc, n_prime=7, chunk_size=3)
        ancestral = graph_steps.cached_logits(x, x_cond[:, :1], y_cond, enc)
        ancestral_plain = plain_steps.cached_logits(x, x_cond[:, :1], y_cond, enc)
    torch.testing.assert_close(static, plain, atol=atol, rtol=0)
    torch.testing.assert_close(ancestral, ancestral_plain, atol=atol, rtol=0)
    samples = []
    for steps in (graph_steps, plain_steps):
        torch.manual_seed(1)
        samples.append(steps.sample(N, x_cond, y_cond, enc, sample_tokens=30))
    assert torch.equal(samples[0], samples[1])
    if device == "cuda":
        with torch.no_grad():
            _, full = m(x, x_cond, y_cond, enc, get_preds=True)
            eager = plain_steps.cached_logits(x, x_cond, y_cond, enc, fp16=True, n_prime=7, chunk_size=3)
            graph = graph_steps.cached_logits(x, x_cond, y_cond, enc, fp16=True, n_prime=7, chunk_size=3)
        torch.testing.assert_close(graph, eager, atol=5e-3, rtol=0)  # fp16 rounding, other sum order
        torch.testing.assert_close(eager, full, atol=2e-2, rtol=0)


def test_seeded_sampling_is_the_same_on_both_paths():
    m = _prior()
    g = torch.Generator().manual_seed(4)
    x_cond, y_cond, enc = (torch.randn(N, N_CTX, W, generator=g), torch.randn(N, 1, W, generator=g),
                           torch.randn(N, ENC, W, generator=g))
    tokens = []
    for plain_step in (False, True):
        torch.manual_seed(0)
        tokens.append(TokenSampler(m, plain_step=plain_step).sample(N, x_cond, y_cond, enc, sample_tokens=40))
    assert torch.equal(tokens[0], tokens[1])


def test_fp16_weights_are_exact_and_the_opt_in_rounds(any_backend):
    """Float16-stored weights (fp16_params) step through every exact backend on the same values as the plain
    path; forcing fbgemm_fp16 on float32 weights rounds them to float16 in the one-token steps only, and
    onednn_bf16 (where the CPU has bfloat16) computes within bfloat16 rounding of them."""
    x, enc = _inputs(2)
    half = convert_conv_weights_to_fp16(_transformer(6, 4))
    with torch.no_grad():
        ref = _stepped(half, x, enc, n_prime=1, fast=False)
        got = _stepped(half, x, enc, n_prime=1, fast=True, cpu_backend=any_backend)
    if any_backend == "onednn_bf16":  # an opt-in that computes in bfloat16
        assert not cpu_backends.BACKENDS[any_backend].exact(torch.float16)
        torch.testing.assert_close(got, ref, atol=5e-2, rtol=0)
        assert (got - ref).abs().max() > 1e-4
        return
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert cpu_backends.BACKENDS[any_backend].exact(torch.float16)
    if any_backend != "fbgemm_fp16":
        return
    model = _transformer(6, 4)
    with torch.no_grad():
        exact = _stepped(model, x, enc, n_prime=1, fast=True, cpu_backend="plain")
        rounded = _stepped(model, x, enc, n_prime=1, fast=True, cpu_backend="fbgemm_fp16")
        linear = _plan(model, x, enc, cpu_backend="fbgemm_fp16").layers[0].c_fc
        y = torch.randn(3, W)
        conv = model._attn_mods[0].mlp.c_fc
        expected = torch.addmm(conv.b, y, conv.w.half().float())
    torch.testing.assert_close(linear(y), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(rounded, exact, atol=1e-2, rtol=0)
    assert (exact - rounded).abs().max() > 1e-6  # the opt-in really computes with rounded weights


def test_bench_helpers_count_weights_and_steps(monkeypatch):
    """The benchmark's floor counts every weight a step reads; its timer sees the priming and every step, on both
    step paths (no timing asserted)."""
    from jukebox.bench import _timed, weight_bytes_per_step

    monkeypatch.setattr(sampler, "CPU_CHUNK_ROWS", 1)  # the asked chunks of 4
    m = _prior()
    linear_w = sum(p.numel() for n, p in m.transformer.named_parameters() if n.endswith(".w"))
    everything = sum(p.numel() for p in m.transformer.parameters()) + m.x_out.weight.numel()
    assert weight_bytes_per_step(m) == 4 * everything
    assert weight_bytes_per_step(m, fp16_linear_weights=True) == 4 * everything - 2 * linear_w
    g = torch.Generator().manual_seed(6)
    conds = (torch.randn(1, N_CTX, W, generator=g), torch.randn(1, 1, W, generator=g),
             torch.randn(1, ENC, W, generator=g))
    prefix = torch.randint(40, (1, 9), generator=g)
    for graph in (False, True):
        timer, total = _timed(m, torch.device("cpu"), lambda sampler: sampler.primed_sample(
            1, prefix, *conds, chunk_size=4, sample_tokens=20), cuda_graph=graph)
        # The first priming chunk calls the transformer; with numba's kernels the later chunks run a chunk plan
        # (without them, the transformer); the steps call no module (step plan or static step).
        assert [n for _, n in timer.calls] == ([4] if cpu_kernels.available() else [4, 4, 1])
        assert len(timer.draws) == 11 and len(timer.step_times()) == 9
        assert timer.calls[0][0] <= timer.primed <= timer.draws[0] and 0 <= timer.prime_time() <= total
        # attn_order 6 over 4 layers: block, column, previous block, lyrics; keys + values of n_state W // 4 floats.
        bc = N_CTX // BLOCKS
        assert timer.cache_bytes == 2 * (bc + N_CTX + 2 * bc + ENC) * (W // 4) * 4
    plain, _ = _timed(m, torch.device("cpu"), lambda sampler: sampler.primed_sample(
        1, prefix, *conds, chunk_size=4, sample_tokens=20), plain_step=True)
    assert [n for _, n in plain.calls] == [4, 4, 1] + [1] * 11  # with plain_step every step calls the transformer


def test_bench_frees_a_run_with_its_timer():
    """A run's sampler (its packed weights and cache) goes as soon as the benchmark drops the run's timer, without
    waiting for a garbage collection: otherwise the next run would start with the last one's memory still held."""
    from jukebox.bench import _timed

    m = _prior()
    g = torch.Generator().manual_seed(7)
    conds = (torch.randn(1, N_CTX, W, generator=g), torch.randn(1, 1, W, generator=g),
             torch.randn(1, ENC, W, generator=g))
    timer, _ = _timed(m, torch.device("cpu"), lambda sampler: sampler.sample(1, *conds, sample_tokens=3))
    assert len(timer.draws) == 3
    sampler_ref = weakref.ref(timer.sampler)
    gc.disable()
    try:
        del timer
        assert sampler_ref() is None
    finally:
        gc.enable()


def test_bench_rounds_keep_no_sampler_alive():
    """The benchmark's alternating rounds keep each run's times, not its timer: a timer holds the sampler with its
    packed weights and cache, and keeping every round's would run a machine out of memory."""
    from jukebox.bench import StepTimer, _time_backends, _time_priming

    alive, most_alive = [], []

    def sample(n, prefix=None, sample_tokens=None, chunk=None, **forced):
        gc.collect()
        most_alive.append(sum(ref() is not None for ref in alive))  # samplers of earlier runs still held
        timer = StepTimer(torch.device("cpu"), calls=[(0.0, 4)], draws=[1.0, 2.0, 3.5], primed=0.5)
        timer.sampler = torch.empty(1)  # stands for the sampler and everything it holds
        alive.append(weakref.ref(timer.sampler))
        return timer, 4.0

    medians = _time_backends(sample, 1, 2, 2, 1.0, torch.float32, log=lambda line: None)
    assert set(medians) == set(cpu_backends.BACKENDS) - {n for n, b in cpu_backends.BACKENDS.items() if b.missing()}
    assert all(t == 1.5 for t in medians.values())
    out = {}
    _time_priming(out, sample, _prior(), torch.device("cpu"), torch.Generator(), 1, 8, 4, 2, 2, lambda line: None)
    assert out["priming"]["seconds"] == 0.5 and out["priming"]["new_tokens_per_s"] == 2 / 3.5
    assert len(alive) > 2 * len(medians) and max(most_alive) == 0


@pytest.mark.parametrize("heads,with_idx", [(1, False), (2, True), (4, False)])
def test_written_out_attention_matches_sdpa(heads, with_idx):
    """The one-query attention the CUDA step compiles (fast_step._attention) equals
    scaled_dot_product_attention on the same cache rows and additive mask, including a mask that
    hides keys and a gather of strided rows (column attention)."""
    from jukebox.inference.step_plan import _attention

    g = torch.Generator().manual_seed(heads)
    n, keys, state = 3, 24, 16
    q, key, value = (torch.randn(n, state, generator=g), torch.randn(n, keys, state, generator=g),
                     torch.randn(n, keys, state, generator=g))
    idx = torch.arange(2, keys, 6) if with_idx else None
    rows = keys if idx is None else len(idx)
    visible = torch.arange(rows) <= rows // 2
    mask = torch.zeros(1, rows).masked_fill(~visible, float("-inf"))
    scale = 0.3
    got = _attention(q, key, value, mask, heads, scale, idx)
    k, v = (key, value) if idx is None else (key[:, idx], value[:, idx])
    split = lambda t: t.view(n, -1, heads, state // heads).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(split(q[:, None]), split(k), split(v), attn_mask=visible[None], scale=scale)
    torch.testing.assert_close(got, ref.transpose(1, 2).reshape(n, state), atol=1e-6, rtol=1e-5)
    # Hidden keys do not matter.
    key[:, ~visible if idx is None else idx[~visible]] = 1e4
    torch.testing.assert_close(_attention(q, key, value, mask, heads, scale, idx), got, atol=1e-6, rtol=1e-5)


def _needs_numba():

    if not cpu_kernels.available():
        pytest.skip("numba has no OpenMP/TBB threading layer here")


@pytest.mark.parametrize("weights", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["TiledLinear", "BlockedLinear", "BlockedLinear narrow",
                                  "BlockedLinear narrow unprefetched"])
@pytest.mark.parametrize("n_out", [96, 64, 7])
@pytest.mark.parametrize("rows", [1, 3, 9])
@pytest.mark.parametrize("n_in", [24, 72])
def test_kernel_products_equal_addmm(n_in, n_out, rows, kind, weights):
    """Float32 CPU steps multiply through the numba kernels (cpu_kernels.TiledLinear's zero-padded column tiles,
    BlockedLinear's four-by-four blocks, summed in whole or half-width vectors, single rows with or without
    software prefetch): addmm's numbers to float32 rounding for any batch and width, float16 weights read at two
    bytes and widened exactly, with the layer norm before and quick_gelu and the residual after the product when
    asked. The widths cover BlockedLinear's whole cache lines of weights (vectors) and the rest of a row past
    them, its groups of four rows, short groups and single rows, and outputs with and without rows far enough
    ahead to prefetch."""
    from jukebox.transformer.ops import Conv1D

    _needs_numba()
    linear = getattr(cpu_kernels, kind.split()[0])
    if "narrow" in kind:
        linear = functools.partial(linear, narrow=True, single_prefetch=not kind.endswith("unprefetched"))
    conv = Conv1D(n_in, n_out)
    randomize_weights(conv, seed=n_out)
    conv.b.data.normal_()
    w = conv.w.detach().to(weights)
    g = torch.Generator().manual_seed(rows)
    x, residual = torch.randn(rows, n_in, generator=g) * 3 + 1, torch.randn(rows, n_out, generator=g)
    norm = (torch.randn(n_in, generator=g), torch.randn(n_in, generator=g), 1e-5)
    plain = linear(w, conv.b)
    assert plain.weight.dtype == weights  # float16 stays at two bytes
    if kind == "TiledLinear":
        assert plain.tiles.shape == (-(-n_out // cpu_kernels.TILE), n_in, cpu_kernels.TILE)
    else:  # blocks of four outputs, inputs padded to whole vectors
        from jukebox.inference.numba_kernels import LANES as lanes
        assert plain.weight.shape == (-(-n_out // 4), 4 * lanes * -(-n_in // lanes))
    wf = w.float()
    torch.testing.assert_close(plain(x), torch.addmm(conv.b, x, wf), atol=1e-5, rtol=1e-5)
    normed = linear(w, conv.b, norm)(x, residual=residual)
    y = torch.addmm(conv.b, F.layer_norm(x, (n_in,), *norm), wf)
    torch.testing.assert_close(normed, residual + y, atol=1e-5, rtol=1e-5)
    activated = linear(w, conv.b, norm, gelu=True)(x)
    torch.testing.assert_close(activated, y * torch.sigmoid(1.702 * y), atol=1e-5, rtol=1e-5)


# The x86-64 features of a Haswell (AVX2, FMA, F16C), without AVX-512.
AVX2_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fsgsbase,+lzcnt,+movbe,+popcnt,+sse,+sse2,"
                 "+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f,-avx512vl,-avx512bw,-avx512dq")
AVX2_CHECK = """
import torch
from jukebox.inference import cpu_kernels, numba_kernels
assert cpu_kernels.available() and numba_kernels.LANES == 8, numba_kernels.LANES
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16):
    for n_in, n_out, rows in ((72, 96, 1), (72, 96, 4), (1040, 20, 6)):
        w, b = torch.randn(n_in, n_out, generator=g).to(dtype), torch.randn(n_out, generator=g)
        x = torch.randn(rows, n_in, generator=g)
        for narrow, single_prefetch in ((False, True), (True, True), (True, False)):
            product = cpu_kernels.BlockedLinear(w, b, narrow=narrow, single_prefetch=single_prefetch)
            torch.testing.assert_close(product(x), torch.addmm(b, x, w.float()), atol=1e-4, rtol=1e-5)
print("ok")
"""


def test_kernel_products_compiled_for_avx2_equal_addmm(tmp_path):
    """On a CPU without AVX-512 (an AMD EPYC of the AVX2 generation) BlockedLinear's vectors hold 8 floats, not
    16: compiled for such a CPU in a process of its own (numba's target set by its environment, its cache in
    a folder of its own), the products still equal addmm's, float32 and float16 weights alike."""
    import os
    import subprocess
    import sys

    _needs_numba()
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": AVX2_FEATURES,
           "NUMBA_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", AVX2_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def _steps_match_plain(cpu_backend: str | None = None) -> StepPlan:
    """Checks that steps through ``cpu_backend`` (None: the calibrated one) equal the plain path's on a small
    model, and returns a plan of that model."""
    model = _transformer(2, 3)
    x, enc = _inputs(3)
    with torch.no_grad():
        plan = _plan(model, x, enc, cpu_backend)
        plain = _stepped(model, x, enc, n_prime=1, fast=False)
        fast = _stepped(model, x, enc, n_prime=1, fast=True, cpu_backend=cpu_backend)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    return plan


def test_missing_numba_warns_and_steps_fall_back(monkeypatch):
    """Without numba (or a parallel threading layer for it) the kernels report unavailable with a
    warning that says so; calibration passes the numba backend by, forcing it is refused, and steps
    still match the plain path (torch's attention, another backend's products)."""

    def no_numba():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(cpu_kernels, "_build_kernels", no_numba)
    cpu_kernels._kernels.cache_clear()
    try:
        with pytest.warns(UserWarning, match="numba kernels unavailable .*No module named 'numba'"):
            assert not cpu_kernels.available()
        assert cpu_kernels.backend() == "unavailable"
        plan = _steps_match_plain()
        assert plan.backend != "numba" and plan.layers[0].cpu_attention is None and not plan.layers[0].fused
        with pytest.raises(ValueError, match="--cpu_backend=numba can not run here: numba"):
            _steps_match_plain("numba")
    finally:
        cpu_kernels._kernels.cache_clear()


def test_layer_kernel_that_fails_warns_and_layers_call_the_kernels_one_by_one(monkeypatch):
    """Where the one call of a step's layers does not compile here, a warning says so once and each layer calls its
    products and attention in turn: the same results."""
    from jukebox.inference import numba_kernels

    _needs_numba()

    def broken(*args):
        raise RuntimeError("no code for this CPU")

    monkeypatch.setattr(numba_kernels, "blocked_layers", broken)
    cpu_kernels._layers_kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="numba layer kernel unavailable .*no code for this CPU"):
            assert not cpu_kernels.whole_layers()
        plan = _steps_match_plain("numba_blocks")
        assert all(L.whole is None and L.fused and L.cpu_attention is not None for L in plan.layers)
    finally:
        monkeypatch.undo()
        cpu_kernels._layers_kernel.cache_clear()


@pytest.mark.parametrize("heads,step", [(1, 1), (2, 3), (4, 1)])
def test_kernel_attention_writes_cache_and_matches_sdpa(heads, step):
    """The CPU attention kernel takes new positions in order: each stores its key and value at its slot, then
    equals scaled_dot_product_attention over the cache rows start:stop:step (strided for column attention),
    so a later position sees what an earlier one wrote."""

    _needs_numba()
    g = torch.Generator().manual_seed(heads)
    n, keys, state, scale = 3, 24, 16, 0.3
    proj = torch.randn(n, 2, 3 * state, generator=g)
    key, value = torch.randn(n, keys, state, generator=g), torch.randn(n, keys, state, generator=g)
    positions = ((19, 1, 20), (20, 1, 21))  # (slot, start, stop): the second sees the first's row
    ref_key, ref_value = key.clone(), value.clone()
    for p, (slot, _, _) in enumerate(positions):
        ref_key[:, slot], ref_value[:, slot] = proj[:, p, state:2 * state], proj[:, p, 2 * state:]
    windows = cpu_kernels.windows(*((slot, start, stop, step) for slot, start, stop in positions))
    got = cpu_kernels.attention(proj, key, value, heads, scale, windows)
    assert torch.equal(key, ref_key) and torch.equal(value, ref_value)
    split = lambda t: t.reshape(n, -1, heads, state // heads).transpose(1, 2)  # noqa: E731
    for p, (_, start, stop) in enumerate(positions):
        rows = slice(start, stop, step)
        ref = F.scaled_dot_product_attention(split(proj[:, p:p + 1, :state]), split(key[:, rows]),
                                             split(value[:, rows]), scale=scale)
        torch.testing.assert_close(got[:, p], ref.transpose(1, 2).reshape(n, state), atol=1e-6, rtol=1e-5)
    # Encoder-decoder attention: the queries alone, nothing written.
    query_only = cpu_kernels.attention(proj[:, :, :state], key, value, heads, scale, windows)
    torch.testing.assert_close(query_only, got, atol=1e-6, rtol=1e-5)
    assert torch.equal(key, ref_key)


def test_song_projection_follows_the_sampling_windows():
    """The benchmark's 20 s projection counts the windows sample.py draws at hop_fraction 0.5,0.5,0.125:
    level token counts, primed and drawn tokens (a merged lyrics prefix primed in every window), and
    time = primed / priming rate + drawn x step time."""
    from jukebox.bench import project_song

    def rates(step_s, prime_rate, prefix=0):
        return {"ancestral_n16": {"step_s": step_s}, "priming": {"n_samples": 16, "tokens_per_s": prime_rate},
                "prefix_tokens": prefix}
    song = project_song(20, [rates(0.01, 1600.0), rates(0.02, 1600.0), rates(0.005, 3200.0, prefix=384)],
                        n_ctx=[8192, 8192, 6144], hops=[8, 32, 128])
    # 20 s at 44100 Hz, cut to a multiple of the top hop: 881920 samples.
    assert [song[k]["tokens"] for k in (0, 1, 2)] == [110240, 27560, 6890]
    assert [song[k]["windows"] for k in (0, 1, 2)] == [26, 6, 2]
    # Top: the second window starts at 6890 - 6144 = 746 and so shares 5398 tokens with the first.
    assert song[2]["primed"] == 5398 + 2 * 384 and song[2]["new"] == 6890
    # Level 1: windows start at 0, 4096, ..., 16384, then 27560 - 8192 = 19368 (sharing up to 16384 + 8192).
    assert song[1]["new"] == 27560 and song[1]["primed"] == 4 * 4096 + (16384 + 8192 - 19368)
    assert song[2]["seconds"] == pytest.approx(song[2]["primed"] * 16 / 3200 + 6890 * 0.005)
    assert song["total_seconds"] == pytest.approx(sum(song[k]["seconds"] for k in (0, 1, 2)))
