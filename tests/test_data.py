"""FilesAudioDataset and DataProcessor on the real clips in tests/data (12 FLAC clips, 8 s, 22050 Hz mono)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly
from torch.utils.data.distributed import DistributedSampler

import jukebox.data.data_processor as data_processor
import jukebox.data.files_dataset as files_dataset
from conftest import DATA, IDS_DIR
from jukebox.data.data_processor import DataProcessor, audio_preprocess, collate
from jukebox.data.files_dataset import AudioFileSkipped, FilesAudioDataset
from jukebox.hparams import setup_hparams
from jukebox.utils.io import load_audio

MUSIC = DATA / "music"
FORMATS = DATA / "formats"
SR = 22050
CLIP_SAMPLES = 8 * SR


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Caches of read-only folders go under $JUKEBOX_CACHE: keep them out of the user's home.
    monkeypatch.setenv("JUKEBOX_CACHE", str(tmp_path / "cache"))


def make_hps(audio_dir, **overrides):
    values = dict(audio_files_dir=str(audio_dir), sr=SR, sample_length=SR, labels=False, bs=2, nworkers=0,
                  prior=True)
    values.update(overrides)
    return setup_hparams("", values)


def copy_clip(dest_dir, name="a_new_journey.flac", as_name=None):
    dest_dir.mkdir(parents=True, exist_ok=True)
    return shutil.copy(MUSIC / name, dest_dir / (as_name or name))


def test_music_dataset_finds_every_clip_and_serves_chunks():
    ds = FilesAudioDataset(make_hps(MUSIC))
    assert [p.name for p in ds.files] == sorted(p.name for p in MUSIC.glob("*.flac"))
    assert len(ds.files) == 12 and ds.durations == [CLIP_SAMPLES] * 12
    assert len(ds) == 12 * 8
    x = ds[5]
    assert x.shape == (SR, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], x[:, 1])  # mono duplicated to stereo
    # Without aug_shift, item 9 is the second second of the second clip (8 chunks a clip).
    index, offset = ds.get_index_offset(9)
    assert (index, offset) == (1, SR)
    expected = load_audio(ds.files[1], sr=SR, offset=SR, duration=SR)[0]
    np.testing.assert_array_equal(ds[9][:, 0], expected)

    mono = FilesAudioDataset(make_hps(MUSIC, channels=1, sample_length=4000))
    assert mono[0].shape == (4000, 1) and len(mono) == 12 * CLIP_SAMPLES // 4000


def test_aug_shift_offsets_stay_inside_the_song():
    torch.manual_seed(0)
    ds = FilesAudioDataset(make_hps(MUSIC, sample_length=3 * SR, aug_shift=True))
    offsets, indices = [], set()
    for _ in range(20):
        for item in range(len(ds)):
            index, offset = ds.get_index_offset(item)
            assert 0 <= offset <= ds.durations[index] - ds.sample_length
            # The shift moves the chunk by at most half a chunk either way from its nominal place.
            nominal = item * ds.sample_length - (ds.cumsum[index - 1] if index else 0)
            assert abs(offset - nominal) <= ds.sample_length
            offsets.append(offset)
            indices.add(index)
    assert indices == set(range(12))
    assert len(set(offsets)) > 100  # shifted at random, not a fixed grid
    assert ds[len(ds) - 1].shape == (3 * SR, 2)


def test_format_folder_decodes_and_resamples(tmp_path):
    ds = FilesAudioDataset(make_hps(FORMATS, sr=16000, sample_length=16000))
    assert sorted(p.suffix for p in ds.files) == [".flac", ".mp3", ".ogg", ".wav"]
    lengths = {p.suffix: d for p, d in zip(ds.files, ds.durations)}
    assert lengths == {".flac": 8 * 16000, ".mp3": 4 * 16000, ".ogg": 4 * 16000, ".wav": 4 * 16000}
    ogg = [i for i, p in enumerate(ds.files) if p.suffix == ".ogg"][0]
    chunk = ds.get_song_chunk(ogg, 16000)  # (T, 2) at 16 kHz from a 48 kHz file
    native, _ = sf.read(ds.files[ogg], dtype="float64", always_2d=True)
    ref = resample_poly(native, 1, 3, axis=0)[16000:32000]
    assert chunk.shape == (16000, 2)
    assert np.corrcoef(chunk.ravel(), ref.ravel())[0, 1] > 0.999


def test_unusable_files_are_skipped_with_one_warning_each(tmp_path):
    data = tmp_path / "data"
    copy_clip(data)
    copy_clip(data / "nested", "nebula.flac", "NEBULA.FLAC")  # case-insensitive, recursive
    (data / "x.mp3").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    sf.write(data / "silent.wav", np.zeros((3 * SR, 1), np.float32), SR)
    sf.write(data / "short.wav", np.full((SR // 2, 1), 0.1, np.float32), SR)
    sf.write(data / "surround.wav", np.full((2 * SR, 6), 0.1, np.float32), SR)
    (data / ".hidden.mp3").write_bytes(b"not audio")  # ignored, like notes.txt
    (data / "notes.txt").write_text("not audio")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FilesAudioDataset(make_hps(data))
    messages = [str(w.message) for w in caught if issubclass(w.category, AudioFileSkipped)]
    assert len(messages) == 4
    for name, why in (("x.mp3", "cannot be decoded"), ("silent.wav", "silent"), ("short.wav", "shorter than one chunk"),
                      ("surround.wav", "6 channels")):
        assert sum(name in m and why in m for m in messages) == 1, (name, messages)
    assert sorted(p.name for p in ds.files) == ["NEBULA.FLAC", "a_new_journey.flac"]
    batch = [ds[i] for i in range(len(ds))]
    assert len(batch) == 16 and all(b.shape == (SR, 2) for b in batch)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder.*\\.wav, \\.flac"):
        FilesAudioDataset(make_hps(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="audio_files_dir ''"):
        FilesAudioDataset(make_hps(""))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="no audio files under .*empty.*\\.mp3, \\.m4a"):
        FilesAudioDataset(make_hps(tmp_path / "empty"))
    with pytest.raises(ValueError, match="none of the 12 audio files.*12 outside min_duration"):
        FilesAudioDataset(make_hps(MUSIC, min_duration=10.0))
    with pytest.raises(ValueError, match="sample_length"):
        FilesAudioDataset(make_hps(MUSIC, sample_length=0))


def test_duration_bounds_filter(tmp_path):
    data = tmp_path / "data"
    copy_clip(data)
    sf.write(data / "long.wav", np.full((12 * SR, 1), 0.1, np.float32), SR)
    assert [p.name for p in FilesAudioDataset(make_hps(data, max_duration=10.0)).files] == ["a_new_journey.flac"]
    assert [p.name for p in FilesAudioDataset(make_hps(data, min_duration=10.0)).files] == ["long.wav"]
    assert len(FilesAudioDataset(make_hps(data)).files) == 2


def test_duration_cache_in_read_only_data_dir(monkeypatch, tmp_path):
    # The folder is made read-only by its permission bits, which is what counts even for root (who may still write).
    music = tmp_path / "music"
    shutil.copytree(MUSIC, music, ignore=shutil.ignore_patterns(".jukebox_*"))
    music.chmod(0o555)
    try:
        before = sorted(os.listdir(music))
        FilesAudioDataset(make_hps(music))
        assert sorted(os.listdir(music)) == before  # nothing written into the read-only folder
        [cache] = list((tmp_path / "cache" / "datasets").glob("music-*/.jukebox_durations.json"))
        entries = json.loads(cache.read_text())["files"]
        assert sorted(entries) == before and all(e["frames"] == CLIP_SAMPLES for e in entries.values())

        def no_decoding(path):
            raise AssertionError(f"{path} was decoded again despite the cache")

        monkeypatch.setattr(files_dataset, "scan_audio", no_decoding)
        monkeypatch.setattr(files_dataset, "audio_info", no_decoding)
        assert FilesAudioDataset(make_hps(music)).durations == [CLIP_SAMPLES] * 12
    finally:
        music.chmod(0o755)


def test_duration_cache_beside_writable_data_and_refresh(tmp_path):
    data = tmp_path / "data"
    copy_clip(data)
    FilesAudioDataset(make_hps(data))
    assert (data / ".jukebox_durations.json").exists()
    sf.write(data / "a_new_journey.flac", np.full((3 * SR, 1), 0.1, np.float32), SR)  # changed file
    assert FilesAudioDataset(make_hps(data)).durations == [3 * SR]
    # A folder without write permission bits counts as read-only even for root.
    ro = tmp_path / "ro"
    copy_clip(ro)
    os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        FilesAudioDataset(make_hps(ro))
        assert os.listdir(ro) == ["a_new_journey.flac"]
    finally:
        os.chmod(ro, stat.S_IRWXU)
    assert list((tmp_path / "cache" / "datasets").glob("ro-*/.jukebox_durations.json"))


def test_metadata_sidecars(tmp_path):
    data = tmp_path / "data"
    for name in ("a_new_journey.flac", "nebula.flac", "coherence.flac", "aberrations.flac"):
        copy_clip(data / "album", name)
    (data / "metadata.json").write_text(json.dumps({
        "album/a_new_journey.flac": {"artist": "Max McCracken", "genre": "electronic", "lyrics": "la la"},
        "nebula": {"artist": "Someone", "genre": "ambient"},
    }))
    (data / "album" / "coherence.json").write_text(json.dumps({"artist": "Per File", "genre": "rock", "lyrics": "hey"}))
    ds = FilesAudioDataset(make_hps(data))
    meta = {p.name: ds.get_metadata(p, test=False) for p in ds.files}
    assert meta["a_new_journey.flac"] == {"artist": "Max McCracken", "genre": "electronic", "lyrics": "la la"}
    assert meta["nebula.flac"] == {"artist": "Someone", "genre": "ambient", "lyrics": ""}
    assert meta["coherence.flac"] == {"artist": "Per File", "genre": "rock", "lyrics": "hey"}
    assert meta["aberrations.flac"] == {"artist": "unknown", "genre": "unknown", "lyrics": ""}
    assert ds.metadata_of_files() == [meta[p.name] for p in ds.files]
    (data / "album" / "coherence.flac.json").write_text("{broken")
    with pytest.raises(ValueError, match="coherence.flac.json is not valid JSON"):
        ds.get_metadata(data / "album" / "coherence.flac", test=False)


def test_labelled_chunks(tmp_path, monkeypatch):
    pytest.importorskip("jukebox.data.labels")
    monkeypatch.setenv("JUKEBOX_IDS_DIR", str(IDS_DIR))
    data = tmp_path / "data"
    copy_clip(data, "nebula.flac")
    (data / "nebula.json").write_text(json.dumps({"artist": "Someone Else", "genre": "folk rock", "lyrics": "Hi"}))
    ds = FilesAudioDataset(make_hps(data, labels=True, labels_v3=False, max_bow_genre_size=5, n_tokens=4))
    wav, y = ds[3]
    assert wav.shape == (SR, 2) and y.dtype == np.int64
    # v2 ids from tests/data/ids: someone_else 5, folk 3, rock 6; lyrics 'Hi' left-padded to 4 tokens.
    tokens = ds.labeller.text_processor.tokenise("Hi")
    assert y.tolist() == [CLIP_SAMPLES, 3 * SR, SR, 5, 3, 6, -1, -1, -1, 0, 0, *tokens]
    batch = collate([ds[0], ds[1]])
    assert isinstance(batch, tuple) and batch[0].shape == (2, SR, 2) and batch[1].shape == (2, 13)
    with pytest.raises(ValueError, match="max_bow_genre_size"):
        _ = FilesAudioDataset(make_hps(data, labels=True)).labeller


def test_train_test_split_and_loaders(monkeypatch):
    hps = make_hps(MUSIC, bs=4, train_test_split=0.9)
    dp = DataProcessor(hps)
    n = len(dp.dataset)
    train = {dp.train_dataset.start + i for i in range(len(dp.train_dataset))}
    test = {dp.test_dataset.start + i for i in range(len(dp.test_dataset))}
    assert len(train) == int(0.9 * n) and not train & test and train | test == set(range(n))
    assert dp.test_dataset.test and not dp.train_dataset.test
    assert set(hps.bandwidth) == {"l1", "l2", "spec"} and hps.bandwidth["l2"] > 0
    batch = next(iter(dp.train_loader))
    assert batch.shape == (4, SR, 2) and batch.dtype == torch.float32
    assert len(dp.train_loader) == len(dp.train_dataset) // 4  # drop_last
    first = list(dp.train_sampler)
    dp.set_epoch(1)
    assert sorted(list(dp.train_sampler)) == sorted(first) and list(dp.train_sampler) != first

    # Cached bandwidth: the second processor does not recompute it.
    monkeypatch.setattr(data_processor, "calculate_bandwidth", lambda *a, **k: pytest.fail("recomputed"))
    hps2 = make_hps(MUSIC, bs=4, train_test_split=0.9)
    DataProcessor(hps2)
    assert hps2.bandwidth == hps.bandwidth

    shrunk = DataProcessor(make_hps(MUSIC, bs=4, train_shrink_factor=0.5, test_shrink_factor=0.5))
    assert len(shrunk.train_dataset) == int(int(0.9 * n) * 0.5)
    assert len(shrunk.test_dataset) == int((n - int(0.9 * n)) * 0.5)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        DataProcessor(make_hps(MUSIC, bs=200))


def test_distributed_sampler_gives_ranks_different_data():
    dp = DataProcessor(make_hps(MUSIC, bs=2))
    shares = [list(DistributedSampler(dp.train_dataset, num_replicas=2, rank=r, shuffle=True, seed=0))
              for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == (len(dp.train_dataset) + 1) // 2
    assert set(shares[0]) | set(shares[1]) == set(range(len(dp.train_dataset)))
    overlap = set(shares[0]) & set(shares[1])
    assert len(overlap) <= len(dp.train_dataset) % 2  # only the padding item may repeat


def test_audio_preprocess_blends_stereo():
    x = torch.stack([torch.ones(2, 100), torch.zeros(2, 100)], dim=-1)  # left 1, right 0
    fixed = audio_preprocess(x, make_hps(MUSIC, aug_blend=False))
    assert fixed.shape == (2, 100, 1) and torch.all(fixed == 0.5)
    torch.manual_seed(0)
    blended = audio_preprocess(x, make_hps(MUSIC, aug_blend=True))
    assert blended.shape == (2, 100, 1)
    assert torch.all(blended[0] == blended[0, 0]) and blended[0, 0] != blended[1, 0]  # one mix per item


def _rank_main(rank: int, init_file: str, data: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = []
        for _ in range(2):  # the second pass takes the cache-hit paths (no scan, bandwidth broadcast)
            hps = make_hps(data, bs=2, prior=False)
            dp = DataProcessor(hps)
            results.append(dict(train=list(dp.train_sampler), bandwidth=hps.bandwidth))
        with open(f"{out}/rank_{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_share_caches_and_split_data(tmp_path):
    data = tmp_path / "data"
    for name in ("nebula.flac", "coherence.flac"):
        copy_clip(data, name)
    torch.multiprocessing.spawn(_rank_main, args=(str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    for run in (0, 1):
        a, b = ranks[0][run], ranks[1][run]
        assert not set(a["train"]) & set(b["train"]) and len(a["train"]) == len(b["train"]) == 7
        assert a["bandwidth"] == pytest.approx(b["bandwidth"], rel=1e-12)
    assert ranks[0][1]["bandwidth"] == pytest.approx(ranks[0][0]["bandwidth"], rel=1e-12)
    assert json.loads((data / ".jukebox_bandwidth.json").read_text())
