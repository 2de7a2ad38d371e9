"""Learning-rate schedule, EMA arithmetic, metrics averaging and checkpoint-safe hparams (fast)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from jukebox.hparams import setup_hparams
from jukebox.train import lr_multiplier, make_ema, make_optimizer, plain_hps
from jukebox.utils.ema import EMA, default_mu
from jukebox.utils.logger import Logger, Metrics


def _hps(**overrides):
    return setup_hparams("small_vqvae", overrides)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (1, 0.01), (50, 0.5), (100, 1.0), (12345, 1.0)])
def test_default_schedule_is_linear_warmup(step, expected):
    assert lr_multiplier(step, _hps()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (1, 1.0), (9, 1.0), (10, 0.5), (19, 0.5), (25, 0.25)])
def test_step_decay_with_gamma(step, expected):
    hps = _hps(lr_warmup=1.0, lr_gamma=0.5, lr_decay=10)
    assert lr_multiplier(step, hps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(5, 1.0), (10, 2.0), (100, 2.0), (125, 1.0), (140, 0.4), (150, 0.0),
                                            (400, 0.0)])
def test_linear_decay_after_start(step, expected):
    # lr_scale 2, warm-up 10 steps, decay from step 100 to 0 over 50 steps
    hps = _hps(lr_scale=2.0, lr_warmup=10, lr_use_linear_decay=True, lr_start_linear_decay=100, lr_decay=50)
    assert lr_multiplier(step, hps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 1.0), (10, 1.0), (15, (1 + np.cos(np.pi / 4)) / 2), (20, 0.5),
                                            (30, 0.0), (99, 0.0)])
def test_cosine_decay(step, expected):
    hps = _hps(lr_warmup=0, lr_use_cosine_decay=True, lr_start_linear_decay=10, lr_decay=20)
    assert lr_multiplier(step, hps) == pytest.approx(expected, abs=1e-12)


def test_scheduler_drives_adamw_learning_rate():
    hps = _hps(lr=1e-2, lr_warmup=4, weight_decay=0.01, beta2=0.95)
    model = torch.nn.Linear(3, 2)
    opt, shd, scaler = make_optimizer(model, hps, amp=False)
    assert not scaler.is_enabled()
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.01 and group["eps"] == 1e-8
    seen = []
    for _ in range(6):
        seen.append(group["lr"])
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        shd.step()
    assert seen == pytest.approx([0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])


def test_ema_update_and_swap():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    ema = EMA([("p", p), ("frozen", frozen)], mu=0.9)
    assert ema.names == ["p"]  # only trained parameters are averaged
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 4.0]))
    ema.step()  # 0.9 * [1, 2] + 0.1 * [3, 4]
    with torch.no_grad():
        p.copy_(torch.tensor([0.0, 0.0]))
    ema.step()  # 0.9 * [1.2, 2.2]
    torch.testing.assert_close(ema.state[0], torch.tensor([1.08, 1.98]))
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.tensor([1.08, 1.98]))
    torch.testing.assert_close(ema.state[0], torch.tensor([0.0, 0.0]))
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.tensor([0.0, 0.0]))


def test_cpu_ema_updates_every_freq_steps_with_mu_to_the_freq():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    ema = EMA([("p", p)], mu=0.5, freq=3, device="cpu")
    with torch.no_grad():
        p.fill_(8.0)
    ema.step()
    ema.step()
    assert ema.state[0].item() == 0.0  # nothing before the freq-th step
    ema.step()
    assert ema.state[0].item() == pytest.approx(0.125 * 0.0 + 0.875 * 8.0)
    assert ema.state[0].device.type == "cpu"


def test_ema_keeps_float16_params_in_float32():
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float16))
    ema = EMA([("w", p)], mu=0.999)
    assert ema.state[0].dtype == torch.float32
    with torch.no_grad():
        p.fill_(2.0)
    ema.step()
    assert ema.state[0][0].item() == pytest.approx(1.001)  # not representable in float16
    ema.swap()
    assert p.dtype == torch.float16


def test_ema_state_dict_round_trip_is_weights_only():
    p = torch.nn.Parameter(torch.randn(4, 3))
    ema = EMA([("layer.w", p)], mu=0.99)
    ema.step()
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = EMA([("layer.w", torch.nn.Parameter(torch.zeros(4, 3)))], mu=0.99)
    other.load_state_dict(state)
    torch.testing.assert_close(other.state[0], ema.state[0])
    assert other.steps == 1
    with pytest.raises(KeyError, match="lacks 1 parameters"):
        EMA([("other.w", torch.nn.Parameter(torch.zeros(1)))], mu=0.9).load_state_dict(state)
    with pytest.raises(ValueError, match="shape"):
        EMA([("layer.w", torch.nn.Parameter(torch.zeros(2)))], mu=0.9).load_state_dict(state)


def test_ema_rejects_bad_settings():
    with pytest.raises(ValueError, match="mu"):
        EMA([], mu=1.5)
    with pytest.raises(ValueError, match="cpu_ema_freq"):
        EMA([], mu=0.9, freq=0)


def test_make_ema_follows_the_original_defaults():
    model = torch.nn.Linear(2, 2)
    assert default_mu(bs=4, world_size=2) == pytest.approx(0.999)
    assert make_ema(model, _hps(train=False)) is None
    assert make_ema(model, _hps(train=True, ema=False)) is None
    ema = make_ema(model, _hps(train=True, bs=8))
    assert ema.mu == pytest.approx(1 - 1 / 1000) and ema.freq == 1
    cpu = make_ema(model, setup_hparams("small_vqvae,cpu_ema", dict(train=True, mu=0.99)))
    assert cpu.mu == 0.99 and cpu.freq == 100 and cpu.state[0].device.type == "cpu"


def test_plain_hps_loads_weights_only():
    hps = _hps(name="x")
    hps.bandwidth = {"l2": np.float64(0.25), "spec": 3.0}
    hps.processor = object()
    hps.nested = [object()]
    plain = plain_hps(hps)
    assert "processor" not in plain and "nested" not in plain
    assert plain["bandwidth"] == {"l2": 0.25, "spec": 3.0} and type(plain["bandwidth"]["l2"]) is float
    assert plain["downs_t"] == (5, 3)
    buf = io.BytesIO()
    torch.save({"hps": plain}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["hps"] == plain


def test_metrics_average_by_batch_and_logger_writes_jsonl(tmp_path):
    metrics = Metrics()
    assert metrics.update({"loss": 2.0, "gn": 1.0}, batch=1) == {"loss": 2.0, "gn": 1.0}
    metrics.update({"loss": 5.0, "gn": 1.0}, batch=3)
    assert metrics.avg("loss") == pytest.approx((2.0 + 15.0) / 4)
    metrics.update({"loss": 1.0}, batch=2, prefix="test_")
    assert metrics.averages("test_") == {"loss": 1.0}
    logger = Logger(str(tmp_path / "run"), rank=0)
    logger.step()
    logger.add_scalars({"loss": 1.5})
    logger.add_audios("x", torch.zeros(2, 100, 1), sample_rate=100, max_log=1)
    logger.close()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "split": "train", "loss": 1.5}]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run").iterdir())


def test_grad_norm_clipping_helpers_and_checksum():
    from jukebox.utils.torch_utils import grad_norm, params_checksum, scale_grads
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert grad_norm([a, b]) == pytest.approx(5.0)
    scale_grads([a, b], 0.5)
    assert grad_norm([a, b]) == pytest.approx(2.5)
    b.grad = torch.tensor([float("inf")])
    assert grad_norm([a, b]) == float("inf")

    model = torch.nn.Linear(3, 2)
    same = torch.nn.Linear(3, 2)
    same.load_state_dict(model.state_dict())
    assert torch.equal(params_checksum(model), params_checksum(same))
    with torch.no_grad():
        same.weight[0, 0], same.weight[0, 1] = same.weight[0, 1].clone(), same.weight[0, 0].clone()
    assert not torch.equal(params_checksum(model), params_checksum(same))
