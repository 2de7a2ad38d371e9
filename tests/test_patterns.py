"""Each attention pattern's cache layout (length, slot of a position, rows visible to a query) against the
pattern's definition, and the key/value cache object that owns the buffers and the position."""
from __future__ import annotations

import pytest
import torch

from conftest import randomize_weights
from jukebox.transformer.kv_cache import KVCache
from jukebox.transformer.patterns import AttentionPattern, cache_layout, prime_keys
from jukebox.transformer.transformer import Transformer

N_CTX, BLOCKS, BC, SPREAD, ENC, PRIME = 72, 6, 12, 3, 16, 16
P = AttentionPattern
LENGTHS = {P.DENSE: N_CTX, P.BLOCK: BC, P.TRANSPOSE_BLOCK: N_CTX, P.PREV_BLOCK: 2 * BC, P.SUMMARY: BLOCKS,
           P.SUMMARY_SPREAD: BLOCKS * SPREAD, P.ENCODER_DECODER: ENC, P.PRIME: prime_keys(PRIME, BLOCKS)}
# Zero keys the pattern sees for "the block before block 0" (before any position of the sequence).
ZERO_KEYS = {P.PREV_BLOCK: BC, P.SUMMARY: 1, P.SUMMARY_SPREAD: SPREAD}


def _layout(pattern: AttentionPattern):
    return cache_layout(pattern, N_CTX, BLOCKS, SPREAD, ENC, PRIME)


def _seen(pattern: AttentionPattern, t: int) -> set[int]:
    """Positions whose keys the query at t sees, from the definition of the pattern."""
    before_last = range((BLOCKS - 1) * BC)
    seen = {
        P.DENSE: range(t + 1),
        P.BLOCK: range(t - t % BC, t + 1),
        P.TRANSPOSE_BLOCK: range(t % BC, t + 1, BC),
        P.PREV_BLOCK: range(max(t - t % BC - BC, 0), t - t % BC),
        P.SUMMARY: [p for p in before_last if p % BC == BC - 1 and p <= t],
        P.SUMMARY_SPREAD: [p for p in before_last if p % BC >= BC - SPREAD and p <= t],
        P.PRIME: range(min(t + 1, prime_keys(PRIME, BLOCKS))),
    }[pattern]
    return set(seen)


@pytest.mark.parametrize("pattern", [p for p in AttentionPattern if p != P.ENCODER_DECODER])
def test_layout_keeps_exactly_the_keys_each_query_sees(pattern):
    """Write every position's id at its slot, one position at a time as sampling does: the rows in the
    query's window hold exactly the positions the pattern sees, plus its zero keys (rows never written)."""
    layout = _layout(pattern)
    assert layout.length == LENGTHS[pattern]
    rows = torch.zeros(layout.length, dtype=torch.long)  # position + 1; 0 = never written
    for t in range(N_CTX):
        slot = layout.slot(t)
        assert -1 <= slot < layout.length
        if slot >= 0:
            rows[slot] = t + 1
        start, stop = layout.window(t)
        visible = rows[start:stop:layout.step].tolist()
        positions = [r - 1 for r in visible if r]
        assert len(positions) == len(set(positions)) and set(positions) == _seen(pattern, t), t
        zero_keys = visible.count(0)
        expected_zeros = ZERO_KEYS.get(pattern, 0) if pattern != P.PREV_BLOCK or t < BC else 0
        assert zero_keys == expected_zeros, t


def test_encoder_layout_keeps_no_positions():
    layout = _layout(P.ENCODER_DECODER)
    assert layout.length == ENC
    assert all(layout.slot(t) == -1 and layout.window(t) == (0, ENC) for t in range(N_CTX))


@pytest.mark.parametrize("pattern", list(AttentionPattern))
def test_tensor_positions_give_the_same_layout(pattern):
    """Fixed-shape (CUDA-graph) steps use the same methods with a 0-d tensor position."""
    layout = _layout(pattern)
    all_rows = torch.arange(layout.length)
    for t in range(N_CTX):
        pos = torch.tensor(t)
        assert int(layout.slot(pos)) == layout.slot(t)
        start, stop = layout.window(t)
        idx, visible = layout.rows(pos)
        chosen = (all_rows if idx is None else idx)[visible[0]]
        assert chosen.tolist() == list(range(start, stop, layout.step))


@pytest.mark.parametrize("pattern", [P.BLOCK, P.PREV_BLOCK])
def test_ring_history_covers_what_a_chunk_reads(pattern):
    layout = _layout(pattern)
    assert layout.ring
    for t0 in range(N_CTX):
        needed = set().union(*(_seen(pattern, t) for t in range(t0, min(t0 + BC, N_CTX)))) - set(range(t0, N_CTX))
        assert min(needed, default=t0) >= layout.history(t0) and t0 - layout.history(t0) <= layout.length


def test_pattern_names_and_properties():
    assert [int(p) for p in AttentionPattern] == list(range(8))
    assert not P.PREV_BLOCK.causal and not P.ENCODER_DECODER.causal and P.SUMMARY.causal
    assert not P.DENSE.blocked and P.PRIME.blocked


def _transformer() -> Transformer:
    t = Transformer(32, N_CTX, 2, 4, mask=True, attn_order=6, blocks=BLOCKS, encoder_dims=ENC)
    randomize_weights(t, seed=0)
    return t.eval()


def test_kv_cache_owns_buffers_and_position():
    model = _transformer()
    cache = model.new_cache(3)
    assert isinstance(cache, KVCache) and cache.position == 0 and cache.n_samples == 3
    assert [c.key.shape[1] for c in cache.layers] == [BC, N_CTX, 2 * BC, ENC]  # attn_order 6: 1, 2, 3, 6
    assert cache.nbytes == sum(2 * 3 * rows * 8 * 4 for rows in (BC, N_CTX, 2 * BC, ENC))
    g = torch.Generator().manual_seed(0)
    x, enc = torch.randn(3, N_CTX, 32, generator=g), torch.randn(3, ENC, 32, generator=g)
    with torch.no_grad():
        model(x[:, :5], enc, cache=cache)
        model(x[:, 5:6], enc, cache=cache)
        assert cache.position == 6
        with pytest.raises(RuntimeError, match="3 samples of torch.float32 but got 2"):
            model(x[:2, 6:7], enc[:2], cache=cache)
        assert cache.position == 6  # a refused call leaves the cache as it was
        with pytest.raises(RuntimeError, match="new cache"):
            cache.check(3, torch.float16)
        other = model.new_cache(3)
        assert other.position == 0 and all(not c.key.any() for c in other.layers)
