"""The level/window schedule of sampling against the original sample.py (reference utils.pt `window_schedules`,
`get_starts`, `split_batch`).

The stand-in priors follow the original's get_y / get_z_conds and record every sample() call, as the
reference generator's stand-ins did; the recorded calls must equal the reference exactly.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import load_fixture
from jukebox.inference.schedule import get_starts, on_device, plan_level, sample_levels, split_batch


class RecordingPrior:
    """Stand-in prior: original windowing semantics of get_y/get_z_conds, sample() records and returns codes."""

    def __init__(self, level: int, levels: int, n_ctx: int, downsamples: list[int], calls: list[dict]):
        self.level, self.levels, self.n_ctx = level, levels, n_ctx
        self.raw_to_tokens = math.prod(downsamples[:level + 1])
        self.cond_downsample = downsamples[level + 1] if level + 1 < levels else None
        self.calls = calls

    def get_y(self, labels: dict, start: int) -> torch.Tensor:
        self.window_start = start
        y = labels["y"].clone()
        y[:, 2] = self.n_ctx * self.raw_to_tokens
        y[:, 1] += start * self.raw_to_tokens
        return y

    def get_z_conds(self, zs: list[torch.Tensor], start: int, end: int):
        if self.level == self.levels - 1:
            return None
        if start % self.cond_downsample or end % self.cond_downsample:
            raise AssertionError("window not aligned with the upper level")
        z_cond = zs[self.level + 1][:, start // self.cond_downsample:end // self.cond_downsample]
        if z_cond.shape[1] != self.n_ctx // self.cond_downsample:
            raise AssertionError("upper-level codes do not cover the window")
        return [z_cond]

    def sample(self, n_samples, z=None, z_conds=None, y=None, sample_tokens=None, **kwargs):
        sample_tokens = sample_tokens or self.n_ctx
        self.calls.append(dict(
            level=self.level, start=self.window_start, n_samples=n_samples,
            z_len=z.shape[1], sample_tokens=sample_tokens,
            z_cond_shapes=None if z_conds is None else [list(c.shape) for c in z_conds],
            y_offset=y[:, 1].tolist(), y_sample_length=y[:, 2].tolist(), kwargs=dict(kwargs)))
        new = torch.full((n_samples, sample_tokens - z.shape[1]), self.level, dtype=torch.long)
        return torch.cat([z, new], dim=1)


def _run(scenario: dict) -> tuple[list[dict], list[int]]:
    levels = len(scenario["n_ctx"])
    n = scenario["n_samples"]
    calls: list[dict] = []
    priors = [RecordingPrior(l, levels, scenario["n_ctx"][l], scenario["downsamples"], calls) for l in range(levels)]
    prefix = scenario.get("prefix_tokens", [0] * levels)
    zs = [torch.randint(0, 8, (n, prefix[l])) for l in range(levels)]
    y = torch.tensor([[scenario["total_length"], scenario["offset"], 0]] * n)
    labels = [dict(y=y, info=[{}] * n)] * levels
    kwargs = [dict(temp=0.99, fp16=False, chunk_size=16, max_batch_size=scenario["max_batch_size"])] * levels
    zs = sample_levels(zs, labels, kwargs, priors, list(range(levels)), scenario["sample_length"],
                       scenario["hop_fraction"])
    return calls, [z.shape[1] for z in zs]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_window_schedule_matches_original(index):
    case = load_fixture("utils")["window_schedules"][index]
    calls, final_lens = _run(case["scenario"])
    expected = [call for level in case["levels"] for call in level["calls"]]
    got = [dict(level=c["level"], start=c["start"], window_end=c["start"] + case["scenario"]["n_ctx"][c["level"]],
                n_samples=c["n_samples"], z_len=c["z_len"], sample_tokens=c["sample_tokens"],
                z_cond_shapes=c["z_cond_shapes"], y_offset=c["y_offset"], y_sample_length=c["y_sample_length"],
                kwargs=c["kwargs"]) for c in calls]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == e
    for level in case["levels"]:
        assert final_lens[level["level"]] == level["final_len"]


def test_plan_level_partial_window_stops_at_total_length():
    assert plan_level(40, 64, 8, 0) == [(0, 40)]
    # a continuation shorter than one context only fills up to the requested length
    assert plan_level(40, 64, 8, 30) == [(0, 40)]
    assert plan_level(40, 64, 8, 40) == []
    assert plan_level(160, 64, 32, 0) == [(0, 64), (32, 64), (64, 64), (96, 64)]


def test_resume_skips_finished_windows_and_levels():
    scenario = load_fixture("utils")["window_schedules"][1]["scenario"]
    full_calls, _ = _run(scenario)
    levels = len(scenario["n_ctx"])
    calls: list[dict] = []
    priors = [RecordingPrior(l, levels, scenario["n_ctx"][l], scenario["downsamples"], calls) for l in range(levels)]
    n = scenario["n_samples"]
    # level 2 finished (40 tokens), level 1 has its first 2 windows (96 tokens)
    zs = [torch.zeros(n, t, dtype=torch.long) for t in (0, 96, 40)]
    y = torch.tensor([[scenario["total_length"], scenario["offset"], 0]] * n)
    kwargs = [dict(temp=0.99, fp16=False, chunk_size=16, max_batch_size=scenario["max_batch_size"])] * levels
    seen = []
    sample_levels(zs, [dict(y=y, info=[{}] * n)] * levels, kwargs, priors, [0, 1, 2], scenario["sample_length"],
                  scenario["hop_fraction"], resume=(1, 2), after_window=lambda l, i, _: seen.append((l, i)))
    assert calls == full_calls[1 + 2:]
    assert seen[:2] == [(1, 3), (1, 4)] and seen[-1] == (0, 19)


def test_get_starts():
    for case in load_fixture("utils")["get_starts"]:
        assert get_starts(case["total_length"], case["n_ctx"], case["hop_length"]) == case["starts"], case


def test_get_starts_rejects_short_total():
    with pytest.raises(ValueError, match="partial window"):
        get_starts(100, 256, 128)


def test_split_batch():
    for case in load_fixture("utils")["split_batch"]:
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


class LoadablePrior:
    """Stands for a ``LazyPrior``: counts its loads and unloads."""

    def __init__(self, loaded: bool) -> None:
        self.loaded, self.loads, self.unloads = loaded, 0, 0

    def load(self, device):
        self.loads += not self.loaded
        self.loaded = True
        return self

    def unload(self):
        self.unloads += 1
        self.loaded = False


def test_on_device_drops_a_prior_it_loaded_and_keeps_one_the_caller_loaded():
    lazy = LoadablePrior(loaded=False)
    with on_device(lazy, "cpu") as module:
        assert module is lazy and lazy.loaded
    assert (lazy.loads, lazy.unloads, lazy.loaded) == (1, 1, False)
    kept = LoadablePrior(loaded=True)  # e.g. the studio's top-level prior between continuations
    for _ in range(2):
        with on_device(kept, "cpu"):
            pass
    assert (kept.loads, kept.unloads, kept.loaded) == (0, 0, True)
