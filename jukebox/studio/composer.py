"""The studio's model and its sampling runs: continuations at the top level, previews, prompts, upsampling.

One model is in memory at a time (``Composer.use``): its VQ-VAE, and at most one prior with weights. The top-level
prior stays loaded between continuations, so consecutive requests do not reload it; upsampling drops it and lets
the sampling session swap the upsamplers in one at a time. Every run is a ``SamplingSession`` in the job's folder,
so it saves after every window and resumes after a crash with the codes an uninterrupted run gives:

- K continuations of a node are one batched top-level run in ``continue`` mode from the node's codes tiled K times;
  the session's own outputs of that level (the decoded wavs, the lyric alignment) are the nodes' previews;
- upsampling is the session's ``upsample`` mode from the node's codes, writing sample.py's outputs of every level.

The codes files these runs start from have the format of sample.py's ``data.pth.tar`` (``export_codes``), which
``sample.py --mode=upsample --codes_file=`` reads as well.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jukebox.hparams import Hyperparams, setup_hparams
from jukebox.inference.inputs import default_sampling_kwargs, make_metas
from jukebox.inference.session import ProgressFile, SamplingOptions, SamplingSession
from jukebox.make_models import LazyPrior, calculate_hop_lengths, make_model, model_sets
from jukebox.utils.checkpoint import save_checkpoint

__all__ = ["ModelFacts", "model_facts", "Composer", "export_codes", "WindowReport"]

# Called after every saved window with (level, zs); it may raise to stop the run (it resumes from that window).
WindowReport = Callable[[int, list], None]


@dataclass(frozen=True)
class ModelFacts:
    """What the studio needs to know of a model before loading it, from its hparams sets alone.

    hops: audio samples per token of every level, bottom first; n_ctx: every prior's context in tokens;
    labels: the top prior takes artist and genre; lyrics: it takes lyrics; bins: the codebook size.
    """

    name: str
    sr: int
    hops: tuple[int, ...]
    n_ctx: tuple[int, ...]
    labels: bool
    lyrics: bool
    bins: int

    @property
    def levels(self) -> int:
        return len(self.hops)

    @property
    def top_hop(self) -> int:
        return self.hops[-1]

    def tokens(self, seconds: float) -> int:
        """Top-level tokens in ``seconds`` of audio (rounded down)."""
        return int(seconds * self.sr) // self.top_hop

    def seconds(self, tokens: int) -> float:
        return tokens * self.top_hop / self.sr

    @property
    def min_upsample_tokens(self) -> int:
        """Upsampling needs one full context of every level below the top (``SamplingSession``'s check)."""
        window = max(n * hop for n, hop in zip(self.n_ctx[:-1], self.hops[:-1]))
        return -(-window // self.top_hop)


def model_facts(name: str) -> ModelFacts:
    """The ``ModelFacts`` of ``MODELS[name]``; an unknown name is a ValueError listing the known ones."""
    vqvae_set, *prior_sets = model_sets(name)
    vqvae = setup_hparams(vqvae_set, {})
    priors = [setup_hparams(p, {}) for p in prior_sets]
    hops = calculate_hop_lengths(vqvae.strides_t, vqvae.downs_t)
    return ModelFacts(name=name, sr=int(vqvae.sr), hops=tuple(hops), n_ctx=tuple(int(p.n_ctx) for p in priors),
                      labels=bool(priors[-1].labels), lyrics=bool(priors[-1].labels and priors[-1].n_tokens > 0),
                      bins=int(vqvae.l_bins))


def export_codes(path: str | os.PathLike, top_codes: torch.Tensor, levels: int, metas: Sequence[dict] | None = None,
                 sampling_kwargs: Sequence[dict] | None = None) -> None:
    """Write top-level codes ``(N, T)`` as sample.py's ``data.pth.tar``: ``zs`` of every level (those below the
    top empty, ``(N, 0)``), ``labels`` (None: made from the metas when sampling) and the run's settings."""
    n = top_codes.shape[0]
    zs = [torch.zeros(n, 0, dtype=torch.long) for _ in range(levels - 1)] + [top_codes.detach().long().cpu()]
    save_checkpoint(path, dict(zs=zs, labels=None, metas=list(metas or []),
                               sampling_kwargs=None if sampling_kwargs is None else list(sampling_kwargs)))


class _ReportingProgress(ProgressFile):
    """The session's progress file that also reports every saved window (for progress, ETA and pre-emption)."""

    def __init__(self, progress: ProgressFile, report: WindowReport) -> None:
        super().__init__(os.path.dirname(progress.path), progress.settings)
        self.report = report

    def write(self, zs: Sequence[torch.Tensor], level: int, windows_done: int, seed: int,
              alignments: Sequence[torch.Tensor] | None) -> None:
        super().write(zs, level, windows_done, seed, alignments)
        self.report(level, list(zs))


class Composer:
    """The model in memory (one at a time) and the sampling runs of the studio's jobs on ``device``.

    Not thread-safe: the studio's worker thread is its only user.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.name: str | None = None
        self.vqvae: Any = None
        self.priors: list[LazyPrior] = []

    def use(self, name: str) -> ModelFacts:
        """Make ``name`` the model in memory (dropping another one first)."""
        facts = model_facts(name)
        if name != self.name:
            self.hold(None)
            self.name, self.vqvae, self.priors = None, None, []
            hps = Hyperparams(sample_length=facts.n_ctx[-1] * facts.top_hop)
            with torch.no_grad():
                self.vqvae, self.priors = make_model(name, self.device, hps)
            self.name = name
        return facts

    def hold(self, level: int | None) -> None:
        """Keep the weights of ``level``'s prior only (None: of no prior)."""
        for i, prior in enumerate(self.priors):
            if i != level and prior.loaded:
                prior.unload()
        if level is not None and not self.priors[level].loaded:
            self.priors[level].load(self.device)

    def sampling_kwargs(self, facts: ModelFacts, top_temperature: float | None = None,
                        top_batch: int | None = None) -> list[dict]:
        """sample.py's per-level settings; float16 only on CUDA; the top level's temperature and batch as given."""
        kwargs = default_sampling_kwargs(facts.name, facts.levels)
        for kw in kwargs:
            kw["fp16"] = self.device.type == "cuda"
        if top_temperature is not None:
            kwargs[-1]["temp"] = float(top_temperature)
        if top_batch is not None:
            kwargs[-1]["max_batch_size"] = int(top_batch)
        return kwargs

    @staticmethod
    def metas(project: dict, n: int) -> list[dict]:
        return make_metas(n, int(project["total_seconds"] * project["sr"]), project.get("artist") or None,
                          project.get("genre") or None, project.get("lyrics") or None)

    def _session(self, options: SamplingOptions, folder: Path, report: WindowReport
                 ) -> SamplingSession:
        session = SamplingSession(self.vqvae, self.priors, options, str(folder), self.device)
        session.progress = _ReportingProgress(session.progress, report)
        return session

    @torch.no_grad()
    def continuations(self, project: dict, start: torch.Tensor, count: int, tokens: int, temperature: float,
                      seed: int, folder: Path, report: WindowReport) -> tuple[torch.Tensor, list[Path], list[Path]]:
        """``count`` continuations of the codes ``start`` (1, T) to ``tokens`` top-level tokens, sampled as one
        batch in ``folder``. Returns their codes (count, tokens), their preview wavs and their alignment files
        (lyric models; else an empty list)."""
        facts = self.use(project["model"])
        top = facts.levels - 1
        self.hold(top)
        codes_file = folder / "start.pth.tar"
        if not codes_file.exists():
            export_codes(codes_file, start.expand(count, -1), facts.levels)
        options = SamplingOptions(
            model=facts.name, n_samples=count, sample_length=tokens * facts.top_hop, sr=facts.sr,
            hop_fraction=project["hop_fraction"], metas=self.metas(project, count),
            sampling_kwargs=self.sampling_kwargs(facts, temperature, count), mode="continue",
            codes_file=str(codes_file))
        zs = self._session(options, folder, report).run(seed=seed, levels=[top])
        level_dir = folder / f"level_{top}"
        wavs = [level_dir / f"item_{i}.wav" for i in range(count)]
        aligns = [level_dir / f"item_{i}" / "align.json" for i in range(count)]
        return zs[top].cpu(), wavs, aligns if all(a.is_file() for a in aligns) else []

    @torch.no_grad()
    def upsample(self, project: dict, codes_file: Path, tokens: int, seed: int, folder: Path,
                 report: WindowReport) -> Path:
        """Upsample the top-level codes of ``codes_file`` (sample.py's format, one item, ``tokens`` long) in
        ``folder``, one upsampler in memory at a time. Returns the bottom level's folder (wav, data.pth.tar,
        index.html)."""
        facts = self.use(project["model"])
        self.hold(None)
        options = SamplingOptions(
            model=facts.name, n_samples=1, sample_length=tokens * facts.top_hop, sr=facts.sr,
            hop_fraction=project["hop_fraction"], metas=self.metas(project, 1),
            sampling_kwargs=self.sampling_kwargs(facts), mode="upsample", codes_file=str(codes_file))
        self._session(options, folder, report).run(seed=seed)
        return folder / "level_0"

    @torch.no_grad()
    def decode(self, model: str, codes: torch.Tensor) -> torch.Tensor:
        """Top-level codes ``(N, T)`` -> audio ``(N, T * top_hop, 1)`` on the CPU."""
        facts = self.use(model)
        top = facts.levels - 1
        return self.vqvae.decode([codes.to(self.device)], start_level=top, bs_chunks=codes.shape[0]).float().cpu()

    @torch.no_grad()
    def encode(self, model: str, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``(N, T, 1)`` -> its top-level codes ``(N, T // top_hop)`` (primed mode's prompt codes)."""
        facts = self.use(model)
        top = facts.levels - 1
        return self.vqvae.encode(audio.to(self.device), start_level=top, end_level=top + 1,
                                 bs_chunks=audio.shape[0])[0].cpu()
