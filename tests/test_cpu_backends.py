"""The choice of CPU step backend (jukebox/inference/cpu_backends.py): forcing one, calibration and its cache,
and backends that can not run. Every backend's numbers against the plain path, for every attention pattern,
are in test_fast_paths.py. No test here measures time."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import randomize_weights
from jukebox import bench, sample
from jukebox.inference import cpu_backends, cpu_kernels, sampler, step_plan
from jukebox.inference.sampler import TokenSampler
from jukebox.inference.session import SamplingOptions
from jukebox.inference.step_plan import StepPlan
from jukebox.prior.autoregressive import ConditionalAutoregressive2D
from jukebox.transformer.ops import convert_conv_weights_to_fp16
from jukebox.transformer.transformer import Transformer
from jukebox.utils.torch_utils import transposed

pytestmark = pytest.mark.usefixtures("one_thread")

W, N_CTX, N = 32, 48, 2
RUNNABLE = [name for name, b in cpu_backends.BACKENDS.items() if b.missing() is None]
EXACT = [name for name in RUNNABLE if cpu_backends.BACKENDS[name].exact(torch.float32)]


@pytest.fixture
def calibration_file(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "cpu_backends.json"
    monkeypatch.setenv("JUKEBOX_CPU_CALIBRATION", str(path))
    return path


def _plan(cpu_backend: str | None = None, n: int = N, weights: torch.dtype = torch.float32) -> StepPlan:
    t = Transformer(W, N_CTX, 2, 3, mask=True, attn_order=2, blocks=6)
    randomize_weights(t, seed=1)
    t.eval()
    if weights == torch.float16:
        convert_conv_weights_to_fp16(t)
    cache = t.new_cache(n)
    with torch.no_grad():
        t(torch.randn(n, 1, W), cache=cache)
        return StepPlan(list(t._attn_mods), cache, torch.float32, cpu_backend)


def test_calibration_picks_an_exact_backend_writes_and_reuses_its_cache(calibration_file, monkeypatch):
    plan = _plan()
    assert plan.backend in EXACT
    entries = json.loads(calibration_file.read_text())
    (key, entry), = entries.items()
    assert entry["backend"] == plan.backend and sorted(entry["step_ms"]) == sorted(EXACT)
    assert json.loads(key)["batch"] == N and json.loads(key)["machine"]["threads"] == torch.get_num_threads()
    assert cpu_backends.calibration(plan.shape()) == entry
    # The cached choice is used as it is, without timing again.
    entry["backend"] = other = next(name for name in EXACT if name != plan.backend)
    calibration_file.write_text(json.dumps(entries))
    assert _plan().backend == other
    # Another batch is another shape: calibrated and added beside it.
    _plan(n=1)
    assert len(json.loads(calibration_file.read_text())) == 2
    # A choice cached before a backend existed is made again, with it.
    newer = type("Newer", (cpu_backends.Plain,), {"name": "newer"})()
    monkeypatch.setitem(cpu_backends.BACKENDS, newer.name, newer)
    _plan()
    assert len(json.loads(calibration_file.read_text())) == 3
    # So is one cached before the backends' code last changed.
    monkeypatch.setattr(cpu_backends, "CALIBRATION_REVISION", cpu_backends.CALIBRATION_REVISION + 1)
    _plan()
    assert len(json.loads(calibration_file.read_text())) == 4


def test_failing_and_unavailable_backends_are_passed_by(calibration_file, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("cannot pack here")

    monkeypatch.setattr(cpu_backends.Mkl, "linear", broken)
    monkeypatch.setattr(cpu_backends.OneDnn, "missing", lambda self: "no oneDNN in this build")
    monkeypatch.setattr(cpu_kernels.BlockedLayers, "__init__", broken)  # numba_blocks(_256) pack, then fail
    passed_by = {"mkl", "onednn", "numba_blocks", "numba_blocks_256"}
    plan = _plan()
    (entry,) = json.loads(calibration_file.read_text()).values()
    assert plan.backend == entry["backend"] and plan.backend not in passed_by
    assert sorted(entry["step_ms"]) == sorted(set(EXACT) - passed_by)
    with pytest.raises(ValueError, match="--cpu_backend=onednn can not run here: no oneDNN in this build"):
        _plan("onednn")
    # With every other backend failing or missing, the plain one remains.
    monkeypatch.setattr(cpu_backends.Numba, "missing", lambda self: "no numba")
    calibration_file.unlink()
    assert _plan().backend == "plain"
    assert list(json.loads(calibration_file.read_text()).values())[0]["step_ms"].keys() == {"plain"}


def test_calibration_times_the_backends_in_turns_so_a_slow_moment_falls_on_all(calibration_file, monkeypatch):
    """Every candidate is built first, then each runs one step in turn and the median of its steps counts: a slow
    stretch of the machine slows every backend alike instead of deciding the choice. After the screening turns
    only those within the margin of the fastest go on. A backend that fails to pack is passed by. Time is a fake
    clock that each step advances by its backend's cost."""
    cost = {"plain": 3.0, "numba": 1.0, "numba_blocks": 1.2, "numba_blocks_256": 1.4, "mkl": 0.5, "onednn": 4.0}
    clock, names, order = [0.0], {}, []
    build, forward = StepPlan._build, StepPlan._forward

    def tagged(self, backend, start=0, stop=None):
        if backend.name == "mkl":
            raise RuntimeError("cannot pack here")
        layers = build(self, backend, start, stop)
        names.update((id(L), backend.name) for L in layers)
        return layers

    def costed(self, x, length=1):
        name = names.get(id(self.layers[0])) if self.layers else None
        if name is not None:
            order.append(name)
            ran = len(candidates)
            slow = 10.0 if ran <= len(order) < 4 * ran else 1.0  # the first three turns fall on a slow stretch
            clock[0] += cost[name] * slow
        return forward(self, x, length)

    candidates = [name for name in EXACT if name != "mkl"]
    fastest = min(cost[name] for name in candidates)
    going_on = [name for name in candidates if cost[name] <= step_plan.CALIBRATION_SCREEN_MARGIN * fastest]
    monkeypatch.setattr(StepPlan, "_build", tagged)
    monkeypatch.setattr(StepPlan, "_forward", costed)
    monkeypatch.setattr(step_plan.time, "perf_counter", lambda: clock[0])
    plan = _plan()
    assert plan.backend == min(candidates, key=cost.get)
    (entry,) = json.loads(calibration_file.read_text()).values()
    # Those that went on: the median of all turns; those screened out: of the three slow ones.
    assert entry["step_ms"] == {name: cost[name] * 1e3 * (1 if name in going_on else 10) for name in candidates}
    ran, screened = len(candidates), step_plan.CALIBRATION_SCREEN_STEPS
    assert sorted(order[:ran]) == sorted(candidates)  # one warm-up step each
    turns = [order[i:i + ran] for i in range(ran, ran + screened * ran, ran)]
    assert all(sorted(turn) == sorted(candidates) for turn in turns) and len(turns) == screened
    rest = order[ran + screened * ran:]
    later = step_plan.CALIBRATION_STEPS - screened if len(going_on) > 1 else 0
    assert sorted(rest) == sorted(going_on * later)


def test_calibration_screens_on_leading_layers_then_races_the_close_ones_on_more(calibration_file, monkeypatch):
    """Every candidate's trial runs the layers that hold CALIBRATION_SCREEN_MIB of weights (here the first); those
    within the margin of the fastest run again on the layers that hold CALIBRATION_PROXY_MIB (here two), built
    onto their first trial, and the fastest of that longer trial wins. The winner's trial layers stay in the plan,
    which builds only the rest. Time is a fake clock: a step costs its backend's cost per layer for the layers it
    runs."""
    block = Transformer(W, N_CTX, 2, 3, mask=True, attn_order=2, blocks=6)._attn_mods[0]
    layer_mib = sum(p.numel() * p.element_size() for p in block.parameters()) / 2 ** 20
    monkeypatch.setattr(step_plan, "CALIBRATION_SCREEN_MIB", 0.5 * layer_mib)
    monkeypatch.setattr(step_plan, "CALIBRATION_PROXY_MIB", 1.5 * layer_mib)
    # Per layer over one layer, then over two: numba leads the screen, numba_blocks (within the margin) the race.
    cost = {"numba": (1.0, 1.2), "numba_blocks": (1.1, 1.0)}
    clock, built, owner = [0.0], [], {}
    build, forward = StepPlan._build, StepPlan._forward

    def recorded(self, backend, start=0, stop=None):
        layers = build(self, backend, start, stop)
        built.append((backend.name, start, start + len(layers)))
        owner.update((id(L), backend.name) for L in layers)
        return layers

    def costed(self, x, length=1):
        if self.layers:
            per_layer = cost.get(owner[id(self.layers[0])], (5.0, 5.0))[len(self.layers) - 1]
            clock[0] += per_layer * len(self.layers)
        return forward(self, x, length)

    monkeypatch.setattr(StepPlan, "_build", recorded)
    monkeypatch.setattr(StepPlan, "_forward", costed)
    monkeypatch.setattr(step_plan.time, "perf_counter", lambda: clock[0])
    plan = _plan()
    assert plan.backend == "numba_blocks" and len(plan.layers) == 3
    assert sorted(built) == sorted([(name, 0, 1) for name in EXACT] + [("numba", 1, 2), ("numba_blocks", 1, 2),
                                                                       ("numba_blocks", 2, 3)])
    assert [owner[id(L)] for L in plan.layers] == ["numba_blocks"] * 3
    (entry,) = json.loads(calibration_file.read_text()).values()
    finalists = {"numba", "numba_blocks"}
    assert entry["trial_layers"] == {name: 2 if name in finalists else 1 for name in EXACT}
    # Times are kept per whole step (three layers).
    assert entry["step_ms"] == {name: cost.get(name, (5.0, 5.0))[name in finalists] * 3e3 for name in EXACT}


def test_calibration_passes_by_a_backend_below_its_batch(calibration_file, monkeypatch):
    """A backend that runs another one's code below ``min_batch`` rows is not timed there (numba_blocks_256 sums
    a single row of float32 weights as numba_blocks does), and is timed from that batch up."""
    monkeypatch.setattr(cpu_backends.BACKENDS["numba"], "min_batch", lambda weights: 3)
    _plan(n=2)
    (entry,) = json.loads(calibration_file.read_text()).values()
    assert sorted(entry["step_ms"]) == sorted(set(EXACT) - {"numba"})
    calibration_file.unlink()
    _plan(n=1)
    (entry,) = json.loads(calibration_file.read_text()).values()
    assert sorted(entry["step_ms"]) == sorted(set(EXACT) - {"numba", "numba_blocks_256"})
    monkeypatch.setattr(cpu_backends.BACKENDS["numba"], "min_batch", lambda weights: 2)
    calibration_file.unlink()
    _plan(n=2)
    (entry,) = json.loads(calibration_file.read_text()).values()
    assert sorted(entry["step_ms"]) == sorted(EXACT)


def test_calibration_times_numba_blocks_256_at_one_row_of_float16_weights(calibration_file):
    """At one row numba_blocks_256 runs numba_blocks' code on float32 weights, which calibration passes by, but not
    on float16 weights, whose single rows it leaves to the CPU's own prefetchers: there it is timed too."""
    if "numba_blocks_256" not in RUNNABLE:
        pytest.skip(f"numba_blocks_256: {cpu_backends.BACKENDS['numba_blocks_256'].missing()}")
    for weights, timed in ((torch.float32, False), (torch.float16, True)):
        calibration_file.unlink(missing_ok=True)
        _plan(n=1, weights=weights)
        (entry,) = json.loads(calibration_file.read_text()).values()
        assert ("numba_blocks_256" in entry["step_ms"]) is timed, weights
        assert "numba_blocks" in entry["step_ms"]


def test_unwritable_calibration_cache_still_chooses(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JUKEBOX_CPU_CALIBRATION", str(blocker / "cpu_backends.json"))  # under a file
    assert _plan().backend in EXACT


def _prior() -> ConditionalAutoregressive2D:
    m = ConditionalAutoregressive2D((N_CTX,), bins=40, width=W, depth=3, heads=2, attn_order=2, blocks=6,
                                    x_cond=True)
    randomize_weights(m, seed=2)
    return m.eval()


@pytest.mark.parametrize("name", RUNNABLE)
def test_forcing_a_backend_through_the_sampler(name, calibration_file, monkeypatch):
    """A forced backend runs every step, the priming chunks (asked chunks of 2, kept) and the output layer
    (where it is exact) without calibrating; exact ones give the plain path's logits."""
    monkeypatch.setattr(sampler, "CPU_CHUNK_ROWS", 1)
    m = _prior()
    g = torch.Generator().manual_seed(3)
    x, x_cond = torch.randint(40, (N, N_CTX), generator=g), torch.randn(N, N_CTX, W, generator=g)
    forced = TokenSampler(m, cpu_backend=name)
    with torch.no_grad():
        got = forced.cached_logits(x, x_cond, n_prime=5, chunk_size=2)
        plain = TokenSampler(m, plain_step=True).cached_logits(x, x_cond, n_prime=5, chunk_size=2)
    assert forced.plan.backend == name and not calibration_file.exists()
    torch.testing.assert_close(got, plain, atol=1e-5 if name in EXACT else 1e-2, rtol=0)


def test_calibration_does_not_change_the_samples(calibration_file):
    m = _prior()
    x_cond = torch.randn(N, N_CTX, W, generator=torch.Generator().manual_seed(4))
    tokens = []
    for options in (dict(), dict(), dict(plain_step=True)):  # calibrating, from the cache, the plain path
        torch.manual_seed(0)
        tokens.append(TokenSampler(m, **options).sample(N, x_cond, sample_tokens=30))
    assert calibration_file.exists()
    assert torch.equal(tokens[0], tokens[2]) and torch.equal(tokens[1], tokens[2])


def test_unknown_backend_is_refused_naming_the_valid_ones(tmp_path, monkeypatch):
    names = r"numba, numba_blocks, numba_blocks_256, mkl, onednn, onednn_bf16, fbgemm_fp16 \(or leave it out"
    with pytest.raises(ValueError, match=rf"unknown --cpu_backend='gpu'; choose one of plain, {names}"):
        TokenSampler(_prior(), cpu_backend="gpu")
    with pytest.raises(ValueError, match="unknown --cpu_backend='fast'"):
        SamplingOptions(model="m", n_samples=1, sample_length=8, sr=8, hop_fraction=[1.0], metas=[{}],
                        sampling_kwargs=[{}], cpu_backend="fast")
    options = SamplingOptions(model="m", n_samples=1, sample_length=8, sr=8, hop_fraction=[1.0], metas=[{}],
                              sampling_kwargs=[dict(temp=0.9)], cpu_backend="plain")
    assert options.prior_kwargs() == [dict(temp=0.9, cpu_backend="plain")]
    assert "cpu_backend" not in options.sampling_kwargs[0]  # what data.pth.tar records
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unknown --cpu_backend='MKL'"):
        sample.main(["--model=5b", "--name=x", "--cpu_backend=MKL"])
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown --cpu_backend='avx'"):
        bench.main(["--cpu_backend=avx"])


def test_cpu_info_names_the_machine():
    info = cpu_backends.cpu_info()
    assert info["model"] and info["threads"] == torch.get_num_threads()
    assert info["isa"].split(" + ")[0] in ("AVX2", "AVX-512", "other")


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (130, 65), (64, 200)])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_backends_pack_the_exact_transpose_of_the_weight(shape, dtype):
    for w in (torch.randn(shape), torch.randn(shape).half()):
        want = w.t().contiguous() if dtype is None else w.t().contiguous().to(dtype)
        got = transposed(w, dtype)
        assert got.is_contiguous() and got.dtype == want.dtype and torch.equal(got, want)
