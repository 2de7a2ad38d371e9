"""Sparse transformer: attention patterns, attn_order tables, KV-cached sampling, state-dict names,
and agreement with the original's logits on the reference prior fixtures."""
from __future__ import annotations

import gc
import json
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from conftest import MANIFESTS, load_fixture, randomize_weights
from jukebox.transformer.factored_attention import FactoredAttention
from jukebox.transformer.kv_cache import LayerCache
from jukebox.transformer.ops import ACT_FNS, Conv1D, LayerNorm, convert_conv_weights_to_fp16
from jukebox.transformer.transformer import Transformer, layer_attn_func

pytestmark = pytest.mark.usefixtures("one_thread")

# blocks != block_ctx on purpose, so that mixing them up shows.
W, N_CTX, BLOCKS, BC, HEADS, SPREAD, ENC, PRIME = 32, 72, 6, 12, 2, 3, 16, 16
PRIME_KEYS = 18  # the original keeps (prime_len // blocks + 1) * blocks = (16 // 6 + 1) * 6 keys
N = 2

# Depths that include every function of each order (order 10 is cut at its first lyrics layer, 18).
ORDER_DEPTHS = {0: 2, 1: 2, 2: 3, 3: 2, 4: 2, 5: 4, 6: 4, 7: 16, 8: 10, 9: 4, 10: 19, 11: 16, 12: 16}
CHUNKINGS = {
    "token_by_token": [1] * N_CTX,
    "five_then_ones": [5] + [1] * (N_CTX - 5),
    "uneven": [5, 1, 1, 13, 2, 9, 8, 25, 8],
    "block_aligned": [3, 9, 12, 24, 1, 23],
    "whole": [N_CTX],
}
PRIOR_FIXTURES = ["prior_top_unconditional", "prior_top_labelled", "prior_sep_enc_dec_lyrics",
                  "prior_single_enc_dec_lyrics", "upsampler_level_1", "upsampler_level_0"]


def _transformer(attn_order: int, depth: int | None = None, dtype=torch.float32, **kw) -> Transformer:
    t = Transformer(W, N_CTX, HEADS, ORDER_DEPTHS[attn_order] if depth is None else depth, mask=True,
                    attn_order=attn_order, blocks=BLOCKS, spread=SPREAD, encoder_dims=ENC, prime_len=PRIME, **kw)
    randomize_weights(t, seed=attn_order)
    return t.eval().to(dtype)


def _attention(attn_func: int, dtype=torch.float64, mask: bool = True) -> FactoredAttention:
    a = FactoredAttention(W, N_CTX, W // 2, HEADS, mask=mask, attn_func=attn_func, blocks=BLOCKS, spread=SPREAD,
                          encoder_dims=ENC, prime_len=PRIME)
    randomize_weights(a, seed=100 + attn_func)
    return a.eval().to(dtype)


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, N_CTX, W, generator=g).to(dtype), torch.randn(N, ENC, W, generator=g).to(dtype))


def _sample_in_chunks(model, x, enc, chunks, check=None):
    """Feed x to a Transformer (or one FactoredAttention) in chunks through a fresh cache; ``check(cache, t)``
    after every chunk."""
    if isinstance(model, FactoredAttention):
        cache = LayerCache(model.layout, x.shape[0], model.n_state, x.dtype, x.device)
    else:
        cache = model.new_cache(x.shape[0], x.dtype)
    outs, t = [], 0
    for c in chunks:
        if isinstance(model, FactoredAttention):
            outs.append(model(x[:, t:t + c], enc, cache=cache, t0=t))
        else:
            outs.append(model(x[:, t:t + c], enc, cache=cache))
        t += c
        if check is not None:
            check(cache, t)
    return torch.cat(outs, dim=1)


def _reference_attention(attn: FactoredAttention, x, enc):
    """Brute force from the definition of each pattern: every key with an explicit visibility mask."""
    f, length = attn.attn_func, x.shape[1]
    if f == 6:
        q = attn.c_attn(x)
        k, v = attn.c_enc_kv(enc).chunk(2, dim=2)
        visible = torch.ones(length, ENC, dtype=torch.bool)
    else:
        q, k, v = attn.c_attn(x).chunk(3, dim=2)
        i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
        causal = j <= i
        before_last_block = j // BC < BLOCKS - 1
        visible = {0: causal,
                   1: causal & (j // BC == i // BC),
                   2: causal & (j % BC == i % BC),
                   3: j // BC == i // BC - 1,
                   4: causal & (j % BC == BC - 1) & before_last_block,
                   5: causal & (j % BC >= BC - SPREAD) & before_last_block,
                   7: causal & (j < PRIME_KEYS)}[f]
        n_zero = {3: BC, 4: 1, 5: SPREAD}.get(f, 0)
        if n_zero:  # the all-zero keys/values standing for "the block before block 0"
            zeros = torch.zeros(N, n_zero, k.shape[2], dtype=k.dtype)
            k, v = torch.cat([zeros, k], 1), torch.cat([zeros, v], 1)
            zero_visible = (i // BC == 0) if f == 3 else torch.ones(length, 1, dtype=torch.bool)
            visible = torch.cat([zero_visible.expand(length, n_zero), visible], 1)
    def split(t):
        return t.unflatten(-1, (HEADS, -1)).transpose(1, 2)

    qh, kh, vh = split(q), split(k), split(v)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    a = (probs @ vh).transpose(1, 2).reshape(N, length, -1)
    return attn.c_proj(a), probs


# --------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("attn_func", range(8))
def test_full_forward_matches_pattern_definition(attn_func):
    attn = _attention(attn_func)
    x, enc = _inputs(torch.float64)
    enc = enc if attn_func == 6 else None
    with torch.no_grad():
        ours = attn(x, enc)
        ref, _ = _reference_attention(attn, x, enc)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("attn_func", range(8))
def test_attention_sampling_matches_full_forward(attn_func):
    attn = _attention(attn_func)
    x, enc = _inputs(torch.float64)
    enc = enc if attn_func == 6 else None
    with torch.no_grad():
        full = attn(x, enc)
        for chunks in CHUNKINGS.values():
            got = _sample_in_chunks(attn, x, enc, chunks)
            torch.testing.assert_close(got, full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("attn_order", sorted(ORDER_DEPTHS))
@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
def test_transformer_sampling_matches_full_forward(attn_order, chunking):
    model = _transformer(attn_order)
    x, enc = _inputs()
    with torch.no_grad():
        full = model(x, enc)
        got = _sample_in_chunks(model, x, enc, CHUNKINGS[chunking],
                                check=lambda cache, t: cache.check(N, torch.float32) or _at(cache, t))
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert model.new_cache(N).position == 0


def _at(cache, t: int) -> None:
    assert cache.position == t


# --------------------------------------------------------------------------- cache
@pytest.mark.parametrize("attn_func,cache_len", [(0, 72), (1, 12), (2, 72), (3, 24), (4, 6), (5, 18), (6, 16), (7, 18)])
def test_cache_is_preallocated_and_freed(attn_func, cache_len):
    attn = _attention(attn_func, dtype=torch.float32)
    x, enc = _inputs()
    enc = enc if attn_func == 6 else None
    cache = LayerCache(attn.layout, N, attn.n_state, torch.float32, None)
    key, value = cache.key, cache.value
    assert key.shape == value.shape == (N, cache_len, W // 2)
    ptrs = (key.data_ptr(), value.data_ptr())
    with torch.no_grad():
        t = 0
        for c in [1, 1, 1, 5, 1, 13, 1, 20, 1, 1]:
            attn(x[:, t:t + c], enc, cache=cache, t0=t)
            t += c
            assert (cache.key.data_ptr(), cache.value.data_ptr()) == ptrs
    ref = weakref.ref(key)
    del key, value, cache
    gc.collect()
    assert ref() is None, "dropping the cache must free its tensors"


def test_cache_rejects_bad_use():
    model = _transformer(1, depth=2)
    x, _ = _inputs()
    with torch.no_grad():
        cache = model.new_cache(N)
        model(x[:, :3], cache=cache)
        with pytest.raises(RuntimeError, match="new cache"):
            model(x[:1, 3:4], cache=cache)  # a different batch mid-run
        model(x[:, 3:], cache=cache)
        with pytest.raises(ValueError, match="n_ctx"):
            model(x[:, :1], cache=cache)  # past the context
        assert cache.position == N_CTX
    enc_attn = _attention(6, dtype=torch.float32)
    with pytest.raises(ValueError, match="encoder_kv"):
        enc_attn(x, None)
    unmasked = _attention(0, dtype=torch.float32, mask=False)
    with pytest.raises(ValueError, match="mask=True"):
        unmasked(x[:, :1], cache=LayerCache(unmasked.layout, N, unmasked.n_state, torch.float32, None))


# --------------------------------------------------------------------------- attn_order tables
def test_attn_order_tables():
    # The per-layer functions of the original's attn_order table, written out.
    expected = {
        0: [0] * 6, 1: [1, 2] * 3, 2: [1, 2, 3] * 2, 3: [1, 4] * 3, 4: [1, 5] * 3, 5: [1, 4, 1, 1] * 2,
        6: [1, 2, 3, 6] * 2, 7: [1, 2, 3] * 5 + [6] + [1, 2, 3] * 5 + [6], 8: ([1, 2, 3] * 3 + [6]) * 2,
        9: [1, 2, 3, 0] * 2,
        10: [1, 2, 3] * 3 + ([1, 2, 3] * 3 + [6]) * 7,
        11: [1, 2, 3] * 5 + [6] + [2, 3, 1] * 5 + [6] + [3, 1, 2] * 5 + [0] + [1, 2, 3] * 5 + [6],
        12: [1, 2, 3] * 5 + [7] + [2, 3, 1] * 5 + [7] + [3, 1, 2] * 5 + [0] + [1, 2, 3] * 5 + [7],
    }
    for order, funcs in expected.items():
        assert [layer_attn_func(order, d) for d in range(len(funcs))] == funcs, order
    assert [d for d in range(79) if layer_attn_func(10, d) == 6] == [18, 28, 38, 48, 58, 68, 78]
    with pytest.raises(ValueError, match="attn_order"):
        layer_attn_func(13, 0)


@pytest.mark.parametrize("name", PRIOR_FIXTURES)
def test_fixture_attn_funcs_and_state_dict(name):
    fx = load_fixture(name)
    hps, derived, sd = fx["hps"], fx["derived"], fx["state_dict"]
    sep = hps["n_tokens"] > 0 and not hps["single_enc_dec"]
    with torch.device("meta"):
        model = Transformer(hps["prior_width"], derived["transformer_n_ctx"], hps["heads"], hps["prior_depth"],
                            mask=True, attn_order=hps["attn_order"], blocks=hps["blocks"], spread=hps["spread"],
                            encoder_dims=hps["n_tokens"] if sep else None,
                            prime_len=hps["n_tokens"] if hps["single_enc_dec"] else None)
    assert [b.attn.attn_func for b in model._attn_mods] == derived["transformer_attn_funcs"]
    _assert_same_entries(model, sd, "prior.transformer.")
    if "prime_attn_funcs" in derived:
        with torch.device("meta"):
            enc = Transformer(hps["prime_width"], hps["n_tokens"], hps["prime_heads"], hps["prime_depth"],
                              mask=True, attn_order=hps["prime_attn_order"], blocks=hps["prime_blocks"])
        assert [b.attn.attn_func for b in enc._attn_mods] == derived["prime_attn_funcs"]
        _assert_same_entries(enc, sd, "prime_prior.transformer.")


def _assert_same_entries(model, state_dict, prefix):
    ours = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    theirs = [(k[len(prefix):], tuple(v.shape), v.dtype) for k, v in state_dict.items() if k.startswith(prefix)]
    assert ours == theirs


@pytest.mark.parametrize("name", ["prior_5b_lyrics", "prior_1b_lyrics", "prior_5b"])
def test_manifest_names_shapes_dtypes(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    hps = manifest["hps"]
    single = hps["single_enc_dec"]
    lyrics = hps["n_tokens"] > 0 and hps["use_tokens"]
    with torch.device("meta"):
        model = Transformer(hps["prior_width"], hps["n_ctx"] + (hps["n_tokens"] if single else 0), hps["heads"],
                            hps["prior_depth"], mask=True, attn_order=hps["attn_order"], blocks=hps["blocks"],
                            spread=hps["spread"], encoder_dims=hps["n_tokens"] if lyrics and not single else None,
                            prime_len=hps["n_tokens"] if single else None)
        parts = {"prior.transformer.": model}
        if lyrics and not single:
            parts["prime_prior.transformer."] = Transformer(
                hps["prime_width"], hps["n_tokens"], hps["prime_heads"], hps["prime_depth"], mask=True,
                attn_order=hps["prime_attn_order"], blocks=hps["prime_blocks"])
    for prefix, part in parts.items():
        if hps["fp16_params"]:
            convert_conv_weights_to_fp16(part)
        ours = [[prefix + k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in part.state_dict().items()]
        theirs = [p for p in manifest["params"] if p[0].startswith(prefix)]
        assert ours == theirs


# --------------------------------------------------------------------------- original's numbers
def _fixture_prior(name):
    """The fixture's transformer plus the embedding/output glue of the original prior (test-only)."""
    fx = load_fixture(name)
    hps, sd, out = fx["hps"], fx["state_dict"], fx["outputs"]
    single = hps["single_enc_dec"]
    sep = hps["n_tokens"] > 0 and not single
    model = Transformer(hps["prior_width"], fx["derived"]["transformer_n_ctx"], hps["heads"], hps["prior_depth"],
                        mask=True, attn_order=hps["attn_order"], blocks=hps["blocks"], spread=hps["spread"],
                        init_scale=hps["init_scale"], encoder_dims=hps["n_tokens"] if sep else None,
                        prime_len=hps["n_tokens"] if single else None).eval()
    prefix = "prior.transformer."
    model.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    n = out["z"].shape[0]
    x_cond = out["x_cond"] if out["x_cond"] is not None else torch.zeros(n, hps["n_ctx"], hps["prior_width"])
    if single:  # lyric positions come first and have no conditioning
        x_cond = torch.cat([torch.zeros(n, hps["n_tokens"], hps["prior_width"]), x_cond], 1)
    first = out["y_cond"].view(n, -1) if out["y_cond"] is not None else sd["prior.start_token"].expand(n, -1)

    def embed(prev_tokens, start, n=n):
        """Inputs of n samples at positions start.. given the token before each (None at position 0);
        at start 0, prev_tokens are the tokens of positions 0.. and get shifted right."""
        x = sd["prior.x_emb.weight"][prev_tokens] if prev_tokens is not None else first[:n, None]
        if start == 0 and prev_tokens is not None:
            x = torch.cat([first[:n, None], x[:, :-1]], 1)
        length = x.shape[1]
        return x + sd["prior.pos_emb.pos_emb"][start:start + length] + x_cond[:n, start:start + length]

    add_after = not hps["merged_decoder"]  # the original adds x_cond again unless the decoder is merged

    def logits(h, start):
        if add_after:
            h = h + x_cond[:h.shape[0], start:start + h.shape[1]]
        return h @ sd["prior.x_out.weight"].T

    return fx, model, embed, logits, out.get("encoder_kv")


FORWARD_FIXTURES = ["prior_top_unconditional", "prior_sep_enc_dec_lyrics", "prior_single_enc_dec_lyrics"]


@pytest.mark.parametrize("name", FORWARD_FIXTURES)
def test_fixture_logits(name):
    fx, model, embed, logits, enc = _fixture_prior(name)
    hps = fx["hps"]
    tokens = fx["outputs"]["z"]
    if hps["single_enc_dec"]:
        tokens = torch.cat([fx["inputs"]["y"][:, -hps["n_tokens"]:], tokens + hps["n_vocab"]], 1)
    with torch.no_grad():
        got = logits(model(embed(tokens, 0), enc), 0)
    torch.testing.assert_close(got, fx["outputs"]["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FORWARD_FIXTURES)
def test_fixture_step_logits_through_cache(name):
    fx, model, embed, logits, enc = _fixture_prior(name)
    for run in fx["sampling"]:
        raw, p0, chunk = run["raw_tokens"], run["first_step_position"], run["spec"].get("chunk_size")
        n = raw.shape[0]
        kv = enc[:n] if enc is not None else None
        cache = model.new_cache(n)
        steps = []
        with torch.no_grad():
            t = 0
            while t < p0:  # prime the cache with the known tokens, chunk by chunk
                c = min(chunk or p0, p0 - t)
                model(embed(raw[:, t - 1:t + c - 1] if t else raw[:, :c], t, n), kv, cache=cache)
                t += c
                assert cache.position == t
            for t in range(p0, p0 + run["step_logits"].shape[1]):
                x = embed(raw[:, t - 1:t] if t else None, t, n)
                steps.append(logits(model(x, kv, cache=cache), t))
        torch.testing.assert_close(torch.cat(steps, 1), run["step_logits"], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- recording
def test_record_attn_shapes_and_values():
    model = _transformer(12, dtype=torch.float64)  # layer 15 is prime attention
    x, _ = _inputs(torch.float64)
    model.set_record_attn({15})
    with torch.no_grad():
        model(x)
    assert len(model.ws) == 1
    w = model.ws[0]
    assert w.shape == (N, HEADS, N_CTX - PRIME, PRIME)
    # The recorded probabilities are the layer's softmax, restricted to music queries x lyric keys.
    block = model._attn_mods[15]
    with torch.no_grad():
        h = x
        for b in model._attn_mods[:15]:
            h = b(h)
        _, probs = _reference_attention(block.attn, block.ln_0(h), None)
    torch.testing.assert_close(w, probs[:, :, PRIME:, :PRIME], atol=1e-10, rtol=0)

    model.set_record_attn(True)
    assert model.ws == [] and all(b.attn.w is None for b in model._attn_mods)
    with torch.no_grad():
        model(x)
    assert len(model.ws) == len(model._attn_mods)
    assert model.ws[0].shape == (N * BLOCKS, HEADS, BC, BC)  # block attention, per block
    torch.testing.assert_close(model.ws[0].sum(-1), torch.ones(N * BLOCKS, HEADS, BC, dtype=torch.float64))
    model.set_record_attn(False)
    assert model.ws == [] and not any(b.attn.record_attn for b in model._attn_mods)


def test_record_attn_encoder_decoder():
    model = _transformer(8)  # layer 9 attends to the lyrics encoder
    x, enc = _inputs()
    model.set_record_attn([9])
    with torch.no_grad():
        model(x, enc)
    (w,) = model.ws
    assert w.shape == (N, HEADS, N_CTX, ENC)
    torch.testing.assert_close(w.sum(-1), torch.ones(N, HEADS, N_CTX))


# --------------------------------------------------------------------------- training features
def test_gradient_checkpointing_gives_same_values_and_grads():
    x, enc = _inputs()
    base = _transformer(8).train()
    results = []
    for kw in [{}, {"checkpoint_res": 1}, {"checkpoint_attn": 1}, {"checkpoint_attn": 2},
               {"checkpoint_attn": 3, "checkpoint_mlp": 1}]:
        model = _transformer(8, **kw).train()
        model.load_state_dict(base.state_dict())
        xi = x.clone().requires_grad_(True)
        y = model(xi, enc)
        y.square().mean().backward()
        results.append((y.detach(), xi.grad, model._attn_mods[9].attn.c_enc_kv.w.grad))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_res_scale_and_zero_out():
    model = Transformer(W, N_CTX, HEADS, 4, mask=True, attn_order=6, blocks=BLOCKS, encoder_dims=ENC, res_scale=True)
    assert all(b.res_scale == 0.25 for b in model._attn_mods)
    lyrics = model._attn_mods[3]
    assert lyrics.attn_func == 6
    assert not lyrics.attn.c_proj.w.any() and not lyrics.mlp.c_proj.w.any()
    assert model._attn_mods[0].attn.c_proj.w.any()
    x, enc = _inputs()
    with torch.no_grad():
        h = model._attn_mods[0](x)
        a = model._attn_mods[0].attn(model._attn_mods[0].ln_0(x))
        m = model._attn_mods[0].mlp(model._attn_mods[0].ln_1(x + a))
    torch.testing.assert_close(h, x + 0.25 * (a + m))


# --------------------------------------------------------------------------- ops and precision
def test_conv1d():
    torch.manual_seed(0)
    c = Conv1D(64, 256, init_scale=0.5)
    assert c.w.shape == (64, 256) and c.b.shape == (256,) and not c.b.any()
    assert abs(c.w.std().item() - 0.01) < 1e-3
    assert not Conv1D(4, 5, zero_out=True).w.any()
    x = torch.randn(3, 7, 64)
    torch.testing.assert_close(c(x), x @ c.w + c.b)
    convert_conv_weights_to_fp16(c)
    assert c.w.dtype == torch.float16 and c.b.dtype == torch.float32
    y = c(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, x @ c.w.float() + c.b)


def test_fp16_conversion_and_cpu_fallback():
    model = _transformer(2)
    ref_model = _transformer(2)
    convert_conv_weights_to_fp16(model)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert all((d == torch.float16) == k.endswith(".w") for k, d in dtypes.items())
    with torch.no_grad():
        for p16, p32 in zip(model.parameters(), ref_model.parameters()):
            p32.copy_(p16.float())
    x, _ = _inputs()
    with torch.no_grad():
        expected = ref_model(x)
        torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)
        with pytest.warns(UserWarning, match="CPU"):
            got = model(x, fp16=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_layernorm_and_activations():
    ln = LayerNorm(8)
    x = torch.randn(2, 3, 8).half()
    y = ln(x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), F.layer_norm(x.float(), (8,)).half().float())
    z = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(ACT_FNS["quick_gelu"](z), z * torch.sigmoid(1.702 * z))
    torch.testing.assert_close(ACT_FNS["gelu"](z), F.gelu(z, approximate="tanh"))
    torch.testing.assert_close(ACT_FNS["swish"](z), z * torch.sigmoid(z))
    torch.testing.assert_close(ACT_FNS["relu"](z), z.clamp(min=0))
    assert torch.autograd.gradcheck(ACT_FNS["quick_gelu"], (z[::10].clone().requires_grad_(True),))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="blocks"):
        Transformer(W, 60, HEADS, 2, attn_order=2, blocks=8)
    with pytest.raises(ValueError, match="attn_order"):
        Transformer(W, N_CTX, HEADS, 2, attn_order=13, blocks=BLOCKS)
    with pytest.raises(ValueError, match="spread"):
        Transformer(W, N_CTX, HEADS, 2, attn_order=4, blocks=BLOCKS)
    with pytest.raises(ValueError, match="encoder_dims"):
        Transformer(W, N_CTX, HEADS, 4, attn_order=6, blocks=BLOCKS)
    with pytest.raises(ValueError, match="prime_len"):
        Transformer(W, N_CTX, HEADS, 16, attn_order=12, blocks=BLOCKS)
    with pytest.raises(ValueError, match="afn"):
        Transformer(W, N_CTX, HEADS, 1, afn="tanh")
    with pytest.raises(ValueError, match="n_head"):
        FactoredAttention(W, N_CTX, 15, 2)
