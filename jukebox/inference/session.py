"""One resumable sampling run: from its options and a built model to the codes and outputs of every level.

A ``SamplingSession`` samples the levels of a model from the top down, window by window
(``jukebox.inference.schedule``), into its folder ``logdir``:

- after every window the codes so far, the position and the random state go to ``{logdir}/progress.pth.tar``
  (``ProgressFile``). Running a session with the same options in the same folder again continues from the last
  finished window and gives the same codes as an uninterrupted run. The file is removed when sampling completes.
- after every level, ``{logdir}/level_{k}/`` gets ``item_{i}.wav``, ``data.pth.tar`` (zs, labels,
  sampling_kwargs, x; tensors and plain types only) and ``index.html`` with one page per item (and the lyric
  alignment, for models with lyrics).

The mode sets the codes sampling starts from: ``ancestral`` none; ``continue`` and ``upsample`` those of an
earlier run's ``data.pth.tar`` (upsample keeps the top level and samples the levels below it); ``primed`` the
VQ-VAE's codes of audio files. Sampling the top level now and the rest later, say::

    options = SamplingOptions(model="5b_lyrics", n_samples=2, sample_length=sample_length, sr=44100,
                              hop_fraction=[0.5, 0.5, 0.125], metas=make_metas(2, total_length))
    SamplingSession(vqvae, priors, options, "song", device).run(seed=1, levels=[2])
    upsample = dataclasses.replace(options, mode="upsample", codes_file="song/level_2/data.pth.tar")
    SamplingSession(vqvae, priors, upsample, "song", device).run(seed=2)
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from jukebox.align import can_align, get_alignment
from jukebox.hparams import Hyperparams
from jukebox.inference import schedule
from jukebox.inference.cpu_backends import check_backend_name
from jukebox.inference.inputs import default_sampling_kwargs, load_codes, load_prompts
from jukebox.save_html import save_html
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint
from jukebox.utils.dist_utils import print_once
from jukebox.utils.io import save_wav

__all__ = ["MODES", "SamplingOptions", "SamplingSession", "ProgressFile", "check_mode", "check_hop_fraction"]

MODES = ("ancestral", "continue", "upsample", "primed")
# The sampling settings that change the codes; a run resumes only if they are unchanged.
_RESULT_KWARGS = ("temp", "fp16", "top_k", "top_p")


def check_mode(mode: str, codes_file: Any, audio_files: Any, prompt_length: Any) -> None:
    """Refuse an unknown mode, or one without the inputs it starts from."""
    if mode not in MODES:
        raise ValueError(f"unknown --mode={mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("continue", "upsample") and not codes_file:
        raise ValueError(f"--mode={mode} needs --codes_file=path/to/level_k/data.pth.tar from an earlier run")
    if mode == "primed" and (not audio_files or prompt_length is None):
        raise ValueError("--mode=primed needs --audio_file=a.wav,b.wav and --prompt_length_in_seconds")


def check_hop_fraction(hop_fraction: Sequence[float]) -> None:
    """Refuse window hops outside (0, 1] of a context (0 never moves on; above 1 leaves gaps)."""
    if not all(0.0 < h <= 1.0 for h in hop_fraction):
        raise ValueError(f"--hop_fraction must be in (0, 1] on every level (windows overlap by 1 - hop_fraction), "
                         f"got {list(hop_fraction)}")


@dataclass
class SamplingOptions:
    """What a sampling run makes. A run resumes only with equal options (``settings`` is saved with it).

    model: the model's name, recorded so that a resume with another model is refused.
    n_samples: songs sampled together. sample_length: audio samples per song, a multiple of the top level's hop.
    sr: the model's sample rate. hop_fraction: per level (bottom first), windows start every
    ``hop_fraction * n_ctx`` tokens, in (0, 1].
    metas: n_samples label dicts ``{artist, genre, lyrics, total_length, offset}`` (``inputs.make_metas``).
    sampling_kwargs: per level (bottom first), ``max_batch_size`` and the keyword arguments of ``prior.sample``
    (temp, fp16, chunk_size, top_k, top_p); None: ``default_sampling_kwargs(model, levels)``.
    mode: one of ``MODES``. codes_file: the data.pth.tar of an earlier run (continue, upsample).
    audio_files: the prompts (primed), tiled over the samples. prompt_length: audio samples of the prompt
    (primed), or where the codes are cut (continue, upsample; None keeps them all).
    cpu_backend: the backend of CPU sampling steps and priming (``jukebox.inference.cpu_backends``; None:
    calibrated per machine). An exact one does not change the codes beyond float rounding, so a run may
    resume with another.
    """

    model: str
    n_samples: int
    sample_length: int
    sr: int
    hop_fraction: Sequence[float]
    metas: Sequence[dict]
    sampling_kwargs: Sequence[dict] | None = None
    mode: str = "ancestral"
    codes_file: str | None = None
    audio_files: Sequence[str] | None = None
    prompt_length: int | None = None
    cpu_backend: str | None = None

    def __post_init__(self) -> None:
        check_mode(self.mode, self.codes_file, self.audio_files, self.prompt_length)
        check_backend_name(self.cpu_backend)
        # lists, as they come back from the progress file's JSON, so that equal options compare equal
        self.hop_fraction = [float(h) for h in self.hop_fraction]
        check_hop_fraction(self.hop_fraction)
        self.metas = list(self.metas)
        if len(self.metas) != self.n_samples:
            raise ValueError(f"{len(self.metas)} metas for n_samples={self.n_samples}; tile them with make_metas")
        if self.sampling_kwargs is None:
            self.sampling_kwargs = default_sampling_kwargs(self.model, self.levels)
        self.sampling_kwargs = [dict(kw) for kw in self.sampling_kwargs]
        if len(self.sampling_kwargs) != self.levels:
            raise ValueError(f"{len(self.sampling_kwargs)} sampling_kwargs for {self.levels} levels; give one dict "
                             "per level, bottom first")
        if self.audio_files is not None:
            self.audio_files = list(self.audio_files)

    @property
    def levels(self) -> int:
        """The model's number of levels (one hop fraction each)."""
        return len(self.hop_fraction)

    def prior_kwargs(self) -> list[dict]:
        """Per level (bottom first), the keyword arguments of ``prior.sample`` (and ``max_batch_size``)."""
        return [dict(kw, cpu_backend=self.cpu_backend) for kw in self.sampling_kwargs]

    def settings(self) -> dict:
        """The options as the progress file records them (its ``settings``)."""
        return dict(model=self.model, mode=self.mode, levels=self.levels, n_samples=self.n_samples,
                    sample_length=self.sample_length, hop_fraction=self.hop_fraction, codes_file=self.codes_file,
                    audio_file=self.audio_files, prompt_length=self.prompt_length, metas=self.metas,
                    sampling={k: [kw.get(k) for kw in self.sampling_kwargs] for k in _RESULT_KWARGS})


class ProgressFile:
    """The resume file ``{logdir}/progress.pth.tar``: codes, position and random state after each window.

    Its keys: ``settings`` (JSON of ``SamplingOptions.settings``), ``seed``, ``zs`` (per level (N, T_l)),
    ``level`` and ``windows_done`` (the position), ``rng`` and ``cuda_rng`` (the random state), ``alignments``
    (the lyric alignment of every item, once computed, else None).
    """

    def __init__(self, logdir: str, settings: dict) -> None:
        self.path = os.path.join(logdir, "progress.pth.tar")
        self.settings = settings

    def read(self) -> dict | None:
        """The saved state, or None without an unfinished run; an unfinished run with other settings is refused."""
        if not os.path.exists(self.path):
            return None
        state = load_checkpoint(self.path)
        saved = json.loads(state["settings"])
        changed = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
        if changed:
            diff = "; ".join(f"{k}: {saved.get(k)!r} then, {self.settings.get(k)!r} now" for k in changed)
            raise RuntimeError(f"{self.path} is an unfinished run with other settings ({diff}). Rerun it with the "
                               "same settings to finish it, or delete the file (or use another --name) to start over.")
        return state

    def write(self, zs: Sequence[torch.Tensor], level: int, windows_done: int, seed: int,
              alignments: Sequence[torch.Tensor] | None) -> None:
        """Save the codes after ``windows_done`` windows of ``level``, with the random state of this moment."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        save_checkpoint(self.path, dict(settings=json.dumps(self.settings, sort_keys=True), seed=seed,
                                        zs=[z.cpu() for z in zs], level=level, windows_done=windows_done,
                                        rng=torch.get_rng_state(), cuda_rng=cuda,
                                        alignments=None if alignments is None else list(alignments)))

    @staticmethod
    def restore_random_state(state: dict) -> None:
        """Set the random state saved in ``state``, so that sampling continues as it would have."""
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def remove(self) -> None:
        """Delete the file: the run is finished."""
        if os.path.exists(self.path):
            os.remove(self.path)


class SamplingSession:
    """One resumable sampling run of ``vqvae`` and ``priors`` with ``options`` into ``logdir`` (see the module).

    priors: one per level, bottom first; lazily loaded priors are loaded for their level only
    (``schedule.on_device``). rank: under MPI every rank runs its own session, in its own folder, and samples
    with ``seed + rank`` so that the ranks make different songs.
    """

    def __init__(self, vqvae: Any, priors: Sequence[Any], options: SamplingOptions, logdir: str,
                 device: torch.device | str = "cpu", rank: int = 0) -> None:
        if len(priors) != options.levels:
            raise ValueError(f"model {options.model!r} has {len(priors)} levels but --levels={options.levels}")
        self.vqvae, self.priors, self.options = vqvae, list(priors), options
        self.logdir, self.device, self.rank = str(logdir), device, rank
        self.progress = ProgressFile(self.logdir, options.settings())
        # get_alignment and save_html keep the original's signatures, which read hop_fraction and sr from hps
        self._hps = Hyperparams(sr=options.sr, hop_fraction=options.hop_fraction)

    @property
    def top(self) -> int:
        """The index of the top level."""
        return len(self.priors) - 1

    @property
    def levels_to_sample(self) -> list[int]:
        """The levels ``run`` samples by default: all of them, or those below the top when upsampling."""
        return list(range(self.top)) if self.options.mode == "upsample" else list(range(self.top + 1))

    @cached_property
    def labels(self) -> list[dict | None]:
        """Per level, the labels of ``options.metas`` from that prior's labeller: {'y': (N, L), 'info': [...]}."""
        return [prior.labeller.get_batch_labels(self.options.metas, self.device) for prior in self.priors]

    @torch.no_grad()
    def run(self, seed: int | None = None, levels: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Sample ``levels`` (default ``levels_to_sample``) from the top down, writing each level's outputs; an
        unfinished run in ``logdir`` is finished instead (with its own seed).

        seed: None picks a random one (printed, to reproduce the run). Returns the codes of every level,
        (n_samples, T_l), bottom first. Raises RuntimeError if ``logdir`` holds an unfinished run with other
        options or another seed.
        """
        levels = self.levels_to_sample if levels is None else self._check_levels(levels)
        if any(level < self.top for level in levels):
            self._check_upsampler_windows()
        labels = self.labels
        state = self.progress.read()
        if state is not None:
            seed, zs, resume, alignments = self._resume(state, seed)
        else:
            seed = (secrets.randbits(31) if seed is None else int(seed)) + self.rank
            zs, resume, alignments = self._initial_codes(), None, None
            torch.manual_seed(seed)
        print_once(f"Sampling {self.options.n_samples} samples of {self.options.sample_length / self.options.sr:.2f} "
                   f"s with seed {seed - self.rank} (--seed={seed - self.rank} reproduces them)")
        if self.top not in levels and alignments is None and can_align(self.priors[self.top]):
            # the top level is not sampled here: load its prior once, before any upsampler, to align the lyrics
            with schedule.on_device(self.priors[self.top], self.device) as prior:
                alignments = self.align(zs, prior)

        def after_window(level: int, windows_done: int, zs: list[torch.Tensor]) -> None:
            self.progress.write(zs, level, windows_done, seed, alignments)

        def after_level(level: int, zs: list[torch.Tensor], prior: Any) -> None:
            nonlocal alignments
            if alignments is None and level == self.top and can_align(prior):
                alignments = self.align(zs, prior)
            self.write_level(level, zs, alignments)
            self.progress.write(zs, level - 1, 0, seed, alignments)

        zs = schedule.sample_levels(zs, labels, self.options.prior_kwargs(), self.priors, levels,
                                    self.options.sample_length, self.options.hop_fraction, self.device,
                                    resume=resume, after_window=after_window, after_level=after_level)
        self.progress.remove()
        return zs

    def align(self, zs: Sequence[torch.Tensor], top_prior: Any) -> list[torch.Tensor]:
        """The lyric alignment (T_top, lyric characters) of every item, from ``top_prior``'s attention."""
        fp16 = self.options.sampling_kwargs[self.top]["fp16"]
        alignments = get_alignment(None, zs, self.labels[self.top], top_prior, self.top, fp16, self._hps)
        return [torch.from_numpy(a).float() for a in alignments]

    @torch.no_grad()
    def write_level(self, level: int, zs: Sequence[torch.Tensor],
                    alignments: Sequence[torch.Tensor] | None = None) -> None:
        """Decode ``zs[level:]`` and write ``{logdir}/level_{level}``: the wavs, data.pth.tar and html."""
        x = self.vqvae.decode(zs[level:], start_level=level, bs_chunks=zs[level].shape[0]).float().cpu()
        level_dir = os.path.join(self.logdir, f"level_{level}")
        os.makedirs(level_dir, exist_ok=True)
        plain_labels = [None if l is None else dict(y=l["y"].cpu(), info=l["info"]) for l in self.labels]
        save_checkpoint(os.path.join(level_dir, "data.pth.tar"),
                        dict(zs=[z.cpu() for z in zs], labels=plain_labels,
                             sampling_kwargs=self.options.sampling_kwargs, x=x))
        save_wav(level_dir, x, self.options.sr)
        save_html(level_dir, x, zs, self.labels[-1], alignments, self._hps)
        print_once(f"Saved level {level} to {level_dir}")

    def _check_levels(self, levels: Sequence[int]) -> list[int]:
        if not levels or any(not 0 <= level <= self.top for level in levels):
            raise ValueError(f"levels {list(levels)} must be among the model's levels 0..{self.top}")
        return sorted(set(levels))

    def _check_upsampler_windows(self) -> None:
        window = max((p.n_ctx * p.raw_to_tokens for p in self.priors[:-1]), default=0)  # the upsamplers' longest
        if self.options.sample_length < window:
            raise ValueError(f"--sample_length_in_seconds gives {self.options.sample_length} samples, but upsampling "
                             "needs at least one context of every level below the top: use at least "
                             f"{window / self.options.sr:.2f} s")

    def _resume(self, state: dict, seed: int | None
                ) -> tuple[int, list[torch.Tensor], tuple[int, int], list[torch.Tensor] | None]:
        if seed is not None and int(seed) + self.rank != state["seed"]:
            raise RuntimeError(f"{self.progress.path} was sampled with --seed={state['seed'] - self.rank}; pass that "
                               "seed (or none) to resume it")
        resume = (state["level"], state["windows_done"])
        print_once(f"Resuming {self.progress.path}: level {resume[0]}, after {resume[1]} windows")
        ProgressFile.restore_random_state(state)
        alignments = None if state.get("alignments") is None else list(state["alignments"])
        return state["seed"], [z.to(self.device) for z in state["zs"]], resume, alignments

    def _initial_codes(self) -> list[torch.Tensor]:
        """The codes sampling starts from in ``options.mode``, per level (N, T_l)."""
        o, n, top_hop = self.options, self.options.n_samples, self.priors[-1].raw_to_tokens
        if o.mode == "ancestral":
            return [torch.zeros(n, 0, dtype=torch.long, device=self.device) for _ in self.priors]
        if o.mode in ("continue", "upsample"):
            zs = load_codes(o.codes_file, n, o.levels, o.prompt_length, self.priors, self.device)
            needed = o.sample_length // top_hop
            if o.mode == "upsample" and zs[-1].shape[1] < needed:
                raise ValueError(f"--mode=upsample needs {needed} top-level tokens for --sample_length_in_seconds but "
                                 f"{o.codes_file} has {zs[-1].shape[1]}; sample them first (--mode=continue)")
            return zs
        if o.prompt_length <= 0:
            raise ValueError(f"--prompt_length_in_seconds must cover at least one top-level token ({top_hop} samples)")
        x = load_prompts(o.audio_files, o.prompt_length, n, o.sr, top_hop).to(self.device)
        return self.vqvae.encode(x, start_level=0, end_level=o.levels, bs_chunks=n)
