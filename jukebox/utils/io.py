"""Reading and writing audio files.

Audio arrays are ``(C, T)`` float32 in [-1, 1] when read (channels first, as decoders give
them) and ``(T, C)`` or ``(N, T, C)`` when written (the model's layout).

Decoding: libsndfile (``soundfile``) for wav/flac/ogg/aiff, where seeking is sample-exact and
simple; PyAV (FFmpeg) for everything else (mp3, opus, m4a, ...) and as the fallback when
libsndfile cannot open a file. Both seek to the requested offset and decode only the frames
needed, so reading a chunk of a long song costs about the length of the chunk.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import librosa
import numpy as np
import soundfile as sf

from jukebox.utils.atomic import atomic_write

__all__ = [
    "AudioReadError", "AudioInfo", "AudioScan", "audio_info", "get_duration_sec", "scan_audio",
    "load_audio", "read_audio", "save_wav",
]

# Extensions read with libsndfile first; anything else goes straight to FFmpeg.
_SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff"})
# Decode this much audio before the requested offset: codecs with overlapping frames
# (vorbis, opus, mp3) only produce exact samples once they have seen the preceding packet.
_PREROLL_SEC = 0.2
# Native samples decoded on each side of a chunk so the resampling filter has real context.
_RESAMPLE_PAD_SEC = 0.02


class AudioReadError(OSError):
    """A file is missing, is not audio, or could not be decoded."""

    def __init__(self, file: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot read audio file {os.fspath(file)!r}: {reason}")
        self.file = os.fspath(file)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """Container metadata: ``frames`` per channel at the native rate ``sr`` (approximate for
    some compressed formats, where it comes from the container's duration field)."""

    frames: int
    sr: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sr


@dataclass(frozen=True)
class AudioScan(AudioInfo):
    """Result of decoding a whole file: exact ``frames`` and the ``peak`` absolute sample value."""

    peak: float = 0.0


def _use_soundfile(file: str) -> bool:
    return Path(file).suffix.lower() in _SOUNDFILE_EXTENSIONS


def _check_exists(file: str) -> None:
    if not os.path.exists(file):
        raise AudioReadError(file, "no such file")
    if os.path.isdir(file):
        raise AudioReadError(file, "it is a directory")
    if os.path.isfile(file) and os.path.getsize(file) == 0:
        raise AudioReadError(file, "it is empty (0 bytes)")


# ------------------------------------------------------------------------------------------
# PyAV backend
# ------------------------------------------------------------------------------------------
def _open_av(file: str) -> tuple[Any, Any]:
    try:
        container = av.open(file)
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise AudioReadError(file, f"FFmpeg cannot open it ({e})") from e
    if not container.streams.audio:
        container.close()
        raise AudioReadError(file, "it has no audio stream")
    return container, container.streams.audio[0]


def _frame_to_float(frame: Any, channels: int) -> np.ndarray:
    """An FFmpeg audio frame as ``(C, n)`` float32 in [-1, 1]."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # interleaved samples come back as (1, n * C)
        data = data.reshape(-1, channels).T
    if frame.format.name.startswith("u8"):
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype.kind == "i":
        return data.astype(np.float32) / np.float32(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float32, copy=False)


def _av_frames_from(file: str, start: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(position, samples (C, n))`` of consecutive decoded frames, the first one starting
    at or before native sample ``start``. Positions count from the stream's first sample."""
    container, stream = _open_av(file)
    try:
        sr = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        time_base = stream.time_base or Fraction(1, sr)
        origin = stream.start_time or 0
        seek_sec = max(0.0, start / sr - _PREROLL_SEC)
        if seek_sec > 0:
            container.seek(origin + int(seek_sec / time_base), stream=stream, backward=True)
        frames = container.decode(stream)
        frame, pos = next(frames, None), 0
        if seek_sec > 0 and frame is not None:
            landed = None if frame.pts is None else round((frame.pts - origin) * time_base * sr)
            if landed is None or landed > start:
                # No timestamp, or an inexact index put us after the target: decode from the start.
                container.close()
                container, stream = _open_av(file)
                frames = container.decode(stream)
                frame = next(frames, None)
            else:
                pos = landed
        while frame is not None:
            data = _frame_to_float(frame, channels)
            yield pos, data
            pos += data.shape[1]
            frame = next(frames, None)
    except av.FFmpegError as e:
        raise AudioReadError(file, f"FFmpeg failed to decode it ({e})") from e
    finally:
        container.close()


def _read_av(file: str, start: int, frames: int | None) -> np.ndarray:
    end = np.inf if frames is None else start + frames
    parts = []
    for pos, data in _av_frames_from(file, start):
        if pos >= end:
            break
        lo, hi = max(start - pos, 0), int(min(end - pos, data.shape[1]))
        if hi > lo:
            parts.append(data[:, lo:hi])
    if not parts:  # start at or past the end of the stream
        return np.zeros((_info_av(file).channels, 0), np.float32)
    return np.concatenate(parts, axis=1)


def _info_av(file: str) -> AudioInfo:
    container, stream = _open_av(file)
    try:
        sr = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        else:
            seconds = None
    finally:
        container.close()
    if not sr or not channels:
        raise AudioReadError(file, "FFmpeg reports no sample rate or no channels")
    if seconds is None:  # raw streams without a duration field: count by decoding
        return scan_audio(file)
    return AudioInfo(frames=round(seconds * sr), sr=sr, channels=channels)


# ------------------------------------------------------------------------------------------
# soundfile backend
# ------------------------------------------------------------------------------------------
def _read_sf(file: str, start: int, frames: int | None) -> np.ndarray:
    with sf.SoundFile(file) as f:
        f.seek(min(start, f.frames))
        data = f.read(-1 if frames is None else frames, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T)


def _with_backend(file: str, sf_fn: Any, av_fn: Any, *args: Any) -> Any:
    _check_exists(file)
    if _use_soundfile(file):
        try:
            return sf_fn(file, *args)
        except RuntimeError as e:  # soundfile's errors (LibsndfileError) derive from RuntimeError
            sf_reason = str(e)
        try:
            return av_fn(file, *args)
        except AudioReadError as e:
            raise AudioReadError(file, f"libsndfile: {sf_reason}; {e.reason}") from e
    return av_fn(file, *args)


def _info_sf(file: str) -> AudioInfo:
    info = sf.info(file)
    return AudioInfo(frames=int(info.frames), sr=int(info.samplerate), channels=int(info.channels))


def _scan_sf(file: str) -> AudioScan:
    frames, peak = 0, 0.0
    with sf.SoundFile(file) as f:
        sr, channels = f.samplerate, f.channels
        for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
            frames += block.shape[0]
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
    return AudioScan(frames=frames, sr=sr, channels=channels, peak=peak)


def _scan_av(file: str) -> AudioScan:
    container, stream = _open_av(file)
    sr, channels = stream.codec_context.sample_rate, stream.codec_context.channels
    container.close()
    frames, peak = 0, 0.0
    for _, data in _av_frames_from(file, 0):
        frames += data.shape[1]
        peak = max(peak, float(np.abs(data).max(initial=0.0)))
    return AudioScan(frames=frames, sr=sr, channels=channels, peak=peak)


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------
def audio_info(file: str | os.PathLike) -> AudioInfo:
    """Native sample rate, channel count and length from the file's header (no decoding)."""
    file = os.fspath(file)
    return _with_backend(file, _info_sf, _info_av)


@functools.lru_cache(maxsize=65536)
def _cached_duration(file: str, size: int, mtime_ns: int) -> float:
    return audio_info(file).duration


def get_duration_sec(file: str | os.PathLike, cache: bool = False) -> float:
    """Length of ``file`` in seconds from its header. ``cache=True`` remembers the answer in this
    process until the file's size or modification time changes."""
    file = os.fspath(file)
    if not cache:
        return audio_info(file).duration
    _check_exists(file)
    st = os.stat(file)
    return _cached_duration(os.path.abspath(file), st.st_size, st.st_mtime_ns)


def scan_audio(file: str | os.PathLike) -> AudioScan:
    """Decode the whole file (streaming, in blocks) to get its exact length and peak level."""
    file = os.fspath(file)
    return _with_backend(file, _scan_sf, _scan_av)


def _read_native(file: str, start: int, frames: int | None) -> np.ndarray:
    return _with_backend(file, _read_sf, _read_av, start, frames)


def _to_channels(x: np.ndarray, channels: int | None, file: str) -> np.ndarray:
    if channels is None or x.shape[0] == channels:
        return x
    if channels == 1:
        return x.mean(axis=0, keepdims=True)
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    raise ValueError(f"{file}: cannot turn {x.shape[0]} channels into {channels}; "
                     "only mono <-> multichannel conversions are supported")


def load_audio(file: str | os.PathLike, sr: int, offset: float, duration: float, resample: bool = True,
               approx: bool = False, time_base: str = "samples", check_duration: bool = True,
               channels: int | None = None) -> np.ndarray:
    """Read ``duration`` of ``file`` starting at ``offset``, at sample rate ``sr``.

    ``offset``/``duration`` are samples at ``sr`` (``time_base='samples'``) or seconds
    (``time_base='sec'``). Returns ``(C, duration_samples)`` float32: exactly that many samples,
    zero-padded past the end of the file. Only the needed part of the file is decoded.

    ``resample=False`` requires the file to be at ``sr`` already. ``check_duration`` raises
    ValueError when the request runs past the end of the file; ``approx=True`` instead moves
    the offset back so that the chunk fits. ``channels`` (1 or 2) downmixes or duplicates;
    None keeps the file's channels.
    """
    file = os.fspath(file)
    if time_base == "sec":
        offset, duration = offset * sr, duration * sr
    elif time_base != "samples":
        raise ValueError(f"time_base must be 'samples' or 'sec', got {time_base!r}")
    offset, duration = int(round(offset)), int(round(duration))
    if duration <= 0 or offset < 0:
        raise ValueError(f"need offset >= 0 and duration > 0 samples, got offset={offset}, duration={duration}")
    info = audio_info(file)
    if not resample and info.sr != sr:
        raise ValueError(f"{file} is at {info.sr} Hz but sr={sr} and resample=False; "
                         "pass resample=True or convert the file")
    total = info.frames * sr / info.sr  # file length in samples at sr
    if offset + duration > total:
        if approx:
            offset = max(0, int(total) - duration)
        elif check_duration and offset + duration > total + 1:  # +1: rounding between rates
            raise ValueError(f"{file}: requested samples [{offset}, {offset + duration}) at {sr} Hz but the file "
                             f"has only {int(total)} ({info.duration:.3f} s); use approx=True or check_duration=False")

    if info.sr == sr:
        x = _read_native(file, offset, duration)
    else:
        # Start the decoded span on a sample shared by both rate grids (a multiple of `step`
        # native samples) so the resampled chunk lines up exactly with a whole-file resampling.
        ratio = Fraction(info.sr, sr)
        step = ratio.numerator
        pad = int(np.ceil(_RESAMPLE_PAD_SEC * info.sr))
        first = max(0, (int(offset * ratio) - pad) // step * step)
        last = int(np.ceil((offset + duration) * ratio)) + pad
        native = _read_native(file, first, last - first)
        x = librosa.resample(native, orig_sr=info.sr, target_sr=sr, res_type="soxr_hq", axis=-1)
        skip = offset - int(first / ratio)
        x = x[:, skip:skip + duration]
    if x.shape[1] < duration:
        x = np.pad(x, ((0, 0), (0, duration - x.shape[1])))
    return np.ascontiguousarray(_to_channels(x, channels, file), dtype=np.float32)


def read_audio(file: str | os.PathLike, sr: int, channels: int | None = None) -> np.ndarray:
    """The whole of ``file`` at sample rate ``sr``: ``(C, T)`` float32, as many samples as it decodes to (no header
    lengths trusted, no padding). ``channels`` as in :func:`load_audio`."""
    file = os.fspath(file)
    info = audio_info(file)
    x = _read_native(file, 0, None)
    if info.sr != sr and x.shape[1]:
        x = librosa.resample(x, orig_sr=info.sr, target_sr=sr, res_type="soxr_hq", axis=-1)
    return np.ascontiguousarray(_to_channels(x, channels, file), dtype=np.float32)


def _to_numpy(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):  # a torch tensor, on any device
        audio = audio.detach().float().cpu().numpy()
    return np.asarray(audio, dtype=np.float32)


def _write_wav_atomic(path: Path, audio: np.ndarray, sr: int) -> None:
    with atomic_write(path) as f:
        sf.write(f, np.clip(audio, -1.0, 1.0), samplerate=sr, format="WAV", subtype="PCM_16")


def save_wav(path: str | os.PathLike, audio: Any, sr: int) -> list[Path]:
    """Write 16-bit wav files, clipping to [-1, 1]; returns the paths written.

    ``audio`` (T, C): one file at ``path``. ``audio`` (N, T, C): ``path`` is a folder and item
    ``i`` goes to ``path/item_{i}.wav``. numpy arrays or torch tensors (any device).
    """
    audio, path = _to_numpy(audio), Path(path)
    if audio.ndim == 2:
        _write_wav_atomic(path, audio, int(sr))
        return [path]
    if audio.ndim == 3:
        paths = [path / f"item_{i}.wav" for i in range(audio.shape[0])]
        for p, item in zip(paths, audio):
            _write_wav_atomic(p, item, int(sr))
        return paths
    raise ValueError(f"save_wav expects audio shaped (T, C) or (N, T, C), got {audio.shape}")
