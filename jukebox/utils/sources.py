"""Where a checkpoint's weights come from, and which one to use.

A checkpoint reference (``restore_vqvae`` / ``restore_prior``, or ``--model``) is a local file, a local folder in
the transformers port's layout, an ``http(s)://`` URL, or a hub repository ``hf://owner/name[@revision]``.

The released models' parts are also on the hub, inside the port's checkpoints (``HUB_REPOS``). For them the
sources are tried in this order, each failure reported in one line before the next is tried:

1. the local cache: the original's file in ``$JUKEBOX_CACHE``, or the part's shards in the hub cache;
2. OpenAI's blob storage, then 3. the retired CDN (``jukebox.utils.remote.mirror_urls``);
4. the hub, through ``huggingface_hub`` (only the shards that hold the part are downloaded).

``weights_source`` ``"openai"`` or ``"hf"`` keeps only that source (its cache included). The artist/genre tables
come from the same place as the weights: the original's tables for OpenAI's files, the repository's
``artists.json``/``genres.json`` for the hub.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jukebox.data.artist_genre_processor import HUB_TABLES
from jukebox.utils.checkpoint import CheckpointError
from jukebox.utils.hub import HubRepo, MissingHubFile, hub_file, is_hub_uri, parse_hub_uri
from jukebox.utils.port_checkpoint import PortCheckpoint, is_port_folder, local_fetch, open_port_folder
from jukebox.utils.remote import DownloadError, cache_path, is_url, report_failure, resolve_path

__all__ = ["SOURCES", "HUB_REPOS", "Origin", "ANY_SOURCE", "check_source", "hub_repo_of", "model_origin",
           "hub_checkpoint", "locate_weights", "label_tables_source"]

SOURCES = ("openai", "hf")
# The released models whose parts the port's hub repositories hold (the 5b model without lyrics has none).
HUB_REPOS = {"1b_lyrics": "openai/jukebox-1b-lyrics", "5b_lyrics": "openai/jukebox-5b-lyrics"}


@dataclass(frozen=True)
class Origin:
    """Where a released model's part may also be found (its hub repository, '' for none) and which sources to use
    (``source``: None for all in order, else one of ``SOURCES``)."""

    hub_repo: str = ""
    source: str | None = None


ANY_SOURCE = Origin()  # no hub repository, every source


def check_source(source: str | None) -> str | None:
    """``source`` if it is one of ``SOURCES`` (or empty: every source in order), else a ValueError."""
    if not source:
        return None
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}: use {' or '.join(SOURCES)} (or leave it out to try "
                         "the cache, OpenAI's storage, then the Hugging Face hub)")
    return source


def hub_repo_of(model: str, source: str | None) -> str:
    """The hub repository of a released ``model`` ('' when it has none); with ``source='hf'`` a model without one
    is an error that says so."""
    repo = HUB_REPOS.get(model, "")
    if source == "hf" and not repo:
        on_hub = ", ".join(f"{name} ({repo})" for name, repo in HUB_REPOS.items())
        raise ValueError(f"model {model!r} has no repository on the Hugging Face hub (only {on_hub} do): use "
                         "the openai source, or leave the source out")
    return repo


def _hub_fetch(repo: HubRepo, local_only: bool):
    """``fetch`` for ``open_port_folder`` over a hub repo: a missing file (``local_only``: one not in the cache)
    is None, any other failure raises."""
    def fetch(name: str) -> Path | None:
        try:
            return hub_file(repo, name, local_only=local_only)
        except MissingHubFile:
            return None
        except DownloadError:
            if local_only:
                return None
            raise
    return fetch


def model_origin(name: str, ref: str, source: str | None) -> Origin:
    """The ``Origin`` of model ``name`` resolved to weights ``ref`` (see ``resolve_model``): a released model (no
    ``ref``) has its hub repository, with the sources ``source`` allows."""
    return Origin("" if ref else hub_repo_of(name, source), source)


def hub_checkpoint(repo: HubRepo, prefix: str = "", local_only: bool = False) -> PortCheckpoint:
    """The port checkpoint of hub ``repo``; with ``prefix`` the shards holding that part are fetched now, so a
    failed transfer shows here rather than half-way through restoring."""
    checkpoint = open_port_folder(_hub_fetch(repo, local_only), repo.uri)
    if prefix and not checkpoint.prefetch(prefix):
        raise CheckpointError(f"{repo.uri}: the checkpoint holds no tensor named {prefix}* (a checkpoint of "
                              "another model?)")
    return checkpoint


def locate_weights(ref: str, prefix: str, origin: Origin = ANY_SOURCE) -> str | PortCheckpoint:
    """A local checkpoint file (its path) or a port checkpoint holding the part ``prefix`` (``vqvae.``,
    ``priors.{i}.``) for the reference ``ref``.

    ``origin.hub_repo`` (a released model's repository) adds the hub as a source of ``ref``'s URL;
    ``origin.source`` keeps only one (see the module docstring). Raises ``DownloadError`` when every source
    failed, naming each.
    """
    hub_repo, source = origin.hub_repo, origin.source
    if is_hub_uri(ref):
        return hub_checkpoint(parse_hub_uri(ref), prefix)
    if not is_url(ref):
        path = resolve_path(ref)
        return open_port_folder(local_fetch(path), path) if os.path.isdir(path) else path
    if not hub_repo and source is None:
        return resolve_path(ref)
    return _locate_released(ref, prefix, hub_repo, source)


def _locate_released(url: str, prefix: str, hub_repo: str, source: str | None) -> str | PortCheckpoint:
    """The chain of the module docstring: the caches, then OpenAI's mirrors (``resolve_path``: local rank 0
    downloads, under a lock), then the hub."""
    use_openai, use_hub = source in (None, "openai"), source in (None, "hf") and bool(hub_repo)
    if use_openai and cache_path(url).is_file():
        return str(cache_path(url))
    if use_hub:
        try:
            return hub_checkpoint(HubRepo(hub_repo), prefix, local_only=True)
        except (DownloadError, CheckpointError):
            pass  # not (all) cached: fetched below, in its turn
    hub_uri = HubRepo(hub_repo).uri if use_hub else None
    failures = []
    if use_openai:
        try:
            return resolve_path(url, then=hub_uri)
        except DownloadError as e:
            failures.append(f"{e.url}: {e.reason}")
    if use_hub:
        try:
            return hub_checkpoint(HubRepo(hub_repo), prefix)
        except DownloadError as e:
            report_failure(hub_uri, e.reason, None)
            failures.append(f"{hub_uri}: {e.reason}")
    if not failures:
        raise DownloadError(url, f"no source left: the hub has no repository for it and the source is {source}")
    raise DownloadError(url, "every source failed: " + "; ".join(failures))


def label_tables_source(ref: str, origin: Origin = ANY_SOURCE) -> str | None:
    """Where the artist/genre tables of weights ``ref`` come from: the hub repository (``hf://...``) or a local
    port folder holding the hub's tables when the weights do, else None (the original's tables,
    ``artist_genre_processor``)."""
    if is_hub_uri(ref):
        return ref
    if origin.source == "hf" and origin.hub_repo:
        return HubRepo(origin.hub_repo).uri
    if ref and not is_url(ref) and is_port_folder(ref) and all((Path(ref) / name).is_file()
                                                                for name in HUB_TABLES.values()):
        return ref
    return None
