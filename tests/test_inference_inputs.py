"""The built-in example lyrics: a data file in the package, loaded as the labels sample.py uses by default."""
from __future__ import annotations

import fnmatch
import json

import pytest

from conftest import REPO
from jukebox import sample
from jukebox.inference.inputs import EXAMPLE_METAS, load_example_metas, make_metas

FILE = REPO / "jukebox" / "data" / "example_metas.json"


def test_example_metas_file_is_what_sample_uses():
    with open(FILE, encoding="utf-8") as f:
        metas = json.load(f)
    assert load_example_metas() == metas == EXAMPLE_METAS == sample.EXAMPLE_METAS
    assert [(m["artist"], m["genre"]) for m in metas] == [
        ("Johnny Cash", "Country"), ("Nina Simone", "Soul"), ("Louis Armstrong", "Jazz"), ("The Beatles", "Pop")]
    assert [m["lyrics"].splitlines()[0] for m in metas] == [
        "I met a traveller from an antique land,", "Hope is the thing with feathers", "Tyger Tyger, burning bright,",
        "I wandered lonely as a cloud"]
    assert [len(m["lyrics"].splitlines()) for m in metas] == [14, 12, 8, 12]


def test_example_metas_are_the_default_labels():
    labels = make_metas(6, 1000)
    assert [m["artist"] for m in labels] == [EXAMPLE_METAS[i % 4]["artist"] for i in range(6)]
    assert labels[5]["lyrics"] == EXAMPLE_METAS[1]["lyrics"]
    assert all(m["total_length"] == 1000 and m["offset"] == 0 for m in labels)


def test_example_metas_file_is_installed_with_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["jukebox"]
    path = FILE.relative_to(REPO / "jukebox").as_posix()
    assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns)
