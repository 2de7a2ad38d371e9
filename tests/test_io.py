"""Audio reading (seek, decode, resample) and writing, on the real recordings in tests/data."""
from __future__ import annotations

import os
from math import gcd

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from conftest import DATA
from jukebox.utils.io import (
    AudioReadError,
    _read_av,
    _read_sf,
    audio_info,
    get_duration_sec,
    load_audio,
    save_wav,
    scan_audio,
)

FORMATS = DATA / "formats"
# file -> (native sr, channels, seconds)
FORMAT_FILES = {
    "through_space_mono_16000.wav": (16000, 1, 4.0),
    "through_space_stereo_44100.flac": (44100, 2, 8.0),
    "through_space_stereo_44100.mp3": (44100, 2, 4.0),
    "through_space_stereo_48000.ogg": (48000, 2, 4.0),
}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("name", sorted(FORMAT_FILES))
def test_info_and_scan(name):
    sr, channels, seconds = FORMAT_FILES[name]
    info = audio_info(FORMATS / name)
    assert (info.sr, info.channels) == (sr, channels)
    assert get_duration_sec(FORMATS / name) == pytest.approx(seconds, abs=1e-3)
    assert get_duration_sec(FORMATS / name, cache=True) == pytest.approx(seconds, abs=1e-3)
    scan = scan_audio(FORMATS / name)
    assert scan.frames == round(seconds * sr)
    assert 0.1 < scan.peak <= 1.0


@pytest.mark.parametrize("name", sorted(FORMAT_FILES))
@pytest.mark.parametrize("sr", [22050, 44100])
def test_load_resamples_and_matches_reference(name, sr):
    native_sr, channels, seconds = FORMAT_FILES[name]
    n = int(seconds * sr)
    x = load_audio(FORMATS / name, sr=sr, offset=0, duration=n)
    assert x.shape == (channels, n) and x.dtype == np.float32
    # Independent reference: the whole file decoded by FFmpeg, resampled by a polyphase filter.
    native = _read_av(str(FORMATS / name), 0, None)
    g = gcd(sr, native_sr)
    ref = resample_poly(native.astype(np.float64), sr // g, native_sr // g, axis=1)[:, :n]
    assert _corr(x[:, 100:-100], ref[:, 100:-100]) > 0.999
    # A chunk read by seeking equals the same span of the whole-file read.
    offset, length = int(1.3 * sr), sr
    chunk = load_audio(FORMATS / name, sr=sr, offset=offset, duration=length)
    np.testing.assert_allclose(chunk, x[:, offset:offset + length], atol=1e-5)


@pytest.mark.parametrize("name", ["through_space_stereo_44100.flac", "through_space_stereo_48000.ogg",
                                  "through_space_mono_16000.wav"])
def test_ffmpeg_and_libsndfile_agree_after_seek(name):
    path = str(FORMATS / name)
    for start in (0, 12345, 50001):
        np.testing.assert_allclose(_read_av(path, start, 4000), _read_sf(path, start, 4000), atol=1e-6)


def test_mp3_seek_matches_full_decode():
    path = str(FORMATS / "through_space_stereo_44100.mp3")
    full = _read_av(path, 0, None)
    assert full.shape == (2, 176400)
    for start in (777, 44100, 100003):
        np.testing.assert_array_equal(_read_av(path, start, 3000), full[:, start:start + 3000])


def test_time_base_channels_and_bounds():
    path = FORMATS / "through_space_mono_16000.wav"  # 4 s
    a = load_audio(path, sr=16000, offset=16000, duration=8000)
    b = load_audio(path, sr=16000, offset=1.0, duration=0.5, time_base="sec")
    np.testing.assert_array_equal(a, b)
    stereo = load_audio(path, sr=16000, offset=16000, duration=8000, channels=2)
    assert stereo.shape == (2, 8000)
    np.testing.assert_array_equal(stereo[0], stereo[1])
    mono = load_audio(FORMATS / "through_space_stereo_44100.flac", sr=44100, offset=0, duration=100, channels=1)
    full = load_audio(FORMATS / "through_space_stereo_44100.flac", sr=44100, offset=0, duration=100)
    np.testing.assert_allclose(mono[0], full.mean(0), atol=1e-7)

    with pytest.raises(ValueError, match="approx=True"):
        load_audio(path, sr=16000, offset=60000, duration=8000)
    padded = load_audio(path, sr=16000, offset=60000, duration=8000, check_duration=False)
    assert padded.shape == (1, 8000) and not padded[:, 4000:].any()
    np.testing.assert_array_equal(padded[:, :4000], load_audio(path, sr=16000, offset=60000, duration=4000))
    moved = load_audio(path, sr=16000, offset=60000, duration=8000, approx=True)
    np.testing.assert_array_equal(moved, load_audio(path, sr=16000, offset=56000, duration=8000))

    with pytest.raises(ValueError, match="resample=False"):
        load_audio(path, sr=22050, offset=0, duration=100, resample=False)
    with pytest.raises(ValueError, match="time_base"):
        load_audio(path, sr=16000, offset=0, duration=100, time_base="ms")
    with pytest.raises(ValueError, match="duration > 0"):
        load_audio(path, sr=16000, offset=0, duration=0)


def test_bad_files_raise_audio_read_error(tmp_path):
    with pytest.raises(AudioReadError, match="nope.mp3.*no such file"):
        load_audio(tmp_path / "nope.mp3", sr=16000, offset=0, duration=10)
    for name in ("junk.mp3", "junk.flac", "junk.m4a"):
        junk = tmp_path / name
        junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(AudioReadError, match=name) as e:
            audio_info(junk)
        assert isinstance(e.value, OSError) and e.value.file == str(junk)


def test_save_wav_roundtrip_and_items(tmp_path):
    rng = np.random.default_rng(0)
    audio = rng.uniform(-0.9, 0.9, (1000, 2)).astype(np.float32)
    [path] = save_wav(tmp_path / "a.wav", audio, 22050)
    back, sr = sf.read(path, dtype="float32")
    assert sr == 22050 and back.shape == (1000, 2)
    np.testing.assert_allclose(back, audio, atol=1.0 / 32768 + 1e-7)

    batch = torch.from_numpy(rng.uniform(-2, 2, (3, 500, 1)).astype(np.float32))
    paths = save_wav(tmp_path / "level_0", batch, 16000)
    assert [p.name for p in paths] == ["item_0.wav", "item_1.wav", "item_2.wav"]
    item, _ = sf.read(paths[2], dtype="float32", always_2d=True)
    np.testing.assert_allclose(item, batch[2].clamp(-1, 1).numpy(), atol=1.0 / 32768 + 1e-7)
    assert sorted(os.listdir(tmp_path / "level_0")) == ["item_0.wav", "item_1.wav", "item_2.wav"]  # no temp files
    with pytest.raises(ValueError, match=r"\(T, C\) or \(N, T, C\)"):
        save_wav(tmp_path / "b.wav", np.zeros(10), 16000)


def test_seek_landing_after_target_falls_back_to_full_decode(monkeypatch):
    path = str(FORMATS / "through_space_stereo_44100.mp3")
    full = _read_av(path, 0, None)
    monkeypatch.setattr("jukebox.utils.io._PREROLL_SEC", -1.0)  # seek 1 s past the target on purpose
    np.testing.assert_array_equal(_read_av(path, 50000, 3000), full[:, 50000:53000])
