"""Labels, lyric text and artist/genre ids against reference/fixtures/labeller_text.pt."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import IDS_DIR, RELEASED_IDS_DIR, load_fixture, requires_released_ids
from jukebox.data.artist_genre_processor import ArtistGenreProcessor, write_id_tables
from jukebox.data.labels import EmptyLabeller, Labeller, get_relevant_lyric_tokens
from jukebox.data.text_processor import TextProcessor

CONFIGS = ["v2_5b", "v2_upsampler_level_1", "v3_1b_lyrics", "v2_small"]


@pytest.fixture(scope="module")
def ref():
    return load_fixture("labeller_text")


@pytest.fixture(scope="module")
def processors():
    return {v3: ArtistGenreProcessor(v3, RELEASED_IDS_DIR) for v3 in (False, True)}


def make_labeller(config: dict, ids_dir=IDS_DIR) -> Labeller:
    return Labeller(config["max_genre_words"], config["n_tokens"], config["sample_length"], v3=config["v3"],
                    ids_dir=ids_dir)


@requires_released_ids
@pytest.mark.parametrize("name", CONFIGS)
def test_labeller_matches_reference(ref, name):
    case = ref["labellers"][name]
    labeller = make_labeller(case["config"], RELEASED_IDS_DIR)
    assert labeller.label_shape == tuple(case["label_shape"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fourth meta's artist and genre are unknown on purpose
        labels = labeller.get_batch_labels(ref["metas"], device="cpu")
    assert labels["y"].dtype == torch.int64
    assert torch.equal(labels["y"], case["y"])
    assert labels["info"] == case["info"]
    for y, want in zip(labels["y"], case["describe_label"]):
        assert labeller.describe_label(y) == want
    for meta, y in zip(ref["metas"], case["y"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            label = labeller.get_label(**meta)
        assert label["y"].dtype == np.int64 and np.array_equal(label["y"], y.numpy())


def test_get_y_from_ids_and_set_y_lyric_tokens(ref):
    case = ref["labellers"]["v2_small"]
    labeller = make_labeller(case["config"])
    labels = labeller.get_batch_labels(ref["metas"][:3])
    want = case["y"][:3]
    for y in want.tolist():
        genre_ids = [g for g in y[4:9] if g >= 0]
        rebuilt = labeller.get_y_from_ids(y[3], genre_ids, y[9:], y[0], y[1])
        assert np.array_equal(rebuilt, np.array(y))
    # Move every item to a new offset and sample_length, then re-select the lyric window.
    ys = labels["y"].clone()
    ys[:, 1] = ys[:, 0] // 2
    ys[:, 2] = 65536
    indices = labeller.set_y_lyric_tokens(ys, labels)
    for row, info, idx in zip(ys.tolist(), labels["info"], indices):
        tokens, want_idx = get_relevant_lyric_tokens(info["full_tokens"], 24, row[0], row[1], row[2])
        assert idx == want_idx and row[9:] == tokens
        assert row[9:] == [info["full_tokens"][i] if i >= 0 else 0 for i in idx]
    assert indices[0][0] > 0, "the window of the long lyrics should have moved"
    assert indices[2][:14] == [-1] * 14 and indices[2][14:] == list(range(10))
    with pytest.raises(ValueError, match="expected 24 lyric tokens"):
        labeller.get_y_from_ids(1, [1], [1, 2], 100, 0)


def test_set_y_lyric_tokens_without_lyrics(ref):
    labeller = make_labeller(ref["labellers"]["v2_upsampler_level_1"]["config"])
    labels = labeller.get_batch_labels(ref["metas"][:2])
    ys = labels["y"].clone()
    assert labeller.set_y_lyric_tokens(ys, labels) is None
    assert torch.equal(ys, labels["y"])


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_text_processor(ref, version):
    case = ref["text"][version]
    tp = TextProcessor(v3=version == "v3")
    assert tp.n_vocab == case["n_vocab"]
    assert [[c, i] for c, i in tp.vocab.items()] == [list(entry) for entry in case["vocab"]]
    for item in case["items"]:
        clean = tp.clean(item["raw"])
        assert clean == item["clean"]
        tokens = tp.tokenise(clean)
        assert tokens == list(item["tokens"])
        assert tp.textise(tokens) == item["textise"]
        assert "".join(tp.characterise(tokens)) == item["textise"]
    assert tp.textise([0, 1, 0]) == "A"
    with pytest.raises(ValueError, match="clean"):
        tp.tokenise("é")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tp.textise([tp.n_vocab])


@requires_released_ids
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_artist_genre_lookups(ref, processors, version):
    case = ref["artist_genre"][version]
    ag = processors[version == "v3"]
    assert len(ag.artist_ids) == case["n_artist_lines"] and len(ag.genre_ids) == case["n_genre_lines"]
    assert max(ag.artists) == case["max_artist_id"] and max(ag.genres) == case["max_genre_id"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for given, normalised, artist_id in case["artists"]:
            assert ag.normalise(given) == normalised
            assert ag.get_artist_id(given) == artist_id, given
        for given, words, genre_ids in case["genres"]:
            assert ag.get_genre_ids(given) == list(genre_ids), given
            known = [w for w, i in zip(words, genre_ids) if i != 0]
            if len(known) == len(words):
                assert ag.get_genre(genre_ids) == "_".join(words)


@requires_released_ids
def test_celine_dion(processors):
    ag = processors[False]
    assert ag.normalise("Céline Dion") == "c_line_dion"
    assert ag.get_artist_id("Céline Dion") == 557
    assert ag.get_artist(557) == "c_line_dion"
    assert ag.get_artist(0) == "_unknown_various"  # names sharing an id are joined


def test_unknown_artist_warns_once_with_suggestion():
    ag = ArtistGenreProcessor(False, IDS_DIR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ag.get_artist_id("Johnny Cassh") == 0
        assert ag.get_artist_id("johnny cassh") == 0  # same normalised name: no second warning
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Johnny Cassh" in message and "johnny_cassh" in message and "'johnny_cash'" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ag.get_genre_ids("Countryy Rock") == [0, ag.genre_ids["rock"]]
    assert len(caught) == 1 and "countryy" in str(caught[0].message) and "'country'" in str(caught[0].message)


@pytest.mark.parametrize("case_index", range(5))
def test_lyric_windows(ref, case_index):
    case = ref["lyric_windows"][case_index]
    args = case["args"]
    tokens, indices = get_relevant_lyric_tokens(list(case["full_tokens"]), args["n_tokens"], args["total_length"],
                                                args["offset"], args["duration"])
    assert tokens == list(case["tokens"]) and indices == list(case["indices"])


def test_odd_n_tokens_rejected():
    with pytest.raises(ValueError, match="even"):
        Labeller(5, 511, 1048576, ids_dir=IDS_DIR)
    with pytest.raises(ValueError, match="even"):
        get_relevant_lyric_tokens(list(range(1, 100)), 9, 1000, 0, 100)


def test_too_many_genre_words():
    labeller = Labeller(1, 0, 1000, v3=False, ids_dir=IDS_DIR)
    with pytest.raises(ValueError, match="max_genre_words=1"):
        labeller.get_label("Alan Jackson", "Blues Rock", "", 10000, 0)


def test_missing_ids_dir_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        ArtistGenreProcessor(True, tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "v3_artist_ids.txt") in message and "JUKEBOX_IDS_DIR" in message
    monkeypatch.delenv("JUKEBOX_IDS_DIR", raising=False)
    monkeypatch.setenv("JUKEBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JUKEBOX_IDS_URL", "http://127.0.0.1:9/")  # nothing listens on the discard port
    with pytest.raises(FileNotFoundError, match="Downloading them failed") as err:
        Labeller(5, 0, 1000)
    assert str(tmp_path / "cache" / "ids" / "v2_artist_ids.txt") in str(err.value)
    monkeypatch.setenv("JUKEBOX_IDS_DIR", str(IDS_DIR))
    assert Labeller(5, 0, 1000).ag_processor.get_artist_id("Johnny Cash") == 1


@pytest.mark.parametrize("v3", [True, False])
def test_write_id_tables_for_own_dataset(tmp_path, v3):
    metas = [dict(artist="My Band", genre="Lo-Fi Jazz"), dict(artist="Other One", genre="Jazz"),
             dict(artist="My Band", genre="Ambient")]
    paths = write_id_tables(metas, tmp_path, v3=v3)
    assert paths["artist"].name == f"{'v3' if v3 else 'v2'}_artist_ids.txt"
    labeller = Labeller(1 if v3 else 3, 0, 1000, v3=v3, ids_dir=tmp_path)
    ag = labeller.ag_processor
    ids = [ag.get_artist_id(m["artist"]) for m in metas]
    assert ids[0] == ids[2] != ids[1] and 0 not in ids
    assert ag.get_artist(ids[0]) == ("my band" if v3 else "my_band")
    genre_ids = ag.get_genre_ids("Lo-Fi Jazz")
    assert 0 not in genre_ids and ag.get_genre(genre_ids) == ("lo-fi jazz" if v3 else "lo_fi_jazz")
    label = labeller.get_label("Other One", "Jazz", "", 10000, 0)
    assert labeller.describe_label(label["y"])["artist"] == ("other one" if v3 else "other_one")
    with pytest.raises(ValueError, match="'artist' and 'genre'"):
        write_id_tables([dict(artist="x")], tmp_path, v3=v3)


def test_empty_labeller():
    labeller = EmptyLabeller()
    assert labeller.label_shape == (0,)
    labels = labeller.get_batch_labels([dict(artist="a")] * 3)
    assert labels["y"].shape == (3, 0) and labels["y"].dtype == torch.int64 and len(labels["info"]) == 3
    assert labeller.get_label()["y"].shape == (0,)
    assert labeller.set_y_lyric_tokens(labels["y"], labels) is None


def test_released_tables_are_fetched_into_the_cache_when_no_ids_dir_is_given(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from jukebox.data.artist_genre_processor import ArtistGenreProcessor

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(IDS_DIR))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("JUKEBOX_IDS_DIR", raising=False)
        monkeypatch.setenv("JUKEBOX_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("JUKEBOX_IDS_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        processor = ArtistGenreProcessor(v3=True)
        assert processor.get_artist_id("unknown") == 0
        cached = tmp_path / "cache" / "ids" / "v3_artist_ids.txt"
        assert cached.read_bytes() == (IDS_DIR / "v3_artist_ids.txt").read_bytes()
    finally:
        server.shutdown()
