"""JukeMIR representations (``jukebox.embed``): exact against the plain module path of the full-depth prior, the
truncated prior built and loaded from a full-depth checkpoint, windows and pooling, and the command line end to end
on the demo model (a corrupt file reported, reruns skipping work, two ranks splitting the files)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import DATA, IDS_DIR, REPO, env_importing, randomize_weights
from helpers import tiny_model
from jukebox.embed import Embedder, EmbeddingModel, Recipe, load_embedding_model
from jukebox.embed.embedder import resample_frames
from jukebox.embed.recipe import prepare_audio, read_clip, split_windows
from jukebox.hparams import setup_hparams
from jukebox.make_models import make_model, make_prior, make_vqvae
from jukebox.transformer.patterns import AttentionPattern
from jukebox.utils.checkpoint import CheckpointError, save_checkpoint
from jukebox.utils.io import load_audio

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Recipe(total_seconds=5.0)  # inside the tiny priors' [1 s, 10 s) duration range
SR = tiny_model.SR
# A 5b-like prior (labels with timing, merged decoder: no x_cond after the transformer, no lyrics) and a tied-decoder
# one (x_cond added after the transformer), both on the tiny VQ-VAE.
LABELLED = dict(level=2, n_ctx=16, prior_width=16, prior_depth=6, heads=2, attn_order=2, blocks=4, labels=True,
                y_bins=(120, 4111), max_bow_genre_size=5, t_bins=16, min_duration=1.0, max_duration=10.0, sr=SR)
# A 5b_lyrics-like one: a separate lyrics encoder that block 10 attends to (attn_order 8).
LYRICS = dict(LABELLED, merged_decoder=True, prior_depth=10, attn_order=8, use_tokens=True, n_tokens=8, n_vocab=80,
              prime_width=8, prime_depth=2, prime_heads=1, prime_attn_order=2, prime_blocks=4, prime_loss_fraction=0.4)


def _vqvae():
    torch.manual_seed(0)
    return make_vqvae(setup_hparams("", dict(tiny_model.TINY["tiny_vqvae"], sample_length=256)), "cpu")


def _labelled_model(merged_decoder: bool | None) -> EmbeddingModel:
    """``merged_decoder`` None: the lyrics model."""
    vqvae = _vqvae()
    hps = LYRICS if merged_decoder is None else dict(LABELLED, merged_decoder=merged_decoder)
    prior = make_prior(setup_hparams("", hps), vqvae)
    randomize_weights(prior, seed=1)
    prior.labeller = _labeller(prior)
    return EmbeddingModel("labelled", vqvae, prior, SR)


def _labeller(prior):
    from jukebox.make_models import make_labeller
    return make_labeller(prior, IDS_DIR)


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.5 * np.sin(2 * np.pi * 110 * t) + 0.1 * rng.standard_normal(t.size)).astype(np.float32)


def _plain_frames(prior, z: torch.Tensor, y: torch.Tensor | None, layer: int) -> torch.Tensor:
    """The full-depth prior's activations after ``layer`` blocks, module by module: the embedded tokens shifted
    behind the start token, plus positions and x_cond, through blocks 1..layer, plus x_cond again where the model
    adds it after its transformer; the music positions only."""
    x_cond, y_cond, prime = prior.get_cond(None, None if y is None else y.expand(z.shape[0], -1))
    tokens, skip, encoder_kv = z, 0, None
    if prior.single_enc_dec:
        tokens, x_cond = prior.prior_preprocess([prime, z], [None, x_cond])
        skip = prior.n_tokens
    else:
        encoder_kv = prior.get_encoder_kv(prime)
    ar = prior.prior
    h = ar.x_emb(tokens)
    h = torch.cat([ar.start_input(z.shape[0], y_cond), h[:, :-1]], dim=1) + ar.pos_emb()
    if x_cond is not None:
        h = h + x_cond
    for block in list(ar.transformer._attn_mods)[:layer]:
        h = block(h, encoder_kv if block.attn_func == AttentionPattern.ENCODER_DECODER else None)
    if x_cond is not None and ar.add_cond_after_transformer:
        h = h + x_cond
    return h[:, skip:]


@pytest.mark.parametrize("merged_decoder", [True, False, None], ids=["merged", "tied", "lyrics_encoder"])
def test_features_equal_the_plain_path_of_the_full_prior(merged_decoder):
    model = _labelled_model(merged_decoder)
    layers = [2, 4, model.depth]
    framewise = Embedder(model, layers, pool="none", recipe=RECIPE, batch_size=2)
    pooled = Embedder(model, layers, pool="mean", recipe=RECIPE)
    maxed = Embedder(model, layers, pool="max", recipe=RECIPE)
    y = framewise.y
    hop = model.prior.raw_to_tokens
    assert y[0, :3].tolist() == [int(5.0 * SR // hop) * hop, 0, 16 * hop]  # total_length, offset, window
    assert y[0, 3].item() == model.prior.labeller.ag_processor.get_artist_id("unknown")

    for seconds in (0.05, 0.4):  # shorter than one window (padded), and longer (its first window)
        audio = _audio(seconds)
        window = framewise.split(audio / np.abs(audio).max())[0]
        valid = window.valid_frames
        assert valid == min(16, math.ceil(len(audio) / hop))
        z = framewise.codes(torch.from_numpy(window.audio)[None])
        assert z.shape == (1, 16)
        with torch.no_grad():
            want = torch.stack([_plain_frames(model.prior, z, y, layer)[0] for layer in layers])
        got = framewise(audio)
        assert got.shape == (3, valid, 16)
        if merged_decoder is None:  # the last layer attends to the (empty) lyrics' encoding
            assert model.prior.prior.transformer._attn_mods[9].attn_func == AttentionPattern.ENCODER_DECODER
        torch.testing.assert_close(torch.from_numpy(got), want[:, :valid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(pooled(audio)), want[:, :valid].mean(dim=1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(maxed(audio)), want[:, :valid].amax(dim=1), atol=1e-5, rtol=1e-5)


def test_x_cond_timing_reaches_the_features():
    model = _labelled_model(merged_decoder=False)
    audio = _audio(0.4)
    a = Embedder(model, 3, recipe=RECIPE)(audio)
    b = Embedder(model, 3, recipe=Recipe(total_seconds=9.0))(audio)
    assert not np.allclose(a, b, atol=1e-3)


def test_truncated_prior_loads_the_first_blocks_of_a_full_checkpoint(tmp_path):
    with tiny_model.tiny_model(tmp_path):
        full = load_embedding_model("tiny_test", 16, "cpu", ids_dir=str(IDS_DIR))
        part = load_embedding_model("tiny_test", 8, "cpu", ids_dir=str(IDS_DIR))
        saved = torch.load(tmp_path / "tiny_lyrics_prior.pth.tar", weights_only=False)["model"]
    assert full.depth == 16 and part.depth == 8
    part_state = part.prior.state_dict()
    assert "prior.x_out.weight" in saved and "prior.transformer._attn_mods.15.mlp.c_fc.w" in saved
    assert set(part_state) < set(saved) and "prior.x_out.weight" not in part_state
    assert all(torch.equal(part_state[k], saved[k]) for k in part_state)
    assert not any(k.startswith("prior.transformer._attn_mods.8.") for k in part_state)

    audio = _audio(0.3, seed=3)
    layers = [3, 8]
    from_part = Embedder(part, layers, pool="none", recipe=RECIPE)
    from_full = Embedder(full, layers, pool="none", recipe=RECIPE)
    np.testing.assert_allclose(from_part(audio), from_full(audio), atol=1e-5, rtol=1e-5)
    # Lyric model: empty lyrics in front of the music tokens, and the plain path agrees on the music positions.
    window = from_full.split(audio / np.abs(audio).max())[0]
    z = from_full.codes(torch.from_numpy(window.audio)[None])
    with torch.no_grad():
        want = torch.stack([_plain_frames(full.prior, z, from_full.y, layer)[0] for layer in layers])
    torch.testing.assert_close(torch.from_numpy(from_part(audio)), want[:, :window.valid_frames], atol=1e-5, rtol=1e-5)


def test_truncated_prior_still_refuses_a_checkpoint_that_lacks_its_tensors(tmp_path):
    vqvae = _vqvae()
    hps = setup_hparams("", dict(LABELLED, merged_decoder=True))
    full = make_prior(hps, vqvae)
    state = full.state_dict()
    del state["prior.transformer._attn_mods.1.ln_0.weight"]
    path = tmp_path / "prior.pth.tar"
    save_checkpoint(path, dict(model=state, step=0))
    with pytest.raises(CheckpointError, match="_attn_mods.1.ln_0.weight"):
        make_prior(setup_hparams("", dict(hps, prior_depth=3, restore_prior=str(path))), vqvae, encode_only=True)
    # With every block it needs, the deeper blocks and x_out of the checkpoint are left out.
    save_checkpoint(path, dict(model=full.state_dict(), step=0))
    part = make_prior(setup_hparams("", dict(hps, prior_depth=3, restore_prior=str(path))), vqvae, encode_only=True)
    assert len(part.prior.transformer._attn_mods) == 3


def test_truncated_prior_keeps_the_residual_scale_of_its_full_depth(tmp_path):
    vqvae = _vqvae()
    hps = setup_hparams("", dict(LABELLED, res_scale=True))
    full = make_prior(hps, vqvae)
    randomize_weights(full, seed=1)
    path = tmp_path / "prior.pth.tar"
    save_checkpoint(path, dict(model=full.state_dict(), step=0))
    part = make_prior(setup_hparams("", dict(hps, prior_depth=3, restore_prior=str(path))), vqvae, encode_only=True,
                      full_depth=6)
    assert [block.res_scale for block in part.prior.transformer._attn_mods] == [1 / 6] * 3
    models = [EmbeddingModel("labelled", vqvae, prior, SR) for prior in (part, full)]
    for model in models:
        model.prior.labeller = _labeller(model.prior)
    audio = _audio(0.3)
    got, want = (Embedder(model, 3, pool="none", recipe=RECIPE)(audio) for model in models)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # make_model builds an encode-only prior of fewer blocks with its model's full depth (16 blocks).
    with tiny_model.tiny_model(tmp_path):
        _, (lazy,) = make_model("tiny_test", "cpu", setup_hparams("", dict(sample_length=512)), levels=[-1],
                                prior_overrides={"prior_depth": 4, "res_scale": True}, encode_only=True)
    assert [block.res_scale for block in lazy.module.prior.transformer._attn_mods] == [1 / 16] * 4


def test_all_windows_average_their_pooled_vectors_by_valid_frames():
    model = _labelled_model(merged_decoder=True)
    audio = _audio(0.3)  # 0.3 s = 614 samples: windows of 256 samples -> 2 full and one of 7 frames
    hop = model.prior.raw_to_tokens
    windows = split_windows(audio, 16, hop, 300, "all")
    assert [w.valid_frames for w in windows] == [16, 16, math.ceil((614 - 512) / hop)]
    framewise = Embedder(model, [2, 6], pool="none", windows="all", recipe=RECIPE, batch_size=2)
    embedding = framewise.embed(audio)
    assert embedding.valid_frames == [16, 16, 7] and embedding.features.shape == (2, 39, 16)
    pooled = Embedder(model, [2, 6], pool="mean", windows="all", recipe=RECIPE)(audio)
    np.testing.assert_allclose(pooled, embedding.features.mean(axis=1), atol=1e-5, rtol=1e-5)
    # The first window alone is the JukeMIR recipe's.
    first = Embedder(model, [2, 6], pool="none", recipe=RECIPE)(audio)
    np.testing.assert_allclose(first, embedding.features[:, :16], atol=1e-5, rtol=1e-5)
    # Frame-wise at another rate: spans averaged.
    rate = SR / hop
    slow = Embedder(model, [2, 6], pool="none", windows="all", frame_rate=rate / 3, recipe=RECIPE)(audio)
    assert slow.shape == (2, 13, 16)
    np.testing.assert_allclose(slow[:, 0], embedding.features[:, :3].mean(axis=1), atol=1e-5, rtol=1e-5)


def test_resample_frames_lengths_and_averages():
    frames = torch.arange(12, dtype=torch.float32).view(6, 2)
    assert resample_frames(frames, 6.0, 2.0).tolist() == [[2.0, 3.0], [8.0, 9.0]]
    assert resample_frames(frames, 6.0, 12.0).shape == (12, 2)
    assert resample_frames(frames[:1], 6.0, 1.0).shape == (1, 2)


@pytest.mark.parametrize("options, words", [
    (dict(pool="median"), "--pool must be one of"),
    (dict(windows="some"), "--windows must be one of"),
    (dict(pool="mean", frame_rate=10), "--frame_rate"),
    (dict(batch_size=0), "--batch_size"),
])
def test_bad_options_are_refused(options, words):
    with pytest.raises(ValueError, match=words):
        Embedder(_labelled_model(True), 2, recipe=RECIPE, **options)


def test_layers_deeper_than_the_prior_are_refused():
    with pytest.raises(ValueError, match="layers must lie in 1..6"):
        Embedder(_labelled_model(True), "2,7", recipe=RECIPE)


# ------------------------------------------------------------------------------------------------- command line
def _env(**extra: str) -> dict[str, str]:
    """This checkout's package first, one thread, no debug tracebacks."""
    env = env_importing(REPO, OMP_NUM_THREADS="1", **extra)
    env.pop("JUKEBOX_DEBUG", None)
    return env


def _embed(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jukebox.embed", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _clips(folder, seconds: dict[str, float]) -> None:
    x, sr = sf.read(DATA / "music" / "nebula.flac", dtype="float32")
    for name, length in seconds.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, x[:int(length * sr)], sr)


@pytest.mark.slow
def test_cli_on_the_demo_model_reports_a_corrupt_file_and_reruns_skip_the_rest(tmp_path):
    music = tmp_path / "music"
    _clips(music, {"short.wav": 1.5})
    (music / "album").mkdir()
    (music / "album" / "long.flac").write_bytes((DATA / "music" / "a_new_journey.flac").read_bytes())  # 8 s
    (music / "broken.mp3").write_bytes(b"ID3\x03\x00" + os.urandom(300))
    args = ["--model=demo", "--layers=2,6", f"--audio={music}", "--out=feats", "--windows=all", "--workers=1",
            "--batch_size=2"]
    proc = _embed(args, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "broken.mp3" in proc.stdout and "embedded 2 files" in proc.stdout, proc.stdout
    out = tmp_path / "feats"
    report = json.loads((out / "report.json").read_text())
    assert [f["file"] for f in report["failed"]] == ["broken.mp3"] and report["embedded"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["model"] == "demo" and manifest["settings"]["layers"] == [2, 6]
    assert manifest["settings"]["recipe"]["artist"] == "unknown" and "torch" in manifest["versions"]
    files = manifest["files"]
    assert sorted(files) == ["album/long.flac", "short.wav"]
    assert files["album/long.flac"]["windows"] == 3  # 8 s in windows of 2.97 s
    assert files["short.wav"]["valid_frames"] == [math.ceil(1.5 * 22050 / 128)]
    long_feats = np.load(out / "album" / "long.flac.npy")
    assert long_feats.shape == (2, 256) and np.isfinite(long_feats).all()

    # The Python API gives the same arrays (on the CLI's device and precision: float16 where CUDA is).
    embedder = Embedder("demo", [2, 6], windows="all", batch_size=2)
    np.testing.assert_allclose(embedder(music / "album" / "long.flac"), long_feats, atol=1e-5, rtol=1e-5)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    again = _embed(args, tmp_path)
    assert again.returncode == 1 and "embedded 0 files" in again.stdout and "2 already done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == stamps
    # Other settings into the same folder are refused, in one line.
    other = _embed([*args[:-3], "--pool=max"], tmp_path)
    assert other.returncode == 2 and other.stderr.strip().startswith("error: ") and "pool" in other.stderr


@pytest.mark.slow
def test_two_ranks_split_the_files_and_do_none_twice(tmp_path):
    music = tmp_path / "music"
    names = [f"clip_{i}.wav" for i in range(5)]
    _clips(music, {name: 0.5 + 0.2 * i for i, name in enumerate(names)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
        procs.append(subprocess.Popen([sys.executable, "-m", "jukebox.embed", "--model=demo", "--layers=3",
                                       f"--audio={music}", "--out=feats", "--workers=0"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    out = tmp_path / "feats"
    done = [[json.loads(line)["file"] for line in (out / ".records" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in range(2)]
    assert sorted(done[0] + done[1]) == names and not set(done[0]) & set(done[1]) and all(done)
    assert sorted(json.loads((out / "manifest.json").read_text())["files"]) == names
    assert "embedded 5 files" in outs[0][0]


def test_clips_are_read_whole_mono_and_peak_normalised():
    path = DATA / "formats" / "through_space_stereo_44100.flac"
    clip = read_clip(path, 22050)
    whole = load_audio(path, 22050, 0, 8 * 22050, channels=1)[0]
    assert clip.shape == (8 * 22050,) and np.abs(clip).max() == pytest.approx(1.0)
    np.testing.assert_allclose(clip, whole / np.abs(whole).max(), atol=1e-6)
    assert np.array_equal(prepare_audio(np.zeros((2, 5))), np.zeros(5))  # silence stays silence
    with pytest.raises(ValueError, match="no audio samples"):
        prepare_audio(np.zeros((1, 0)))
