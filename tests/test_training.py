"""Each part of the trainer (jukebox/training) on its own: optimiser/schedule/scaler, EMA, DDP, training state."""
from __future__ import annotations

import copy
import io
import os

import pytest
import torch
import torch.distributed as dist

import jukebox.training.ema as ema_part
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.make_models import make_prior
from jukebox.training.ddp import make_ddp
from jukebox.training.ema import make_ema
from jukebox.training.optim import Optimiser, lr_multiplier, make_optimizer
from jukebox.training.state import TrainingState, write_checkpoint
from jukebox.utils.checkpoint import load_checkpoint
from jukebox.utils.ema import default_mu

# small_vqvae and small_prior scaled down (as in test_train); 2048 samples are 8 top-level codes.
TINY_VQVAE = dict(sample_length=2048, width=16, depth=2, emb_width=16, l_bins=64, bs=2, labels=False, train=True)
TINY_PRIOR = dict(TINY_VQVAE, prior=True, levels=2, level=1, n_ctx=8, blocks=4, prior_width=32, prior_depth=2,
                  weight_decay=0.01)


def _vqvae_hps(**overrides) -> Hyperparams:
    return setup_hparams("small_vqvae", {**TINY_VQVAE, **overrides})


def _prior_hps(**overrides) -> Hyperparams:
    return setup_hparams("small_vqvae,small_prior,all_fp16,cpu_ema", {**TINY_PRIOR, "cpu_ema_freq": 1, **overrides})


def _updates(optimiser: Optimiser, n: int, seed: int, ema=None) -> None:
    """``n`` optimiser updates with seeded random gradients, as the trainer makes them."""
    g = torch.Generator().manual_seed(seed)
    opt, shd, _ = optimiser
    for _ in range(n):
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt.zero_grad()
        shd.step()
        if ema is not None:
            ema.step()


def _through_file(state: dict) -> dict:
    """``state`` as a checkpoint file gives it back (weights only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# -- optimiser, schedule and loss scaler --------------------------------------------------------
def test_optimiser_round_trip_continues_adam_and_the_schedule():
    hps = _vqvae_hps(lr=1e-2, lr_warmup=4)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimiser = make_optimizer(model, hps, amp=False)
    _updates(optimiser, 3, seed=0)
    saved = _through_file(optimiser.state_dict())
    assert saved["scaler"] is None and saved["shd"]["last_epoch"] == 3

    twin = copy.deepcopy(model)
    resumed = make_optimizer(twin, hps, amp=False)
    resumed.resume(saved, hps, step=3)
    assert resumed.lr == optimiser.lr == pytest.approx(0.75e-2)
    _updates(optimiser, 2, seed=1)
    _updates(resumed, 2, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_optimiser_hparams_given_at_resume_apply():
    hps = _vqvae_hps(lr=1e-2, lr_warmup=4)
    optimiser = make_optimizer(torch.nn.Linear(3, 2), hps, amp=False)
    _updates(optimiser, 3, seed=0)
    saved = _through_file(optimiser.state_dict())

    now = _vqvae_hps(lr=2e-2, lr_warmup=4, beta2=0.95, weight_decay=0.1, lr_use_linear_decay=True,
                     lr_start_linear_decay=0, lr_decay=10)
    resumed = make_optimizer(torch.nn.Linear(3, 2), now, amp=False)
    resumed.resume(saved, now, step=3)
    group = resumed.opt.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.1
    assert resumed.lr == pytest.approx(2e-2 * lr_multiplier(3, now))
    assert all(int(s["step"]) == 3 for s in resumed.opt.state.values())

    fresh = make_optimizer(torch.nn.Linear(3, 2), now, amp=False)
    fresh.resume(saved, Hyperparams(now, reset_opt=True, reset_shd=True), step=3)
    assert not fresh.opt.state and fresh.lr == 0.0  # warm-up starts again
    other_model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="--reset_opt"):
        make_optimizer(other_model, hps, amp=False).resume(saved, hps, step=3)


def test_loss_scaler_is_enabled_by_mixed_precision_and_restored():
    hps = _vqvae_hps(fp16_loss_scale=1024.0, fp16_scale_window=7)
    _, _, plain = make_optimizer(torch.nn.Linear(3, 2), hps, amp=False)
    assert not plain.is_enabled()
    optimiser = make_optimizer(torch.nn.Linear(3, 2), hps, amp=True)
    assert optimiser.scaler.get_scale() == 1024.0 and optimiser.scaler.get_growth_interval() == 7
    optimiser.scaler.scale(torch.tensor(1.0))
    optimiser.scaler.update(new_scale=256.0)  # e.g. backed off after overflows
    resumed = make_optimizer(torch.nn.Linear(3, 2), hps, amp=True)
    resumed.resume(_through_file(optimiser.state_dict()), hps, step=0)
    assert resumed.scaler.get_scale() == 256.0
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(torch.nn.Linear(3, 2).requires_grad_(False), hps, amp=False)


# -- EMA ----------------------------------------------------------------------------------------
def test_ema_averages_the_trained_weights_with_the_global_batch_decay(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)  # e.g. a frozen part
    monkeypatch.setattr(ema_part, "get_world_size", lambda: 4)
    ema = make_ema(model, _vqvae_hps(bs=2))
    assert ema.names == ["1.weight", "1.bias"]
    assert ema.mu == pytest.approx(default_mu(2, 4)) == pytest.approx(0.999)
    assert make_ema(model, _vqvae_hps(ema=False)) is None and make_ema(model, _vqvae_hps(train=False)) is None


# -- DDP ----------------------------------------------------------------------------------------
@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_wrapper_settings_and_gradients_on_one_process(one_process_group):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    plain = copy.deepcopy(model)
    ddp = make_ddp(model, _vqvae_hps(bucket=16))
    assert ddp.module is model and ddp.gradient_as_bucket_view and not ddp.find_unused_parameters
    assert ddp.bucket_bytes_cap == 16 * 1024 * 1024
    assert not getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", True))
    x = torch.randn(5, 4)
    ddp(x).sum().backward()
    plain(x).sum().backward()
    for p, q in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert make_ddp(torch.nn.Linear(2, 2), _vqvae_hps(prior=True)).find_unused_parameters  # priors skip parts


# -- training state -----------------------------------------------------------------------------
def _count_reads(monkeypatch, path) -> list:
    """Every torch.load of ``path`` from now on, in a list."""
    reads, real_load = [], torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.abspath(f) == os.path.abspath(path):
            reads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


def test_state_builds_the_model_with_optimiser_and_ema_only_when_training():
    state = TrainingState(_vqvae_hps(curr_epoch=2), torch.device("cpu"))
    assert state.model is state.vqvae and state.model.training and state.step == 0 and state.epoch == 2
    assert isinstance(state.optimiser, Optimiser) and state.ema is not None
    assert state.ema.names == [n for n, _ in state.model.named_parameters()]
    frozen = TrainingState(_vqvae_hps(train=False), torch.device("cpu"))
    assert frozen.optimiser is None and frozen.ema is None and not frozen.model.training
    # The same seed gives the same initial weights (on every rank).
    assert all(torch.equal(p, q) for p, q in zip(state.model.parameters(), frozen.model.parameters()))


def test_checkpoint_holds_the_ema_weights_as_model_and_the_live_ones_as_ema():
    state = TrainingState(_vqvae_hps(mu=0.5), torch.device("cpu"))
    _updates(state.optimiser, 2, seed=0, ema=state.ema)
    live = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    checkpoint = state.checkpoint()
    assert {"hps", "model", "opt", "shd", "scaler", "step", "epoch", "ema"} == set(checkpoint)
    averaged = dict(zip(state.ema.names, state.ema.state))
    for name, value in live.items():
        assert torch.equal(checkpoint["ema"]["params"][name], value)
        assert torch.equal(checkpoint["model"][name], averaged[name])
        assert torch.equal(state.model.get_parameter(name), value)  # training goes on with the live weights
    assert checkpoint["hps"]["width"] == 16 and type(checkpoint["hps"]) is dict


def test_resume_reads_the_checkpoint_once_and_continues_exactly(tmp_path, monkeypatch):
    state = TrainingState(_vqvae_hps(mu=0.5), torch.device("cpu"))
    _updates(state.optimiser, 3, seed=0, ema=state.ema)
    state.step, state.epoch = 3, 1
    write_checkpoint(str(tmp_path), state.checkpoint(), step=3)
    path = tmp_path / "checkpoint_latest.pth.tar"
    assert (tmp_path / "checkpoint_step_3.pth.tar").read_bytes() == path.read_bytes()

    reads = _count_reads(monkeypatch, path)
    resumed = TrainingState(_vqvae_hps(mu=0.5, restore_vqvae=str(path)), torch.device("cpu"))
    assert len(reads) == 1
    assert resumed.step == 3 and resumed.epoch == 1 and resumed.optimiser.lr == state.optimiser.lr

    _updates(state.optimiser, 2, seed=1, ema=state.ema)
    _updates(resumed.optimiser, 2, seed=1, ema=resumed.ema)
    for (name, p), q in zip(state.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    assert all(torch.equal(a, b) for a, b in zip(state.ema.state, resumed.ema.state))


def test_resume_resets_what_it_is_told_to(tmp_path):
    state = TrainingState(_vqvae_hps(), torch.device("cpu"))
    _updates(state.optimiser, 3, seed=0, ema=state.ema)
    state.step = 3
    write_checkpoint(str(tmp_path), state.checkpoint())
    path = str(tmp_path / "checkpoint_latest.pth.tar")
    reset = TrainingState(_vqvae_hps(restore_vqvae=path, reset_step=True, reset_opt=True, reset_shd=True),
                          torch.device("cpu"))
    assert reset.step == 0 and not reset.optimiser.opt.state and reset.optimiser.lr == 0.0
    # Without training, the checkpoint's (EMA) weights are all that is restored.
    frozen = TrainingState(_vqvae_hps(restore_vqvae=path, train=False), torch.device("cpu"))
    assert frozen.step == 0 and frozen.optimiser is None
    saved = load_checkpoint(path)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in frozen.model.state_dict().items())


def test_float16_weights_train_as_float32_and_round_trip_through_checkpoints(tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="training 8 float16 parameters"):
        state = TrainingState(_prior_hps(), torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in state.model.parameters())
    _updates(state.optimiser, 2, seed=0, ema=state.ema)
    state.step = 2
    checkpoint = state.checkpoint()
    half = {k for k, v in checkpoint["model"].items() if v.dtype == torch.float16}
    assert half == state.float16_names and "prior.transformer._attn_mods.0.attn.c_attn.w" in half
    assert all(p.dtype == torch.float32 for p in checkpoint["ema"]["params"].values())
    write_checkpoint(str(tmp_path), checkpoint)
    path = tmp_path / "checkpoint_latest.pth.tar"

    reads = _count_reads(monkeypatch, path)
    with pytest.warns(UserWarning, match="float16 parameters"):
        resumed = TrainingState(_prior_hps(restore_prior=str(path)), torch.device("cpu"))
    assert len(reads) == 1 and resumed.step == 2
    assert all(p.dtype == torch.float32 for p in resumed.model.parameters())
    again = resumed.checkpoint()
    for key in ("model", "ema"):
        flat, flat_again = _flatten(checkpoint[key]), _flatten(again[key])
        assert flat.keys() == flat_again.keys()
        assert all(v.dtype == flat_again[k].dtype and torch.equal(v, flat_again[k]) for k, v in flat.items())

    # Sampling builds the prior with the float16 weights, as they are in the checkpoint.
    prior = make_prior(_prior_hps(restore_prior=str(path), train=False), resumed.vqvae)
    for name, value in prior.state_dict().items():
        assert value.dtype == checkpoint["model"][name].dtype and torch.equal(value, checkpoint["model"][name])


def _flatten(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[f"{prefix}{key}"] = value
    return out
