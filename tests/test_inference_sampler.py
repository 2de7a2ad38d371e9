"""The token sampler's helpers (priming chunks, logit filtering, the draw) against reference/fixtures/utils.pt."""
from __future__ import annotations

import pytest
import torch

from conftest import load_fixture
from jukebox.inference.sampler import draw, filter_logits, get_split_chunks


@pytest.fixture(scope="module")
def ref():
    return load_fixture("utils")


def test_split_chunks(ref):
    for case in ref["split_chunks"]:
        assert get_split_chunks(case["length"], case["chunk_size"]) == case["chunks"], case
    assert get_split_chunks(37, None) == [37]
    assert get_split_chunks(0, 8) == []


def test_filter_logits(ref):
    ref = ref["filter_logits"]
    logits = ref["logits"]
    for key, want in ref.items():
        if key == "logits":
            continue
        kind, value = key.rsplit("_", 1)
        kwargs = {"top_k": int(value)} if kind == "top_k" else {"top_p": float(value)}
        got = filter_logits(logits, **kwargs)
        assert torch.equal(got, want), key
    assert torch.equal(filter_logits(logits), logits)
    assert torch.equal(ref["logits"], logits), "filter_logits must not modify its input"


def test_filter_logits_ties_and_threshold():
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    # The tie with the k-th largest logit is kept.
    assert torch.equal(filter_logits(logits, top_k=2), torch.tensor([[2.0, 1.0, 1.0, -float("inf")]]))
    # top_p just below the top token's probability still keeps it; reaching past it keeps the next one too.
    p0 = torch.softmax(logits, -1)[0, 0].item()
    assert torch.isinf(filter_logits(logits, top_p=p0 * 0.99)[0, 1:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=p0 * 1.01))
    # Of the two equal logits, the higher index ranks first.
    assert kept.tolist() == [[True, False, True, False]]
    custom = filter_logits(logits, top_k=1, filter_value=-1e4)
    assert torch.equal(custom, torch.tensor([[2.0, -1e4, -1e4, -1e4]]))
    with pytest.raises(ValueError, match="not both"):
        filter_logits(logits, top_k=1, top_p=0.5)


@pytest.mark.parametrize("n", [1, 3])
def test_draw_is_the_original_categorical_draw(n):
    """The original draws with ``Categorical(logits=filtered / temp).sample()``: the same seed gives the same tokens,
    for any temperature and filter, and the generator is left where that draw leaves it."""
    logits = torch.randn(n, 1, 2048, generator=torch.Generator().manual_seed(n)) * 3
    for temp, top_k, top_p in ((1.0, 0, 0.0), (0.7, 0, 0.0), (0.98, 40, 0.0), (1.3, 0, 0.9)):
        torch.manual_seed(11)
        got = [draw(logits, temp, top_k, top_p) for _ in range(64)]
        after = torch.rand(1)
        torch.manual_seed(11)
        filtered = filter_logits(logits / temp, top_k=top_k, top_p=top_p)
        want = [torch.distributions.Categorical(logits=filtered).sample() for _ in range(64)]
        assert torch.equal(torch.rand(1), after)
        assert got[0].shape == (n, 1) and got[0].dtype == torch.long
        assert torch.equal(torch.stack(got), torch.stack(want)), (temp, top_k, top_p)
        assert len({tuple(t.flatten().tolist()) for t in got}) > 1
