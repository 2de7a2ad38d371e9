"""Measure the bundled demo model on the held-out tracks; write evaluation.json and the model card's table.

    python scripts/evaluate_demo.py --test_dir=data/demo/test --out=jukebox/models/demo

1. VQ-VAE: spectral convergence and multispectral loss of the reconstruction from each level, next to
   the same numbers for an all-silent output and for the untrained (seed-0 initialised) VQ-VAE.
2. Priors: test bits per token of each level on the codes of the held-out audio (non-overlapping
   windows of n_ctx tokens, the upsamplers given the true codes of the level above), next to the uniform
   log2(l_bins) and the empirical unigram entropy of those same codes.
3. Samples (jukebox/sample.py, fixed seed): RMS and spectral flatness of ancestral samples, of the
   held-out music and of white noise; and the distance of the mean log-mel spectrum of a primed
   continuation (after its held-out prompt) and of an unprimed sample to the prompt's.

Writes ``{out}/evaluation.json`` and replaces the block between the evaluation markers of
``{out}/MODEL_CARD.md`` with the table printed here (so the card never holds hand-typed numbers).
"""
from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import librosa
import numpy as np
import soundfile as sf
import torch

from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.make_models import MODELS, make_model, make_vqvae
from jukebox.utils.atomic import atomic_write
from jukebox.utils.audio_utils import multispectral_loss, spectral_convergence
from jukebox.utils.cli import fire_command
from jukebox.utils.io import load_audio
from jukebox.vqvae.vqvae import calculate_hop_lengths

CARD_START, CARD_END = "<!-- evaluation:start -->", "<!-- evaluation:end -->"
N_MELS = 64


# ---------------------------------------------------------------------------------------------
# Held-out audio
# ---------------------------------------------------------------------------------------------
def load_excerpts(files: Sequence[str], sr: int, offset_sec: float, seconds: float, piece_sec: float,
                  hop: int) -> torch.Tensor:
    """``seconds`` of each file from ``offset_sec``, mono, cut into pieces of ``piece_sec``: ``(N, T, 1)``."""
    piece = int(piece_sec * sr) // hop * hop
    n_pieces = int(seconds * sr) // piece
    if n_pieces < 1:
        raise ValueError(f"--seconds={seconds} is shorter than one piece of {piece_sec} s")
    xs = []
    for f in files:
        x = load_audio(f, sr=sr, offset=int(offset_sec * sr), duration=n_pieces * piece, channels=1)[0]
        xs.append(torch.from_numpy(x).reshape(n_pieces, piece))
    return torch.cat(xs).unsqueeze(-1)


def held_out_audio(test_dir: str, vq_hps: Hyperparams, offset_sec: float, seconds: float,
                   piece_sec: float) -> tuple[list[str], torch.Tensor]:
    """The audio files of ``test_dir`` and their excerpts ``(N, T, 1)``, T a multiple of the top hop."""
    files = sorted(f for f in glob.glob(os.path.join(test_dir, "*.*")) if not f.endswith((".txt", ".json")))
    if not files:
        raise FileNotFoundError(f"no audio files in {test_dir}; run scripts/prepare_demo_data.sh first")
    hop = calculate_hop_lengths(vq_hps.strides_t, vq_hps.downs_t)[-1]
    return files, load_excerpts(files, vq_hps.sr, offset_sec, seconds, piece_sec, hop)


# ---------------------------------------------------------------------------------------------
# 1. VQ-VAE
# ---------------------------------------------------------------------------------------------
def spectral_metrics(x: torch.Tensor, x_out: torch.Tensor, hps: Hyperparams) -> dict[str, float]:
    """Mean over items of spectral convergence and multispectral loss of ``x_out`` against ``x``."""
    return dict(spectral_convergence=float(spectral_convergence(x, x_out).mean()),
                multispectral_loss=float(multispectral_loss(x, x_out, hps).mean()))


@torch.no_grad()
def evaluate_vqvae(vqvae: Any, untrained: Any, x: torch.Tensor, hps: Hyperparams) -> dict[str, Any]:
    """Per level: the metrics of trained and untrained reconstructions; plus those of silence."""
    out: dict[str, Any] = {"silence": spectral_metrics(x, torch.zeros_like(x), hps)}
    for name, model in (("trained", vqvae), ("untrained", untrained)):
        zs = model.encode(x, bs_chunks=x.shape[0])
        out[name] = [spectral_metrics(x, model.decode(zs[level:], start_level=level, bs_chunks=x.shape[0]), hps)
                     for level in range(len(zs))]
    return out


# ---------------------------------------------------------------------------------------------
# 2. Priors
# ---------------------------------------------------------------------------------------------
def unigram_entropy(z: torch.Tensor, l_bins: int) -> float:
    """Entropy in bits of the empirical distribution of the codes in ``z``."""
    p = torch.bincount(z.flatten(), minlength=l_bins).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def bits_per_token(prior: Any, zs: list[torch.Tensor], batch: int = 16) -> tuple[float, int]:
    """Mean test bits per token of ``prior`` over the non-overlapping n_ctx windows of ``zs[prior.level]``."""
    z = zs[prior.level]
    n_ctx = prior.n_ctx
    starts = list(range(0, z.shape[1] - n_ctx + 1, n_ctx))
    if not starts:
        raise ValueError(f"the held-out pieces give {z.shape[1]} level-{prior.level} tokens, fewer than n_ctx="
                         f"{n_ctx}; use a longer --piece_sec")
    windows, conds = [], []
    for start in starts:
        windows.append(z[:, start:start + n_ctx])
        z_conds = prior.get_z_conds(zs, start, start + n_ctx)
        conds.append(None if z_conds is None else z_conds[0])
    windows_t = torch.cat(windows)
    conds_t = None if conds[0] is None else torch.cat(conds)
    total, count = 0.0, 0
    for i in range(0, windows_t.shape[0], batch):
        zb = windows_t[i:i + batch]
        z_conds = None if conds_t is None else [conds_t[i:i + batch]]
        _, metrics = prior.z_forward(zb, z_conds=z_conds, y=None)
        total += float(metrics["bpd"]) * zb.shape[0]
        count += zb.shape[0]
    return total / count, count * n_ctx


def evaluate_priors(priors: Sequence[Any], zs: list[torch.Tensor]) -> list[dict[str, Any]]:
    out = []
    for lazy in priors:
        prior = lazy.load("cpu")
        bits, tokens = bits_per_token(prior, zs)
        out.append(dict(level=prior.level, test_bits_per_token=bits, tokens=tokens,
                        uniform_bits=math.log2(prior.l_bins),
                        unigram_entropy_bits=unigram_entropy(zs[prior.level], prior.l_bins)))
        lazy.unload()
    return out


# ---------------------------------------------------------------------------------------------
# 3. Samples
# ---------------------------------------------------------------------------------------------
def audio_stats(x: np.ndarray, sr: int) -> dict[str, float]:
    """RMS and mean spectral flatness (0: pure tones, about 0.5 or more: white noise) of mono ``x``."""
    return dict(rms=float(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
                spectral_flatness=float(np.mean(librosa.feature.spectral_flatness(y=x, n_fft=2048))))


def mean_log_mel(x: np.ndarray, sr: int) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=x, sr=sr, n_mels=N_MELS, n_fft=2048, hop_length=512)
    return 10 * np.log10(mel.mean(axis=1) + 1e-10)


def spectrum_distance(a: np.ndarray, b: np.ndarray, sr: int) -> float:
    """Mean absolute difference in dB of the two clips' mean log-mel spectra."""
    return float(np.mean(np.abs(mean_log_mel(a, sr) - mean_log_mel(b, sr))))


def read_items(folder: str) -> list[np.ndarray]:
    files = sorted(glob.glob(os.path.join(folder, "level_0", "item_*.wav")))
    if not files:
        raise RuntimeError(f"sampling wrote no level_0/item_*.wav under {folder}")
    return [sf.read(f, dtype="float32", always_2d=True)[0].mean(axis=1) for f in files]


def evaluate_samples(model: str, prompt_files: Sequence[str], music: np.ndarray, sr: int, workdir: str,
                     seconds: float, prompt_seconds: float, n_samples: int, seed: int) -> dict[str, Any]:
    """Ancestral samples, and for each held-out file a primed run on its first ``prompt_seconds``."""
    from jukebox.sample import run as sample_run

    common = dict(model=model, levels=3, sample_length_in_seconds=seconds, total_sample_length_in_seconds=seconds,
                  sr=sr, n_samples=n_samples, hop_fraction=(0.5, 0.5, 0.5), seed=seed, fp16=False)
    start = time.time()
    sample_run(name=os.path.join(workdir, "ancestral"), mode="ancestral", **common)
    ancestral_sec = time.time() - start
    ancestral = read_items(os.path.join(workdir, "ancestral"))
    cut = int(prompt_seconds * sr)
    continuation = []
    for i, prompt_file in enumerate(prompt_files):
        name = os.path.join(workdir, f"primed_{i}")
        sample_run(name=name, mode="primed", audio_file=prompt_file, prompt_length_in_seconds=prompt_seconds,
                   **common)
        prompt = load_audio(prompt_file, sr=sr, offset=0, duration=cut, channels=1)[0]
        continuation.append(dict(
            prompt_file=os.path.basename(prompt_file),
            primed_distance_db=[spectrum_distance(p[cut:], prompt, sr) for p in read_items(name)],
            unprimed_distance_db=[spectrum_distance(a[cut:], prompt, sr) for a in ancestral]))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(music)).astype(np.float32) * float(np.sqrt(np.mean(music ** 2)))
    return dict(
        seconds=seconds, n_samples=n_samples, seed=seed, ancestral_wall_sec=ancestral_sec,
        ancestral=[audio_stats(a, sr) for a in ancestral], held_out_music=audio_stats(music, sr),
        white_noise=audio_stats(noise, sr), prompt_seconds=prompt_seconds, continuation=continuation)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    """The markdown tables of ``result`` (the model card quotes this text verbatim)."""
    vq, lines = result["vqvae"], []
    if result.get("training"):
        lines += ["| Stage | steps | batch (ranks x bs) | wall time | weights |", "|---|---|---|---|---|"]
        for name, t in sorted(result["training"].items(), key=lambda kv: kv[0] != "vqvae"):
            lines.append(f"| {name} | {t['step']} | {t['ngpus']} x {t['bs']} of {t['sample_length']} samples | "
                         f"{t['wall_time_min']} min | {t['bytes'] / 2 ** 20:.1f} MiB {t['dtype']} |")
        lines.append("")
    lines += [f"Held-out audio: {result['held_out']}.", "",
              "| VQ-VAE reconstruction | spectral convergence | multispectral loss |", "|---|---|---|"]
    for level, (t, u) in enumerate(zip(vq["trained"], vq["untrained"])):
        lines.append(f"| level {level}, trained | {t['spectral_convergence']:.3f} | {t['multispectral_loss']:.2f} |")
        lines.append(f"| level {level}, untrained | {u['spectral_convergence']:.3f} | {u['multispectral_loss']:.2f} |")
    s = vq["silence"]
    lines += [f"| silence | {s['spectral_convergence']:.3f} | {s['multispectral_loss']:.2f} |", "",
              "| Prior | test bits/token | uniform log2(l_bins) | unigram entropy of the test codes | tokens |",
              "|---|---|---|---|---|"]
    for p in result["priors"]:
        lines.append(f"| level {p['level']} | {p['test_bits_per_token']:.3f} | {p['uniform_bits']:.3f} | "
                     f"{p['unigram_entropy_bits']:.3f} | {p['tokens']} |")
    smp = result.get("samples")
    if smp:
        lines += ["", f"Samples: {smp['n_samples']} ancestral and {smp['n_samples']} primed, {smp['seconds']} s each, "
                      f"seed {smp['seed']} (ancestral run: {smp['ancestral_wall_sec']:.0f} s on this machine).", "",
                  "| Audio | RMS | spectral flatness |", "|---|---|---|"]
        for i, a in enumerate(smp["ancestral"]):
            lines.append(f"| ancestral sample {i} | {a['rms']:.4f} | {a['spectral_flatness']:.4f} |")
        for name in ("held_out_music", "white_noise"):
            a = smp[name]
            lines.append(f"| {name.replace('_', ' ')} | {a['rms']:.4f} | {a['spectral_flatness']:.4f} |")
        lines += ["", f"Distance (mean |dB| of the mean log-mel spectrum) of the audio after the prompt to the "
                      f"{smp['prompt_seconds']} s prompt (the start of each held-out track):", "",
                  "| Prompt | sample | primed continuation | unprimed sample |", "|---|---|---|---|"]
        for c in smp["continuation"]:
            for i, (p, u) in enumerate(zip(c["primed_distance_db"], c["unprimed_distance_db"])):
                lines.append(f"| {c['prompt_file']} | {i} | {p:.2f} dB | {u:.2f} dB |")
        primed = [d for c in smp["continuation"] for d in c["primed_distance_db"]]
        unprimed = [d for c in smp["continuation"] for d in c["unprimed_distance_db"]]
        lines.append(f"| mean | | {np.mean(primed):.2f} dB | {np.mean(unprimed):.2f} dB |")
    return "\n".join(lines)


def update_card(card: str, text: str) -> None:
    """Replace the text between the evaluation markers of ``card``."""
    with open(card, encoding="utf-8") as f:
        content = f.read()
    if CARD_START not in content or CARD_END not in content:
        raise ValueError(f"{card} has no {CARD_START} ... {CARD_END} block to fill")
    head, rest = content.split(CARD_START, 1)
    _, tail = rest.split(CARD_END, 1)
    with atomic_write(card, mode="w", encoding="utf-8") as f:
        f.write(f"{head}{CARD_START}\n{text}\n{CARD_END}{tail}")


def main(model: str = "demo", test_dir: str = "data/demo/test", out: str = "jukebox/models/demo",
         offset_sec: float = 30.0, seconds: float = 60.0, piece_sec: float = 12.0, samples: bool = True,
         sample_seconds: float = 6.0, prompt_seconds: float = 3.0, n_samples: int = 2, seed: int = 0,
         workdir: str = "logs/evaluate_demo") -> None:
    """Evaluate ``model`` on the audio files in ``test_dir``; write ``{out}/evaluation.json`` and the card's table."""
    torch.manual_seed(seed)
    vq_hps = setup_hparams(MODELS[model][0], {})
    files, x = held_out_audio(test_dir, vq_hps, offset_sec, seconds, piece_sec)
    hps = Hyperparams(sample_length=x.shape[1], sr=vq_hps.sr)
    vqvae, priors = make_model(model, "cpu", hps)
    torch.manual_seed(seed)
    untrained = make_vqvae(setup_hparams(MODELS[model][0], dict(restore_vqvae="", sample_length=x.shape[1])), "cpu")
    result: dict[str, Any] = dict(
        model=model, held_out=(f"{len(files)} tracks ({', '.join(os.path.basename(f) for f in files)}), "
                               f"{seconds:g} s of each from {offset_sec:g} s, in {x.shape[0]} pieces of "
                               f"{x.shape[1] / vq_hps.sr:.2f} s"),
        vqvae=evaluate_vqvae(vqvae, untrained, x, vq_hps))
    with torch.no_grad():
        zs = vqvae.encode(x, bs_chunks=x.shape[0])
    result["priors"] = evaluate_priors(priors, zs)
    training = os.path.join(out, "training.json")
    if os.path.exists(training):
        with open(training, encoding="utf-8") as f:
            result["training"] = json.load(f)
    if samples:
        music = x.flatten().numpy()
        result["samples"] = evaluate_samples(model, files, music, vq_hps.sr, workdir, sample_seconds,
                                             prompt_seconds, n_samples, seed)
    text = table(result)
    print(text)
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "evaluation.json"), mode="w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    card = os.path.join(out, "MODEL_CARD.md")
    if os.path.exists(card):
        update_card(card, text)


if __name__ == "__main__":
    fire_command(main, prog="python scripts/evaluate_demo.py")
