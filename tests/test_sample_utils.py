"""Sampling helpers against reference/fixtures/utils.pt."""
from __future__ import annotations

import pytest
import torch

from conftest import load_fixture
from jukebox.utils.sample_utils import filter_logits, get_split_chunks, get_starts, roll, split_batch


@pytest.fixture(scope="module")
def ref():
    return load_fixture("utils")


def test_get_starts(ref):
    for case in ref["get_starts"]:
        assert get_starts(case["total_length"], case["n_ctx"], case["hop_length"]) == case["starts"], case


def test_get_starts_rejects_short_total():
    with pytest.raises(ValueError, match="partial window"):
        get_starts(100, 256, 128)


def test_split_batch(ref):
    for case in ref["split_batch"]:
        n, size = case["n_samples"], case["split_size"]
        x = torch.arange(n * 3).view(n, 3)
        parts = split_batch(x, n, size)
        assert len(parts) == len(case["tensor_parts"])
        for got, want in zip(parts, case["tensor_parts"]):
            assert torch.equal(got, want)
        parts = split_batch([x, x * 10], n, size)
        assert len(parts) == len(case["list_parts"])
        for got, want in zip(parts, case["list_parts"]):
            assert len(got) == len(want) == 2
            assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert split_batch(None, n, size) == [None] * case["none_parts_len"]


def test_split_batch_rejects_other_types():
    with pytest.raises(TypeError, match="tensor, a list of tensors or None"):
        split_batch((torch.zeros(2),), 2, 1)


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


def test_roll(ref):
    case = ref["roll"]
    assert torch.equal(roll(case["x"], case["n"]), case["out"])
