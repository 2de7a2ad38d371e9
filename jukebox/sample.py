"""Sample music from a Jukebox model (command line).

    python jukebox/sample.py --model=5b_lyrics --name=sample_5b --levels=3 --sample_length_in_seconds=20 \\
        --total_sample_length_in_seconds=180 --sr=44100 --n_samples=6 --hop_fraction=0.5,0.5,0.125

Modes: ``ancestral`` (default); ``continue`` and ``upsample`` from the ``data.pth.tar`` of an earlier run
(``--codes_file``); ``primed`` from audio files (``--audio_file=a.wav,b.flac --prompt_length_in_seconds=12``).
Conditioning: ``--artist``, ``--genre``, ``--lyrics`` or ``--lyrics_file``, or ``--metas=file.json`` (a list of
``{"artist", "genre", "lyrics"}``), tiled to ``n_samples``; without them a built-in set of examples is used.
``--sr`` defaults to the model's sample rate; another rate is refused.
Sampling settings per level (bottom level first) can be overridden with ``--temp``, ``--fp16``,
``--max_batch_size``, ``--chunk_size``, ``--top_k``, ``--top_p``, each a scalar or a comma list.

Outputs go to ``{name}/level_{k}/``: ``item_{i}.wav``, ``data.pth.tar`` (zs, labels, sampling_kwargs, x;
tensors and plain types only) and ``index.html`` with one page per item (lyric alignment for lyric models).
Under ``mpiexec -n R`` every rank samples its own ``n_samples`` into ``{name}_rank_{r}/`` with seed
``seed + r``; a ``{rank}`` in ``--codes_file`` is replaced by the rank.

Sampling is resumable: after every window the codes so far and the random state are saved to
``{name}/progress.pth.tar``; rerunning the same command after a crash or Ctrl-C continues from the last finished
window and gives the same codes as an uninterrupted run. The file is removed when sampling completes.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

import fire
import torch

from jukebox.align import can_align, get_alignment
from jukebox.hparams import Hyperparams
from jukebox.make_models import make_model, model_sample_rate
from jukebox.save_html import save_html
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint
from jukebox.utils.cli import check_options, run_cli
from jukebox.utils.dist_utils import get_world_size, print_once, setup_dist_from_mpi
from jukebox.utils.io import audio_info, load_audio, save_wav
from jukebox.utils.sampling import on_device, sample_levels

__all__ = ["run", "main", "EXAMPLE_METAS", "default_sampling_kwargs", "load_codes", "load_prompts", "make_metas"]

MODES = ("ancestral", "continue", "upsample", "primed")

# Public-domain poems (Shelley 1818, Dickinson 1891, Blake 1794, Wordsworth 1807) as example lyrics.
EXAMPLE_METAS = [
    dict(artist="Johnny Cash", genre="Country", lyrics="""I met a traveller from an antique land,
Who said: Two vast and trunkless legs of stone
Stand in the desert. Near them, on the sand,
Half sunk a shattered visage lies, whose frown,
And wrinkled lip, and sneer of cold command,
Tell that its sculptor well those passions read
Which yet survive, stamped on these lifeless things,
The hand that mocked them, and the heart that fed;
And on the pedestal these words appear:
My name is Ozymandias, King of Kings;
Look on my Works, ye Mighty, and despair!
Nothing beside remains. Round the decay
Of that colossal Wreck, boundless and bare
The lone and level sands stretch far away."""),
    dict(artist="Nina Simone", genre="Soul", lyrics="""Hope is the thing with feathers
That perches in the soul,
And sings the tune without the words,
And never stops at all,
And sweetest in the gale is heard;
And sore must be the storm
That could abash the little bird
That kept so many warm.
I've heard it in the chillest land,
And on the strangest sea;
Yet, never, in extremity,
It asked a crumb of me."""),
    dict(artist="Louis Armstrong", genre="Jazz", lyrics="""Tyger Tyger, burning bright,
In the forests of the night;
What immortal hand or eye,
Could frame thy fearful symmetry?
In what distant deeps or skies,
Burnt the fire of thine eyes?
On what wings dare he aspire?
What the hand, dare seize the fire?"""),
    dict(artist="The Beatles", genre="Pop", lyrics="""I wandered lonely as a cloud
That floats on high o'er vales and hills,
When all at once I saw a crowd,
A host, of golden daffodils;
Beside the lake, beneath the trees,
Fluttering and dancing in the breeze.
Continuous as the stars that shine
And twinkle on the milky way,
They stretched in never-ending line
Along the margin of a bay:
Ten thousand saw I at a glance,
Tossing their heads in sprightly dance."""),
]


def _as_text(value: Any) -> str:
    # fire turns "a,b" into a tuple and "1999" into an int
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _per_level(value: Any, levels: int, name: str, cast: type) -> list | None:
    """A command-line scalar or comma list as one value per level (bottom level first)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (tuple, list)):
        value = [value] * levels
    if len(value) != levels:
        raise ValueError(f"--{name} needs one value or {levels} comma-separated values (one per level, bottom "
                         f"first), got {list(value)}")
    if cast is bool:
        return [v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes") for v in value]
    return [cast(v) for v in value]


def default_sampling_kwargs(model: str, levels: int) -> list[dict]:
    """The original's settings: upsamplers temp 0.99, chunks of 32, 16 samples per pass; the top level chunks of
    16 and 3 samples per pass (1b_lyrics: 32 and 16); fp16 everywhere."""
    top_chunk, top_batch = (32, 16) if model == "1b_lyrics" else (16, 3)
    lower = [dict(temp=0.99, fp16=True, chunk_size=32, max_batch_size=16) for _ in range(levels - 1)]
    return lower + [dict(temp=0.99, fp16=True, chunk_size=top_chunk, max_batch_size=top_batch)]


def make_metas(n_samples: int, total_length: int, artist: Any = None, genre: Any = None, lyrics: Any = None,
               lyrics_file: str | None = None, metas: str | None = None) -> list[dict]:
    """n_samples label dicts {artist, genre, lyrics, total_length, offset} from the command-line options."""
    if lyrics is not None and lyrics_file is not None:
        raise ValueError("pass either --lyrics or --lyrics_file, not both")
    if lyrics_file is not None:
        with open(lyrics_file, encoding="utf-8") as f:
            lyrics = f.read()
    given = artist is not None or genre is not None or lyrics is not None
    if metas is not None:
        if given:
            raise ValueError("pass either --metas=file.json or --artist/--genre/--lyrics, not both")
        with open(metas, encoding="utf-8") as f:
            base = json.load(f)
        if isinstance(base, dict):
            base = [base]
        if not isinstance(base, list) or not base or not all(isinstance(m, dict) for m in base):
            raise ValueError(f"{metas} must hold a non-empty JSON list of "
                             '{"artist", "genre", "lyrics"} objects')
        for i, m in enumerate(base):
            unknown = set(m) - {"artist", "genre", "lyrics"}
            if unknown:
                raise ValueError(f"{metas}: entry {i} has unknown fields {sorted(unknown)}; use artist, genre, lyrics")
    elif given:
        base = [dict(artist=artist, genre=genre, lyrics=lyrics)]
    else:
        base = EXAMPLE_METAS
    tiled = [base[i % len(base)] for i in range(n_samples)]
    return [dict(artist=_as_text(m.get("artist")) or "unknown", genre=_as_text(m.get("genre")) or "unknown",
                 lyrics=_as_text(m.get("lyrics")), total_length=int(total_length), offset=0) for m in tiled]


def load_codes(codes_file: str, n_samples: int, levels: int, cut_length: int | None, priors: Sequence[Any],
               device: torch.device) -> list[torch.Tensor]:
    """The zs of an earlier run's data.pth.tar, cut to ``cut_length`` audio samples if given."""
    if not os.path.isfile(codes_file):
        raise FileNotFoundError(f"--codes_file {codes_file!r} does not exist; pass the level_k/data.pth.tar of an "
                                "earlier run")
    data = load_checkpoint(codes_file)  # tensors and plain containers only: never runs code from the file
    zs = data.get("zs") if isinstance(data, dict) else None
    if not isinstance(zs, (list, tuple)) or len(zs) != levels:
        raise ValueError(f"{codes_file} has no codes of {levels} levels (expected the data.pth.tar of a sampling run)")
    if zs[-1].shape[0] != n_samples:
        raise ValueError(f"{codes_file} holds {zs[-1].shape[0]} samples but --n_samples={n_samples}; pass "
                         f"--n_samples={zs[-1].shape[0]}")
    for level, (z, prior) in enumerate(zip(zs, priors)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != n_samples or z.is_floating_point():
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{codes_file}: the level-{level} codes must be integers of shape ({n_samples}, T), got "
                             f"{shape}")
        if z.numel() and not 0 <= int(z.min()) <= int(z.max()) < prior.l_bins:
            raise ValueError(f"{codes_file}: the level-{level} codes lie outside [0, {prior.l_bins}), the codebook "
                             "of this model; were they sampled with another model?")
    if cut_length is not None:
        top_tokens = cut_length // priors[-1].raw_to_tokens
        if top_tokens > zs[-1].shape[1]:
            raise ValueError(f"--prompt_length_in_seconds asks for {top_tokens} top-level tokens but {codes_file} "
                             f"has only {zs[-1].shape[1]}")
        zs = [z[:, :cut_length // prior.raw_to_tokens] for z, prior in zip(zs, priors)]
    return [z.long().to(device) for z in zs]


def load_prompts(audio_files: Sequence[str], duration: int, n_samples: int, sr: int, top_hop: int) -> torch.Tensor:
    """Mono prompts ``(n_samples, T, 1)``: the first ``duration`` samples of each file (any readable format),
    tiled to n_samples; T is cut to the shortest file and to a multiple of ``top_hop``."""
    infos = [audio_info(f) for f in audio_files]
    lengths = [int(info.frames * sr / info.sr) for info in infos]
    shortest = audio_files[lengths.index(min(lengths))]
    length = min(duration, min(lengths)) // top_hop * top_hop
    if length <= 0:
        raise ValueError(f"prompt file {shortest!r} is shorter than one top-level token ({top_hop} samples at "
                         f"{sr} Hz)")
    if length < duration:
        print_once(f"Prompts shortened to {length / sr:.2f} s, the length of the shortest file ({shortest}), "
                   f"instead of the {duration / sr:.2f} s asked for")
    xs = [torch.from_numpy(load_audio(f, sr=sr, offset=0, duration=length, channels=1)).T for f in audio_files]
    silent = [f for f, x in zip(audio_files, xs) if not bool(x.abs().max() > 0)]
    if silent:
        raise ValueError(f"the first {length / sr:.2f} s of prompt file(s) {', '.join(map(repr, silent))} are "
                         "silent; prime with audio that has sound in it (or use --mode=ancestral)")
    return torch.stack([xs[i % len(xs)] for i in range(n_samples)])


class _Progress:
    """The resume file ``{logdir}/progress.pth.tar``: codes, position and random state after each window."""

    def __init__(self, logdir: str, settings: dict) -> None:
        self.path = os.path.join(logdir, "progress.pth.tar")
        self.settings = settings
        self.alignments: list[torch.Tensor] | None = None

    def read(self) -> dict | None:
        if not os.path.exists(self.path):
            return None
        state = load_checkpoint(self.path)
        saved = json.loads(state["settings"])
        changed = sorted(k for k in set(saved) | set(self.settings) if saved.get(k) != self.settings.get(k))
        if changed:
            diff = "; ".join(f"{k}: {saved.get(k)!r} then, {self.settings.get(k)!r} now" for k in changed)
            raise RuntimeError(f"{self.path} is an unfinished run with other settings ({diff}). Rerun it with the "
                               "same settings to finish it, or delete the file (or use another --name) to start over.")
        if state.get("alignments") is not None:
            self.alignments = list(state["alignments"])
        return state

    def write(self, zs: list[torch.Tensor], level: int, windows_done: int, seed: int) -> None:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        save_checkpoint(self.path, dict(settings=json.dumps(self.settings, sort_keys=True), seed=seed,
                                        zs=[z.cpu() for z in zs], level=level, windows_done=windows_done,
                                        rng=torch.get_rng_state(), cuda_rng=cuda, alignments=self.alignments))

    def done(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def run(model: str, name: str, levels: int = 3, sample_length_in_seconds: float = 24,
        total_sample_length_in_seconds: float = 240, sr: int | None = None, n_samples: int = 1,
        hop_fraction: Any = (0.5, 0.5, 0.125), mode: str = "ancestral", codes_file: str | None = None,
        audio_file: Any = None, prompt_length_in_seconds: float | None = None, port: int = 29500,
        seed: int | None = None, temp: Any = None, fp16: Any = None, max_batch_size: Any = None,
        chunk_size: Any = None, top_k: Any = None, top_p: Any = None, artist: Any = None, genre: Any = None,
        lyrics: Any = None, lyrics_file: str | None = None, metas: str | None = None,
        ids_dir: str | None = None, sample_length: int = 0) -> None:
    """Sample ``n_samples`` songs with ``model`` into ``name`` (see the module docstring for the options)."""
    if mode not in MODES:
        raise ValueError(f"unknown --mode={mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("continue", "upsample") and not codes_file:
        raise ValueError(f"--mode={mode} needs --codes_file=path/to/level_k/data.pth.tar from an earlier run")
    if mode == "primed" and (not audio_file or prompt_length_in_seconds is None):
        raise ValueError("--mode=primed needs --audio_file=a.wav,b.wav and --prompt_length_in_seconds")
    hop_fraction = _per_level(hop_fraction, levels, "hop_fraction", float)
    if not all(0.0 < h <= 1.0 for h in hop_fraction):
        raise ValueError(f"--hop_fraction must be in (0, 1] on every level (windows overlap by 1 - hop_fraction), "
                         f"got {hop_fraction}")
    sr = _check_sample_rate(model, sr)
    rank, _, device = setup_dist_from_mpi(port=port)
    logdir = f"{name}_rank_{rank}" if get_world_size() > 1 else str(name)
    _check_writable(logdir)
    hps = Hyperparams(name=logdir, levels=levels, sample_length_in_seconds=sample_length_in_seconds,
                      total_sample_length_in_seconds=total_sample_length_in_seconds, sr=sr, n_samples=n_samples,
                      hop_fraction=hop_fraction, sample_length=sample_length)
    with torch.no_grad():
        vqvae, priors = make_model(model, device, hps)
        if len(priors) != levels:
            raise ValueError(f"model {model!r} has {len(priors)} levels but --levels={levels}")
        window = max((p.n_ctx * p.raw_to_tokens for p in priors[:-1]), default=0)  # the upsamplers' longest
        if hps.sample_length < window:
            raise ValueError(f"--sample_length_in_seconds gives {hps.sample_length} samples, but upsampling needs at "
                             f"least one context of every level below the top: use at least {window / sr:.2f} s")
        for prior in priors:
            if ids_dir is not None:
                prior.ids_dir = ids_dir
        _sample(model, hps, vqvae, priors, device, rank, mode, codes_file, audio_file, prompt_length_in_seconds,
                seed, dict(temp=temp, fp16=fp16, max_batch_size=max_batch_size, chunk_size=chunk_size,
                           top_k=top_k, top_p=top_p),
                make_metas(n_samples, int(total_sample_length_in_seconds * sr), artist, genre, lyrics, lyrics_file,
                           metas))


def _check_sample_rate(model: str, sr: int | None) -> int:
    """The model's sample rate; a different ``--sr`` is refused (the wavs would play at the wrong speed and pitch)."""
    model_sr = model_sample_rate(model)
    if sr is not None and int(sr) != model_sr:
        raise ValueError(f"--sr={sr} but model {model!r} works at {model_sr} Hz; pass --sr={model_sr} or leave --sr "
                         "out (the model's rate is the default)")
    return model_sr


def _check_writable(logdir: str) -> None:
    """Fail before any work if the outputs (and the resume file) cannot be written to ``logdir``."""
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the output folder {logdir!r}: {e.strerror}; pass another --name") from e
    if not os.access(logdir, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"the output folder {logdir!r} is not writable; pass another --name")


def _sampling_kwargs(model: str, levels: int, overrides: dict) -> list[dict]:
    kwargs = default_sampling_kwargs(model, levels)
    casts = dict(temp=float, fp16=bool, max_batch_size=int, chunk_size=int, top_k=int, top_p=float)
    for key, value in overrides.items():
        values = _per_level(value, levels, key, casts[key])
        if values is not None:
            for level, v in enumerate(values):
                kwargs[level][key] = v
    return kwargs


def _sample(model: str, hps: Hyperparams, vqvae: Any, priors: list, device: torch.device, rank: int, mode: str,
            codes_file: str | None, audio_file: Any, prompt_length_in_seconds: float | None, seed: int | None,
            overrides: dict, metas: list[dict]) -> None:
    levels = hps.levels
    sampling_kwargs = _sampling_kwargs(model, levels, overrides)
    labels = [prior.labeller.get_batch_labels(metas, device) for prior in priors]
    top_hop = priors[-1].raw_to_tokens
    prompt_length = None
    if prompt_length_in_seconds is not None:
        prompt_length = int(prompt_length_in_seconds * hps.sr) // top_hop * top_hop
    if codes_file is not None:
        codes_file = codes_file.replace("{rank}", str(rank))
    audio_files = _as_text(audio_file).split(",") if audio_file else None
    settings = dict(model=model, mode=mode, levels=levels, n_samples=hps.n_samples, sample_length=hps.sample_length,
                    hop_fraction=list(hps.hop_fraction), codes_file=codes_file, audio_file=audio_files,
                    prompt_length=prompt_length, metas=metas,
                    sampling={k: [kw.get(k) for kw in sampling_kwargs] for k in ("temp", "fp16", "top_k", "top_p")})
    progress = _Progress(hps.name, settings)
    state = progress.read()
    levels_to_sample = list(range(levels - 1)) if mode == "upsample" else list(range(levels))
    if state is not None:
        if seed is not None and seed + rank != state["seed"]:
            raise RuntimeError(f"{progress.path} was sampled with --seed={state['seed'] - rank}; pass that seed (or "
                               "none) to resume it")
        seed = state["seed"]
        zs = [z.to(device) for z in state["zs"]]
        resume = (state["level"], state["windows_done"])
        print_once(f"Resuming {progress.path}: level {resume[0]}, after {resume[1]} windows")
        _restore_rng(state)
    else:
        seed = (secrets.randbits(31) if seed is None else int(seed)) + rank
        resume = None
        zs = _initial_codes(mode, hps, vqvae, priors, device, codes_file, audio_files, prompt_length, top_hop)
        torch.manual_seed(seed)
    print_once(f"Sampling {hps.n_samples} samples of {hps.sample_length / hps.sr:.2f} s with seed {seed - rank} "
               f"(--seed={seed - rank} reproduces them)")

    def after_window(level: int, windows_done: int, zs: list[torch.Tensor]) -> None:
        progress.write(zs, level, windows_done, seed)

    def after_level(level: int, zs: list[torch.Tensor], prior: Any) -> None:
        if progress.alignments is None and level == levels - 1 and can_align(prior):
            progress.alignments = _align(zs, labels, prior, sampling_kwargs, hps)
        _save_level(level, zs, labels, sampling_kwargs, vqvae, progress.alignments, hps)
        progress.write(zs, level - 1, 0, seed)

    if mode == "upsample" and progress.alignments is None and can_align(priors[-1]):
        # the top level is not sampled here: load its prior once, before any upsampler, to align the lyrics
        with on_device(priors[-1], device) as top:
            progress.alignments = _align(zs, labels, top, sampling_kwargs, hps)

    try:
        sample_levels(zs, labels, sampling_kwargs, priors, levels_to_sample, hps.sample_length, hps.hop_fraction,
                      device, resume=resume, after_window=after_window, after_level=after_level)
    except KeyboardInterrupt:
        print_once(f"\nInterrupted. Rerun the same command to continue from the last finished window "
                   f"(saved in {progress.path}).")
        raise
    progress.done()
    print_once(f"Done: samples are in {hps.name}/level_*/ (to view index.html, serve them with "
               "`python -m http.server --bind 127.0.0.1`)")


def _initial_codes(mode: str, hps: Hyperparams, vqvae: Any, priors: list, device: torch.device,
                   codes_file: str | None, audio_files: list[str] | None, prompt_length: int | None,
                   top_hop: int) -> list[torch.Tensor]:
    levels, n = hps.levels, hps.n_samples
    if mode == "ancestral":
        return [torch.zeros(n, 0, dtype=torch.long, device=device) for _ in range(levels)]
    if mode in ("continue", "upsample"):
        zs = load_codes(codes_file, n, levels, prompt_length, priors, device)
        needed = hps.sample_length // top_hop
        if mode == "upsample" and zs[-1].shape[1] < needed:
            raise ValueError(f"--mode=upsample needs {needed} top-level tokens for --sample_length_in_seconds but "
                             f"{codes_file} has {zs[-1].shape[1]}; sample them first (--mode=continue)")
        return zs
    if prompt_length <= 0:
        raise ValueError(f"--prompt_length_in_seconds must cover at least one top-level token ({top_hop} samples)")
    x = load_prompts(audio_files, prompt_length, n, hps.sr, top_hop).to(device)
    return vqvae.encode(x, start_level=0, end_level=levels, bs_chunks=n)


def _align(zs: list[torch.Tensor], labels: list, prior: Any, sampling_kwargs: list, hps: Hyperparams):
    alignments = get_alignment(None, zs, labels[-1], prior, hps.levels - 1, sampling_kwargs[-1]["fp16"], hps)
    return [torch.from_numpy(a).float() for a in alignments]


def _save_level(level: int, zs: list[torch.Tensor], labels: list, sampling_kwargs: list, vqvae: Any,
                alignments: list[torch.Tensor] | None, hps: Hyperparams) -> None:
    """Decode ``zs[level:]`` and write the level's wavs, data.pth.tar and html."""
    x = vqvae.decode(zs[level:], start_level=level, bs_chunks=zs[level].shape[0]).float().cpu()
    logdir = os.path.join(hps.name, f"level_{level}")
    os.makedirs(logdir, exist_ok=True)
    plain_labels = [None if l is None else dict(y=l["y"].cpu(), info=l["info"]) for l in labels]
    save_checkpoint(os.path.join(logdir, "data.pth.tar"),
                    dict(zs=[z.cpu() for z in zs], labels=plain_labels, sampling_kwargs=sampling_kwargs, x=x))
    save_wav(logdir, x, hps.sr)
    save_html(logdir, x, zs, labels[-1], alignments, hps)
    print_once(f"Saved level {level} to {logdir}")


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``run`` through fire; unknown ``--options`` are refused before any work starts."""
    argv = sys.argv[1:] if argv is None else list(argv)
    check_options(run, argv, "python jukebox/sample.py")
    fire.Fire(run, command=argv)


if __name__ == "__main__":
    run_cli(main)
