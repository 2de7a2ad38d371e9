"""Artist and genre id tables of the labelled priors.

A table is a text file with one ``name;id`` entry a line (UTF-8); several names may share an id
(``unknown``, ``various`` and ``''`` are all artist 0 in v2). The released tables belong to the released
weights: they live in ``$JUKEBOX_IDS_DIR``, or else in the cache beside the downloaded checkpoints
(``$JUKEBOX_CACHE/ids``, by default ``~/.cache/jukebox/ids``). Models trained on your own data carry
their own tables, written from the dataset's metadata by ``write_id_tables``.

v2 tables (5b, 5b_lyrics) hold normalised names (``norm``) and genres are a bag of words;
v3 tables (1b_lyrics) hold lowercased names and a genre is one id.

The hub's repositories of the released models (the transformers port) carry the same tables in another layout:
``artists.json`` and ``genres.json``, each one JSON object name -> id holding both versions, the v2 names with a
``.v2`` suffix. An ``ids_dir`` holding those (or ``hf://owner/name[@revision]``, whose two files are fetched
into the hub cache) is read the same way and gives the same ids.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

from jukebox.utils.atomic import atomic_write
from jukebox.utils.dist_utils import print_all
from jukebox.utils.hub import HubRepo, is_hub_uri
from jukebox.utils.remote import DownloadError, cache_dir, fetch_to

# The released tables are part of the original repository, not of the weights' storage.
RELEASED_IDS_URL = "https://raw.githubusercontent.com/openai/jukebox/master/jukebox/data/ids/"
HUB_TABLES = {"artist": "artists.json", "genre": "genres.json"}
_V2_SUFFIX = ".v2"

_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_UNDERSCORES = re.compile(r"_+")


def norm(name: str) -> str:
    """v2 normalisation: lowercase, every character outside a-z/0-9 becomes '_', runs collapsed, ends stripped."""
    return _UNDERSCORES.sub("_", _NOT_ALNUM.sub("_", name.lower())).strip("_")


def default_ids_dir() -> Path:
    """``$JUKEBOX_IDS_DIR`` if set, else ``$JUKEBOX_CACHE/ids`` (``JUKEBOX_CACHE`` defaults to ~/.cache/jukebox)."""
    if os.environ.get("JUKEBOX_IDS_DIR"):
        return Path(os.environ["JUKEBOX_IDS_DIR"]).expanduser()
    return cache_dir() / "ids"


def fetch_released_tables(v3: bool, ids_dir: str | os.PathLike | None = None) -> Path:
    """Download the released models' artist/genre tables of one vocabulary version into ``ids_dir``
    (default ``default_ids_dir()``) unless they are there already; ``$JUKEBOX_IDS_URL`` replaces the
    source folder (a mirror or a local server). Returns the folder."""
    ids_dir = Path(ids_dir) if ids_dir is not None else default_ids_dir()
    base = os.environ.get("JUKEBOX_IDS_URL", RELEASED_IDS_URL).rstrip("/") + "/"
    for kind in ("artist", "genre"):
        path = table_path(ids_dir, v3, kind)
        if not path.is_file():
            fetch_to(base + path.name, path)
    return ids_dir


def table_path(ids_dir: str | os.PathLike, v3: bool, kind: str) -> Path:
    """Path of the ``artist`` or ``genre`` table of a vocabulary version."""
    return Path(ids_dir) / f"{'v3' if v3 else 'v2'}_{kind}_ids.txt"


def read_id_table(path: Path) -> dict[str, int]:
    """name (lowercased) -> id. A name listed twice keeps its last id."""
    ids = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            name, sep, idx = line.rstrip("\r\n").rpartition(";")
            if not sep or not idx.strip().lstrip("-").isdigit():
                raise ValueError(f"{path}:{n}: expected a 'name;id' line, got {line!r}")
            ids[name.lower()] = int(idx)
    return ids


def read_hub_table(path: Path, v3: bool) -> dict[str, int]:
    """name (lowercased) -> id of one version out of a hub table (``artists.json`` / ``genres.json``)."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a JSON table of names to ids: {e}") from None
    if not isinstance(table, dict) or not all(isinstance(i, int) for i in table.values()):
        raise ValueError(f"{path} must hold one JSON object mapping names to integer ids")
    if v3:
        return {name.lower(): idx for name, idx in table.items() if not name.endswith(_V2_SUFFIX)}
    return {name[:-len(_V2_SUFFIX)].lower(): idx for name, idx in table.items() if name.endswith(_V2_SUFFIX)}


def hub_tables_dir(repo_uri: str) -> Path:
    """The local folder (in the hub cache) holding the hub tables of ``hf://owner/name[@revision]``."""
    from jukebox.utils.hub import hub_file, parse_hub_uri

    repo = parse_hub_uri(repo_uri)
    paths = [hub_file(repo, name) for name in HUB_TABLES.values()]
    return paths[0].parent


def reverse_table(ids: Mapping[str, int]) -> dict[int, str]:
    """id -> name; names sharing an id are sorted and joined with '_' (v2 artist 0 is '_unknown_various')."""
    names: dict[int, list[str]] = {}
    for name, idx in ids.items():
        names.setdefault(idx, []).append(name)
    return {idx: "_".join(sorted(group)) for idx, group in names.items()}


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_id_tables(metadata: Iterable[Mapping[str, str]], out_dir: str | os.PathLike,
                    v3: bool = True) -> dict[str, Path]:
    """Write artist and genre tables for your own dataset, in the format ``ArtistGenreProcessor`` reads.

    metadata: items with 'artist' and 'genre' entries (e.g. one per training file). Id 0 is 'unknown';
    the other names get ids 1.. in sorted order. With v3=False names are normalised as v2 does and each
    genre contributes its words. Point ``ids_dir`` (or ``$JUKEBOX_IDS_DIR``) at ``out_dir`` to use them.
    Returns {'artist': path, 'genre': path}.
    """
    artists, genres = set(), set()
    for i, meta in enumerate(metadata):
        if "artist" not in meta or "genre" not in meta:
            raise ValueError(f"metadata item {i} needs 'artist' and 'genre' entries, got keys {sorted(meta)}")
        if v3:
            artists.add(meta["artist"].lower())
            genres.add(meta["genre"].lower())
        else:
            artists.add(norm(meta["artist"]))
            genres.update(norm(meta["genre"]).split("_"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, names in (("artist", artists), ("genre", genres)):
        names = sorted(names - {"unknown"})
        bad = [name for name in names if "\n" in name or "\r" in name]
        if bad:
            raise ValueError(f"{kind} names cannot contain line breaks: {bad}")
        lines = ["unknown;0"] + [f"{name};{i}" for i, name in enumerate(names, 1)]
        paths[kind] = table_path(out_dir, v3, kind)
        _write_atomic(paths[kind], "\n".join(lines) + "\n")
    return paths


class ArtistGenreProcessor:
    """Maps artist and genre names to the ids of a labelled prior, and back.

    ids_dir: folder holding ``{v2,v3}_artist_ids.txt`` and ``{v2,v3}_genre_ids.txt`` (or the hub's
    ``artists.json`` and ``genres.json``), or ``hf://owner/name[@revision]``; see ``default_ids_dir``.
    hub_repo: a hub repository (``owner/name``) whose tables are read instead when neither ``ids_dir`` nor
    ``$JUKEBOX_IDS_DIR`` is given and the released tables cannot be had.
    Names missing from a table map to id 0 (unknown) with one warning per name.
    """

    def __init__(self, v3: bool = False, ids_dir: str | os.PathLike | None = None, hub_repo: str = "") -> None:
        self.v3 = v3
        released = ids_dir is None and not os.environ.get("JUKEBOX_IDS_DIR")
        try:
            self._load(ids_dir, released)
        except FileNotFoundError as e:
            if not (released and hub_repo):
                raise
            hub = HubRepo(hub_repo).uri
            print_all(f"labels: the original's artist/genre tables failed: {e}; trying {hub}")
            self._load(hub, False)
        self.artists = reverse_table(self.artist_ids)
        self.genres = reverse_table(self.genre_ids)
        self._warned: set[tuple[str, str]] = set()

    def _load(self, ids_dir: str | os.PathLike | None, released: bool) -> None:
        """Read both tables from ``ids_dir`` (``released``: the released ones, downloaded first if need be)."""
        fetch_problem = ""
        if is_hub_uri(ids_dir):
            ids_dir = hub_tables_dir(ids_dir)
        elif released:
            try:  # the released tables, cached beside the downloaded weights
                fetch_released_tables(self.v3)
            except DownloadError as e:
                fetch_problem = f" Downloading them failed: {e}."
        self.ids_dir = Path(ids_dir) if ids_dir is not None else default_ids_dir()
        self.artist_id_file, self.artist_ids = self._read(self.ids_dir, "artist", fetch_problem)
        self.genre_id_file, self.genre_ids = self._read(self.ids_dir, "genre", fetch_problem)

    def _read(self, ids_dir: Path, kind: str, fetch_problem: str) -> tuple[Path, dict[str, int]]:
        """(path, name -> id) of one table, from the original's layout or else the hub's."""
        path = table_path(ids_dir, self.v3, kind)
        if path.is_file():
            return path, read_id_table(path)
        hub_path = ids_dir / HUB_TABLES[kind]
        if hub_path.is_file():
            return hub_path, read_hub_table(hub_path, self.v3)
        raise FileNotFoundError(
            f"{kind} id table not found: neither {path} nor {hub_path} exists. "
            f"The released tables are downloaded into {default_ids_dir()} when no ids_dir is given; "
            "otherwise set JUKEBOX_IDS_DIR (or pass ids_dir) to a folder holding "
            f"{table_path(ids_dir, self.v3, 'artist').name} and {table_path(ids_dir, self.v3, 'genre').name} "
            f"(or the hub's {' and '.join(HUB_TABLES.values())}). "
            "For your own dataset, write them with jukebox.data.artist_genre_processor.write_id_tables."
            + fetch_problem
        )

    def normalise(self, name: str) -> str:
        return name.lower() if self.v3 else norm(name)

    def _lookup(self, kind: str, key: str, given: str, table: dict[str, int], path: Path) -> int:
        if key in table:
            return table[key]
        if (kind, key) not in self._warned:
            self._warned.add((kind, key))
            close = difflib.get_close_matches(key, table.keys(), n=3)
            hint = f" Close matches: {', '.join(map(repr, close))}." if close else ""
            warnings.warn(
                f"{kind} {given!r} (looked up as {key!r}) is not in {path}; using id 0 (unknown).{hint}",
                stacklevel=3,
            )
        return 0

    def get_artist_id(self, artist: str) -> int:
        return self._lookup("artist", self.normalise(artist), artist, self.artist_ids, self.artist_id_file)

    def get_genre_ids(self, genre: str) -> list[int]:
        """v3: one id for the whole genre; v2: one id per word of the normalised genre."""
        words = [genre.lower()] if self.v3 else norm(genre).split("_")
        ids = []
        for word in words:
            ids.append(self._lookup("genre", word, genre, self.genre_ids, self.genre_id_file))
        return ids

    def get_artist(self, artist_id: int) -> str:
        artist_id = int(artist_id)
        if artist_id not in self.artists:
            raise ValueError(f"artist id {artist_id} is not in {self.artist_id_file}")
        return self.artists[artist_id]

    def get_genre(self, genre_ids) -> str:
        """Name of a genre from its ids; -1 entries (padding) are skipped, v2 words are joined with '_'."""
        ids = [int(i) for i in genre_ids if int(i) >= 0]
        if self.v3 and len(ids) != 1:
            raise ValueError(f"a v3 genre is exactly one id, got {list(genre_ids)}")
        unknown = [i for i in ids if i not in self.genres]
        if unknown:
            raise ValueError(f"genre ids {unknown} are not in {self.genre_id_file}")
        return "_".join(self.genres[i] for i in ids)
