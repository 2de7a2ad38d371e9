"""Spectral and sample-domain losses, strides and sample-length rounding match the original."""
import librosa
import numpy as np
import pytest
import torch

from conftest import load_fixture
from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.make_models import calculate_hop_lengths, calculate_strides, make_vqvae, round_sample_length
from jukebox.utils import audio_utils as au

RTOL = 1e-5


@pytest.fixture(scope="module")
def utils_fixture():
    return load_fixture("utils")


@pytest.fixture(scope="module")
def spectral(utils_fixture):
    return utils_fixture["spectral"]


def _rel_close(actual, expected):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * expected.abs().max().item() * 1e-2)


def test_default_stft_settings(spectral):
    stft = spectral["hps"]["default_stft"]
    assert au.DEFAULT_STFT == au.STFTValues(stft["n_fft"], stft["hop_length"], stft["window_size"])
    assert au.multispec_stfts(spectral["hps"]) == [au.STFTValues(2048, 240, 1200), au.STFTValues(1024, 120, 600),
                                                   au.STFTValues(512, 50, 240)]


@pytest.mark.parametrize("suffix", ["", "_stereo"])
def test_spectral_losses(spectral, suffix):
    hps = Hyperparams(spectral["hps"])
    x_in, x_out = spectral[f"x_in{suffix}"], spectral[f"x_out{suffix}"]
    _rel_close(au.spectral_loss(x_in, x_out, hps), spectral[f"spectral_loss{suffix}"])
    _rel_close(au.multispectral_loss(x_in, x_out, hps), spectral[f"multispectral_loss{suffix}"])
    _rel_close(au.spectral_convergence(x_in, x_out, hps), spectral[f"spectral_convergence{suffix}"])


def test_spectral_convergence_masks_silence(spectral):
    assert spectral["x_in"][-1].abs().max() == 0
    convergence = au.spectral_convergence(spectral["x_in"], spectral["x_out"])
    assert convergence[-1] == 0 and (convergence[:-1] > 0).all()


def test_log_magnitude_and_spectrogram(spectral):
    hps = Hyperparams(spectral["hps"])
    _rel_close(au.log_magnitude_loss(spectral["x_in"], spectral["x_out"], hps), spectral["log_magnitude_loss"])
    _rel_close(au.spec(au.squeeze(spectral["x_out"])), spectral["spec_default_stft_of_x_out"])


def test_stereo_is_averaged_before_stft(spectral):
    stereo_in, stereo_out = spectral["x_in_stereo"], spectral["x_out_stereo"]
    mono_in, mono_out = stereo_in.mean(-1, keepdim=True), stereo_out.mean(-1, keepdim=True)
    torch.testing.assert_close(au.spectral_loss(stereo_in, stereo_out), au.spectral_loss(mono_in, mono_out))


@pytest.mark.parametrize("name", ["l1", "l2", "linf", "lmix"])
def test_sample_domain_losses(spectral, name):
    hps = Hyperparams(spectral["hps"])
    lmix = {k: hps[f"lmix_{k}"] for k in ("l1", "l2", "linf")}
    loss = au.reconstruction_loss(name, spectral["x_in"], spectral["x_out"], hps.bandwidth, hps.linf_k, lmix)
    _rel_close(loss, spectral["loss_fn"][name])


def test_losses_reject_bad_input(spectral):
    hps = Hyperparams(spectral["hps"])
    with pytest.raises(ValueError, match="unknown loss_fn"):
        au.reconstruction_loss("l3", spectral["x_in"], spectral["x_out"], hps.bandwidth, hps.linf_k, {})
    with pytest.raises(ValueError, match="1 or 2 channels"):
        au.spectral_loss(torch.zeros(2, 100, 3), torch.zeros(2, 100, 3))
    with pytest.raises(ValueError, match="same length"):
        au.multispec_stfts(dict(multispec_loss_n_fft=[1, 2], multispec_loss_hop_length=[1],
                                multispec_loss_window_size=[1]))


def test_audio_preprocess_mixes_stereo_to_mono(spectral):
    stereo = spectral["x_in_stereo"]
    mono = au.audio_preprocess(stereo, dict(aug_blend=False))
    torch.testing.assert_close(mono, 0.5 * stereo[..., :1] + 0.5 * stereo[..., 1:])
    blended = au.audio_preprocess(stereo, dict(aug_blend=True))
    low, high = stereo.min(-1, keepdim=True).values, stereo.max(-1, keepdim=True).values
    assert blended.shape == mono.shape and (blended >= low - 1e-6).all() and (blended <= high + 1e-6).all()


def test_calculate_strides_and_hop_lengths(utils_fixture):
    for case in utils_fixture["calculate_strides"]:
        assert calculate_strides(case["strides_t"], case["downs_t"]) == case["downsamples"]
        assert calculate_hop_lengths(case["strides_t"], case["downs_t"]) == case["hop_lengths"]


def test_sample_length_rounding(utils_fixture):
    for case in utils_fixture["sample_length_rounding"]:
        args = (case["sample_length_in_seconds"], case["sr"], case["strides_t"], case["downs_t"])
        assert round_sample_length(*args) == case["sample_length"]
        hps = setup_hparams("", dict(sample_length=0, sample_length_in_seconds=case["sample_length_in_seconds"],
                                     sr=case["sr"], strides_t=case["strides_t"], downs_t=case["downs_t"],
                                     levels=len(case["downs_t"]), width=4, depth=1, emb_width=4, l_bins=8))
        vqvae = make_vqvae(hps, "meta")
        assert hps.sample_length == vqvae.sample_length == case["sample_length"]


class _Chunks:
    """A minimal dataset of (T, C) chunks, as the data pipeline hands them over."""

    def __init__(self, chunks, sr):
        self.chunks, self.sr = chunks, sr

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return self.chunks[i]


def test_calculate_bandwidth_statistics():
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.5, 0.5, size=(4096, 2)).astype(np.float32) * (i + 1) for i in range(40)]
    dataset = _Chunks(chunks, sr=100)
    # 100 Hz * 90 s = 9000 samples: items 0 and 16 are read (8192 samples each, stepping by 16).
    bandwidth = au.calculate_bandwidth(dataset, Hyperparams(sr=100), duration=90)
    used = np.stack([chunks[i] for i in (0, 16)]).astype(np.float64)
    assert bandwidth["l1"] == pytest.approx(np.abs(used).mean(), rel=1e-9)
    assert bandwidth["l2"] == pytest.approx(used.var(), rel=1e-9)
    # The spectral norm is the mean Frobenius norm of the magnitudes, computed the way the losses do.
    norms = [au.norm(au.spec(torch.from_numpy(c.astype(np.float64)).mean(1)[None])).item() for c in used]
    assert bandwidth["spec"] == pytest.approx(np.mean(norms), rel=1e-6)
    # Tensors and (x, y) pairs work too.
    pairs = _Chunks([(torch.from_numpy(c), None) for c in chunks], sr=100)
    assert au.calculate_bandwidth(pairs, Hyperparams(sr=100), duration=90) == pytest.approx(bandwidth)
    with pytest.raises(ValueError, match="saw no audio"):
        au.calculate_bandwidth(_Chunks([], sr=100), Hyperparams(sr=100))


def test_calculate_bandwidth_matches_librosa_reflect_stft():
    x = np.random.default_rng(1).standard_normal((3000, 1))
    bandwidth = au.calculate_bandwidth(_Chunks([x], sr=10), Hyperparams(sr=10), duration=1)
    expected = np.linalg.norm(np.abs(librosa.stft(x[:, 0], n_fft=2048, hop_length=256, win_length=1536,
                                                  pad_mode="reflect")))
    assert bandwidth["spec"] == pytest.approx(expected, rel=1e-9)
