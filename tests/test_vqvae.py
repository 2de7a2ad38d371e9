"""The VQ-VAE reproduces the original's encoder outputs, codes, reconstructions, losses and metrics."""
import json
import math

import pytest
import torch

from conftest import MANIFESTS, load_fixture
from jukebox.hparams import Hyperparams
from jukebox.make_models import make_vqvae, restore_model
from jukebox.utils.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, save_checkpoint
from jukebox.vqvae.encdec import DecoderConvBock
from jukebox.vqvae.losses import VQVAELoss, make_vqvae_loss
from jukebox.vqvae.resnet import Resnet1D

AUDIO_ATOL = 1e-5
LOSS_RTOL = 1e-5
FIXTURES = ["vqvae_3level", "vqvae_2level_small"]


@pytest.fixture(scope="module", params=FIXTURES)
def case(request):
    fixture = load_fixture(request.param)
    hps = Hyperparams(fixture["hps"])
    vqvae = make_vqvae(hps, "cpu")
    vqvae.load_state_dict(fixture["state_dict"])
    return fixture, hps, vqvae


def _close(actual, expected):
    """atol 1e-5 for O(1) values (reference/README.md section 8), scaled by max|expected| when larger:
    encoder outputs reach ~10, where float32 convolutions on another CPU differ by ~1.2e-5."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    atol = AUDIO_ATOL * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def test_structure_and_state_dict_names(case):
    fixture, hps, vqvae = case
    state = vqvae.state_dict()
    assert list(state) == list(fixture["state_dict"])
    assert all(state[k].shape == v.shape for k, v in fixture["state_dict"].items())
    assert vqvae.levels == hps.levels
    assert vqvae.sample_length == hps.sample_length
    assert vqvae.z_shapes == [(hps.sample_length // hop,) for hop in vqvae.hop_lengths]
    assert not vqvae.training


def test_encoder_outputs(case):
    fixture, _, vqvae = case
    x = fixture["inputs"]["x"]
    with torch.no_grad():
        for level, expected in enumerate(fixture["outputs"]["encoder_out"]):
            _close(vqvae.encoders[level](x.permute(0, 2, 1))[-1], expected)


def test_encode_codes_exact(case):
    fixture, _, vqvae = case
    x, out = fixture["inputs"]["x"], fixture["outputs"]
    with torch.no_grad():
        zs = vqvae.encode(x)
        zs_chunked = vqvae.encode(x, bs_chunks=x.shape[0])
        zs_upper = vqvae.encode(x, start_level=1)
        zs_lowest = vqvae.encode(x, end_level=1)
    for got, chunked, expected, expected_chunked in zip(zs, zs_chunked, out["zs"], out["zs_bs_chunks"]):
        assert got.dtype == torch.int64
        assert torch.equal(got, expected)
        assert torch.equal(chunked, expected_chunked)
    assert len(zs_upper) == vqvae.levels - 1
    assert all(torch.equal(a, b) for a, b in zip(zs_upper, out["zs"][1:]))
    assert len(zs_lowest) == 1 and torch.equal(zs_lowest[0], out["zs"][0])


def test_decode_every_start_level(case):
    fixture, _, vqvae = case
    zs = fixture["outputs"]["zs"]
    with torch.no_grad():
        for level, expected in enumerate(fixture["outputs"]["x_ds"]):
            _close(vqvae.decode(zs[level:], start_level=level), expected)
            _close(vqvae.decode(zs[level:], start_level=level, bs_chunks=2), expected)


def test_decode_needs_only_the_lowest_level(case):
    """The original's call pattern: the levels above ``start_level`` may be left out, as only the lowest one is
    decoded."""
    fixture, _, vqvae = case
    zs = fixture["outputs"]["zs"]
    with torch.no_grad():
        for level, expected in enumerate(fixture["outputs"]["x_ds"]):
            lowest = vqvae.decode(zs[level:level + 1], start_level=level)
            assert torch.equal(lowest, vqvae.decode(zs[level:], start_level=level))
            _close(lowest, expected)


def test_bottleneck_outputs_without_update(case):
    fixture, _, vqvae = case
    out = fixture["outputs"]
    codebooks = [block.k.clone() for block in vqvae.bottleneck.level_blocks]
    xs_quantised = vqvae.bottleneck.decode(out["zs"])
    with torch.no_grad():
        for level, block in enumerate(vqvae.bottleneck.level_blocks):
            _close(xs_quantised[level], out["xs_quantised"][level])
            z, x_q, commit_loss, metrics = block(out["encoder_out"][level], update_k=False)
            assert torch.equal(z, out["zs"][level])
            _close(x_q, out["xs_quantised"][level])
            torch.testing.assert_close(commit_loss, out["commit_losses"][level], rtol=LOSS_RTOL, atol=0)
            torch.testing.assert_close(metrics["fit"], out["bottleneck_fit"][level], rtol=LOSS_RTOL, atol=0)
            torch.testing.assert_close(metrics["pn"], out["bottleneck_prenorm"][level], rtol=LOSS_RTOL, atol=0)
            assert set(metrics) == {"fit", "pn"}
    assert all(torch.equal(block.k, k) for block, k in zip(vqvae.bottleneck.level_blocks, codebooks))


def test_forward_loss_and_metrics(case):
    fixture, hps, vqvae = case
    expected = fixture["outputs"]["forward"]
    codebooks = [block.k.clone() for block in vqvae.bottleneck.level_blocks]
    with torch.no_grad():
        x_out, loss, metrics = vqvae(fixture["inputs"]["x"], hps, loss_fn=hps.loss_fn)
    _close(x_out, expected["x_out"])
    torch.testing.assert_close(loss, expected["loss"], rtol=LOSS_RTOL, atol=0)
    assert list(metrics) == list(expected["metrics"])
    for name, value in expected["metrics"].items():
        torch.testing.assert_close(metrics[name], value, rtol=LOSS_RTOL, atol=0, msg=name)
    # Eval mode: the codebooks stay as loaded.
    assert all(torch.equal(block.k, k) for block, k in zip(vqvae.bottleneck.level_blocks, codebooks))


def test_forward_training_mode_reports_quantiser_metrics():
    fixture = load_fixture("vqvae_2level_small")
    hps = Hyperparams(fixture["hps"])
    vqvae = make_vqvae(hps, "cpu")
    vqvae.load_state_dict(fixture["state_dict"])
    vqvae.train()
    vqvae.requires_grad_(True)
    for block in vqvae.bottleneck.level_blocks:
        block.restore_k(num_tokens=1000, threshold=1.0)
    x_out, loss, metrics = vqvae(fixture["inputs"]["x"], hps, loss_fn=hps.loss_fn)
    assert {"fit", "pn", "entropy", "used_curr", "usage", "dk"} <= set(metrics)
    loss.backward()
    assert vqvae.encoders[0].level_blocks[0].model[0][0].weight.grad is not None
    assert not any(v.requires_grad for v in metrics.values())


def test_bad_inputs_raise_clear_errors(case):
    fixture, hps, vqvae = case
    x = fixture["inputs"]["x"]
    with pytest.raises(ValueError, match=r"\(N, T, 1\)"):
        vqvae.encode(x[..., 0])
    with pytest.raises(ValueError, match="multiple of the top hop length"):
        vqvae(x[:, :-1], hps, loss_fn=hps.loss_fn)
    zs = fixture["outputs"]["zs"]
    with pytest.raises(ValueError, match="one per level"):
        vqvae.decode(zs[1:], start_level=0, end_level=len(zs))
    with pytest.raises(ValueError, match="start_level < end_level"):
        vqvae.decode(zs, start_level=1)  # more levels than the model has above start_level
    with pytest.raises(ValueError, match="at least one level"):
        vqvae.decode([])
    with pytest.raises(ValueError, match="unknown loss_fn"):
        vqvae(x, hps, loss_fn="l3")


def test_restore_from_ddp_checkpoint(tmp_path):
    fixture = load_fixture("vqvae_2level_small")
    path = tmp_path / "run" / "checkpoint_latest.pth.tar"
    hps = Hyperparams(fixture["hps"])
    save_checkpoint(path, dict(hps=hps, model={f"module.{k}": v for k, v in fixture["state_dict"].items()}, step=7))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    vqvae = make_vqvae(Hyperparams(hps, restore_vqvae=str(path)), "cpu")
    assert vqvae.step == 7 and not vqvae.training
    with torch.no_grad():
        zs = vqvae.encode(fixture["inputs"]["x"])
    assert all(torch.equal(a, b) for a, b in zip(zs, fixture["outputs"]["zs"]))

    trained = make_vqvae(Hyperparams(hps, restore_vqvae=str(path), train=True, bs=2), "cpu")
    assert trained.training
    for level, block in enumerate(trained.bottleneck.level_blocks):
        expected_usage = (hps.sample_length // trained.hop_lengths[level]) * 2 / hps.l_bins
        torch.testing.assert_close(block.k_elem, torch.full((hps.l_bins,), expected_usage))
        torch.testing.assert_close(block.k_sum, block.k * expected_usage)
        assert block.threshold == hps.revival_threshold


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth.tar")
    junk = tmp_path / "junk.pth.tar"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(junk)
    unsafe = tmp_path / "unsafe.pth.tar"
    torch.save({"model": {}, "evil": CheckpointError("x")}, unsafe)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(unsafe)

    fixture = load_fixture("vqvae_2level_small")
    vqvae = make_vqvae(Hyperparams(fixture["hps"]), "cpu")
    state = dict(fixture["state_dict"])
    state.pop("decoders.0.out.bias")
    state["extra.weight"] = torch.zeros(1)
    state["bottleneck.level_blocks.0.k"] = torch.zeros(3, 16)
    with pytest.raises(CheckpointError) as error:
        load_state_dict_checked(vqvae, state)
    message = str(error.value)
    assert "missing keys: decoders.0.out.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "bottleneck.level_blocks.0.k (checkpoint (3, 16), model (32, 16))" in message
    restore_model(Hyperparams(), vqvae, "")
    assert vqvae.step == 0


def test_checkpointed_resnet_layout_matches_upsampler_conditioner():
    """cond_c_res=1 keeps the residual blocks in `blocks` (the upsampler manifest's names)."""
    manifest = json.loads((MANIFESTS / "upsampler_level_0.json").read_text())
    prefix = "conditioner_blocks.0.cond."
    expected = [[k[len(prefix):], shape, dtype] for k, shape, dtype in manifest["params"] if k.startswith(prefix)]
    with torch.device("meta"):
        cond = DecoderConvBock(1920, 1920, 2, 2, width=1024, depth=16, m_conv=1.0, dilation_growth_rate=3,
                               dilation_cycle=8, zero_out=False, res_scale=False, checkpoint_res=1)
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in cond.state_dict().items()]
    assert got == expected
    dilations = [block.model[1].dilation[0] for block in cond.model[1][0].blocks]
    assert dilations == [3 ** (d % 8) for d in range(16)]


def test_checkpointed_resnet_computes_the_same():
    torch.manual_seed(0)
    plain = Resnet1D(8, 3, dilation_growth_rate=3, res_scale=True, reverse_dilation=True)
    checkpointed = Resnet1D(8, 3, dilation_growth_rate=3, res_scale=True, reverse_dilation=True, checkpoint_res=True)
    checkpointed.load_state_dict({k.replace("model.", "blocks.", 1): v for k, v in plain.state_dict().items()})
    assert [b.model[1].dilation[0] for b in plain.model] == [9, 3, 1]
    assert plain.model[0].res_scale == pytest.approx(1 / math.sqrt(3))
    x = torch.randn(2, 8, 50)
    for module in (plain, checkpointed):
        module.train()
        module(x).square().sum().backward()
    torch.testing.assert_close(checkpointed(x), plain(x))
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


# --------------------------------------------------------------------------- the loss module
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
