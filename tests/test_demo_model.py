"""The bundled demo model (jukebox/models/demo): it loads, samples in every mode, and its card's
numbers are the ones scripts/evaluate_demo.py measured."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import DATA, REPO
from jukebox import sample
from jukebox.hparams import DEMO_DIR, Hyperparams, setup_hparams
from jukebox.make_models import MODELS, make_model
from jukebox.utils.audio_utils import spectral_convergence
from jukebox.utils.checkpoint import load_checkpoint

FILES = ("vqvae.pth.tar", "prior_level_0.pth.tar", "prior_level_1.pth.tar", "prior_level_2.pth.tar")
SR = 22050
SECONDS = 0.75  # 16512 samples: one window of the level-1 upsampler (512 tokens x 32), several of level 0


def _evaluate_module():
    spec = importlib.util.spec_from_file_location("evaluate_demo", REPO / "scripts" / "evaluate_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weights_are_bundled_in_the_package():
    assert os.path.samefile(DEMO_DIR, REPO / "jukebox" / "models" / "demo")
    sizes = [os.path.getsize(os.path.join(DEMO_DIR, f)) for f in FILES]
    assert sum(sizes) <= 40 * 2 ** 20
    for name in FILES[1:]:
        state = load_checkpoint(os.path.join(DEMO_DIR, name))["model"]
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert setup_hparams("demo_vqvae").restore_vqvae == os.path.join(DEMO_DIR, "vqvae.pth.tar")


def test_demo_model_loads_and_reconstructs():
    hps = Hyperparams(sample_length=16384, sr=SR)
    vqvae, priors = make_model("demo", "cpu", hps)
    assert MODELS["demo"][0] == "demo_vqvae" and len(priors) == 3
    assert vqvae.step > 0 and vqvae.hop_lengths == [8, 32, 128]
    x = torch.from_numpy(sf.read(sorted(DATA.glob("music/*.flac"))[0], dtype="float32", frames=16384)[0])
    x = x.reshape(1, -1, 1)
    with torch.no_grad():
        zs = vqvae.encode(x)
        assert [tuple(z.shape) for z in zs] == [(1, 2048), (1, 512), (1, 128)]
        x_out = vqvae.decode(zs[:1], start_level=0, end_level=1)
    # the (weak, see the card) level-0 reconstruction recovers part of the spectrum; silence scores 1.0
    assert float(spectral_convergence(x, x_out)[0]) < 0.95
    for level, lazy in enumerate(priors):
        prior = lazy.load("cpu")
        assert prior.level == level and prior.l_bins == 256 and prior.n_ctx == 512
        assert all(p.dtype == torch.float32 and not p.is_meta for p in prior.parameters())
        lazy.unload()


@pytest.mark.slow
def test_demo_sampling_ancestral_upsample_primed(tmp_path):
    common = dict(model="demo", levels=3, sample_length_in_seconds=SECONDS, total_sample_length_in_seconds=SECONDS,
                  sr=SR, n_samples=1, hop_fraction=(0.5, 0.5, 0.5), fp16=False, seed=3)
    sample.run(name=str(tmp_path / "anc"), mode="ancestral", **common)
    data = load_checkpoint(tmp_path / "anc" / "level_0" / "data.pth.tar")
    assert [tuple(z.shape) for z in data["zs"]] == [(1, 2064), (1, 516), (1, 129)]
    audio, sr = sf.read(tmp_path / "anc" / "level_0" / "item_0.wav")
    assert sr == SR and len(audio) == 16512 and np.sqrt(np.mean(audio ** 2)) > 1e-4
    assert (tmp_path / "anc" / "level_0" / "index.html").exists()

    sample.run(name=str(tmp_path / "up"), mode="upsample",
               codes_file=str(tmp_path / "anc" / "level_2" / "data.pth.tar"),
               **common)
    up = load_checkpoint(tmp_path / "up" / "level_0" / "data.pth.tar")["zs"]
    assert torch.equal(up[2], data["zs"][2]) and up[0].shape == data["zs"][0].shape

    prompt = sorted(DATA.glob("music/*.flac"))[0]
    # a long prompt leaves few tokens to sample, which keeps this run short
    sample.run(name=str(tmp_path / "primed"), mode="primed", audio_file=str(prompt), prompt_length_in_seconds=0.6,
               **common)
    primed = load_checkpoint(tmp_path / "primed" / "level_0" / "data.pth.tar")["zs"]
    assert [z.shape[1] for z in primed] == [2064, 516, 129]
    vqvae, _ = make_model("demo", "cpu", Hyperparams(sample_length=16512, sr=SR))
    n_prompt = int(0.6 * SR) // 128
    x = torch.from_numpy(sf.read(prompt, dtype="float32", frames=n_prompt * 128)[0]).reshape(1, -1, 1)
    with torch.no_grad():
        top = vqvae.encode(x, start_level=2)[0]
    assert torch.equal(primed[2][:, :n_prompt], top[:, :n_prompt])  # the prompt's codes are kept


def test_card_quotes_the_measured_numbers():
    with open(os.path.join(DEMO_DIR, "evaluation.json"), encoding="utf-8") as f:
        result = json.load(f)
    evaluate_demo = _evaluate_module()
    with open(os.path.join(DEMO_DIR, "MODEL_CARD.md"), encoding="utf-8") as f:
        card = f.read()
    block = card.split(evaluate_demo.CARD_START, 1)[1].split(evaluate_demo.CARD_END, 1)[0]
    assert block.strip() == evaluate_demo.table(result).strip()
    # the claims the card makes about these numbers
    for p in result["priors"]:
        assert p["test_bits_per_token"] < p["unigram_entropy_bits"] < p["uniform_bits"]
    vq = result["vqvae"]
    for t, u in zip(vq["trained"], vq["untrained"]):
        assert t["spectral_convergence"] < min(u["spectral_convergence"], vq["silence"]["spectral_convergence"])
    # continuation: closer to its prompt's spectrum than an unprimed sample, for every prompt and sample
    for c in result["samples"]["continuation"]:
        assert all(p < u for p, u in zip(c["primed_distance_db"], c["unprimed_distance_db"]))


def test_evaluation_metrics_on_known_signals():
    evaluate_demo = _evaluate_module()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(SR).astype(np.float32)
    tone = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)
    assert evaluate_demo.audio_stats(noise, SR)["spectral_flatness"] > 0.3
    assert evaluate_demo.audio_stats(tone, SR)["spectral_flatness"] < 0.01
    assert evaluate_demo.spectrum_distance(tone, tone, SR) == 0.0
    assert evaluate_demo.spectrum_distance(tone, noise, SR) > 10.0
    z = torch.tensor([[0, 0, 1, 1]])
    assert evaluate_demo.unigram_entropy(z, 4) == pytest.approx(1.0)
