"""The VQ-VAE's loss module (jukebox/vqvae/losses.py) reproduces the original's losses and metrics."""
import pytest
import torch

from conftest import load_fixture
from jukebox.hparams import Hyperparams
from jukebox.make_models import make_vqvae
from jukebox.vqvae.losses import VQVAELoss, make_vqvae_loss

LOSS_RTOL = 1e-5


@pytest.fixture(scope="module", params=["vqvae_3level", "vqvae_2level_small"])
def case(request):
    fixture = load_fixture(request.param)
    hps = Hyperparams(fixture["hps"])
    vqvae = make_vqvae(hps, "cpu")
    vqvae.load_state_dict(fixture["state_dict"])
    return fixture, hps, vqvae


@torch.no_grad()
def test_loss_module_gives_the_original_losses_and_metrics(case):
    fixture, hps, vqvae = case
    expected = fixture["outputs"]["forward"]
    x = fixture["inputs"]["x"]
    loss_module = make_vqvae_loss(hps)
    x_out, loss, metrics = loss_module(x, *vqvae.reconstruct(x))
    torch.testing.assert_close(x_out, expected["x_out"], atol=1e-5 * max(1.0, expected["x_out"].abs().max()), rtol=0)
    torch.testing.assert_close(loss, expected["loss"], rtol=LOSS_RTOL, atol=0)
    assert list(metrics) == list(expected["metrics"])
    for name, value in expected["metrics"].items():
        torch.testing.assert_close(metrics[name], value, rtol=LOSS_RTOL, atol=0, msg=name)
    # The model's forward with the loss module, and the original's form forward(x, hps, loss_fn), agree exactly.
    for out in (vqvae(x, loss=loss_module), vqvae(x, hps, loss_fn=hps.loss_fn)):
        assert torch.equal(out[0], x_out) and torch.equal(out[1], loss)
        assert all(torch.equal(out[2][k], v) for k, v in metrics.items())


@torch.no_grad()
def test_loss_weights_and_loss_fn_come_from_hps(case):
    fixture, hps, vqvae = case
    x = fixture["inputs"]["x"]
    outputs = vqvae.reconstruct(x)
    _, base, metrics = make_vqvae_loss(Hyperparams(hps, commit=0.0, spectral=0.0, multispectral=0.0))(x, *outputs)
    _, weighted, _ = make_vqvae_loss(Hyperparams(hps, commit=0.5, spectral=2.0, multispectral=0.0))(x, *outputs)
    torch.testing.assert_close(base, metrics["recons_loss"])
    torch.testing.assert_close(weighted, base + 0.5 * metrics["commit_loss"] + 2.0 * metrics["spectral_loss"])
    for name in ("l1", "l2"):  # level 0's reconstruction loss is the loss_fn asked for
        _, _, by_name = make_vqvae_loss(hps, loss_fn=name)(x, *outputs)
        torch.testing.assert_close(by_name["recons_loss_l1"], by_name[f"{name}_loss"])


def test_the_loss_is_built_once_with_clear_errors(case):
    fixture, hps, vqvae = case
    without_bandwidth = Hyperparams({k: v for k, v in hps.items() if k != "bandwidth"})
    with pytest.raises(ValueError, match="calculate_bandwidth"):
        make_vqvae_loss(without_bandwidth)
    with pytest.raises(ValueError, match="same length"):
        make_vqvae_loss(Hyperparams(hps, multispec_loss_n_fft=(2048,)))
    assert isinstance(make_vqvae_loss(hps), VQVAELoss) and not list(make_vqvae_loss(hps).parameters())
    with pytest.raises(TypeError, match="make_vqvae_loss"):
        vqvae(fixture["inputs"]["x"])
