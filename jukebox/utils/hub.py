"""The Hugging Face hub as a source of weights: ``hf://owner/name[@revision]`` references and the files behind them.

Everything goes through ``huggingface_hub``: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), its transfers (a dropped
connection is resumed with a Range request, the size is checked against the hub's metadata before the file
appears in the cache), ``HF_ENDPOINT`` mirrors, tokens (``HF_TOKEN`` or ``hf auth login``) and ``HF_HUB_OFFLINE``.
The environment is read on every call (huggingface_hub reads it once, at import), so a mirror or cache chosen
after start-up is honoured. Every failure is a ``DownloadError`` whose reason is one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from jukebox.utils.cli import error_message
from jukebox.utils.remote import DownloadError

__all__ = ["HUB_SCHEME", "HubRepo", "MissingHubFile", "is_hub_uri", "parse_hub_uri", "hub_file", "hub_file_metadata",
           "hub_cache_dir"]

HUB_SCHEME = "hf://"


class MissingHubFile(DownloadError):
    """The repository has no such file (as the hub says, or as its cache remembers the hub saying)."""


@dataclass(frozen=True)
class HubRepo:
    """A model repository on the hub at one revision (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        return HUB_SCHEME + self.repo_id + (f"@{self.revision}" if self.revision else "")

    def url(self, filename: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, filename, revision=self.revision, endpoint=_endpoint())


def is_hub_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HUB_SCHEME)


def parse_hub_uri(uri: str) -> HubRepo:
    """``hf://owner/name[@revision]`` as a ``HubRepo``; anything else (a dataset, a path inside the repo) is a
    ValueError saying what is expected."""
    from huggingface_hub import parse_hf_uri

    try:
        parsed = parse_hf_uri(uri)
    except ValueError as e:
        raise ValueError(f"{uri!r} is not a hub reference: {error_message(e)}; expected hf://owner/name or "
                         "hf://owner/name@revision (e.g. hf://openai/jukebox-1b-lyrics)") from None
    if parsed.type != "model" or parsed.path_in_repo:
        raise ValueError(f"{uri!r} must name a model repository, without a path inside it: hf://owner/name"
                         "[@revision] (e.g. hf://openai/jukebox-1b-lyrics)")
    return HubRepo(parsed.id, parsed.revision)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def hub_cache_dir() -> Path:
    """The hub cache as the environment says now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _reason(e: Exception, filename: str) -> str:
    """One line saying why a hub request failed, with what to do where there is something to do."""
    from huggingface_hub import errors

    if isinstance(e, errors.GatedRepoError):
        return "the repository is gated: accept its terms on the hub and set HF_TOKEN"
    if isinstance(e, errors.RepositoryNotFoundError):
        return "no such repository (or it is private: set HF_TOKEN)"
    if isinstance(e, errors.RevisionNotFoundError):
        return "no such revision in the repository"
    if isinstance(e, errors.RemoteEntryNotFoundError):
        return f"the repository has no file {filename}"
    if isinstance(e, errors.LocalEntryNotFoundError):
        return "not in the hub cache, and the hub cannot be reached (or HF_HUB_OFFLINE is set)"
    return error_message(e)


def hub_file(repo: HubRepo, filename: str, local_only: bool = False) -> Path:
    """The local path of ``filename`` of ``repo``, downloaded into the hub cache unless it is there already
    (``local_only``: only the cache is looked at). Raises ``MissingHubFile`` when the repository has no such
    file, ``DownloadError`` for any other failure."""
    from huggingface_hub import _CACHED_NO_EXIST, errors, hf_hub_download, try_to_load_from_cache

    if local_only:
        cached = try_to_load_from_cache(repo.repo_id, filename, cache_dir=hub_cache_dir(), revision=repo.revision)
        if cached is _CACHED_NO_EXIST:
            raise MissingHubFile(repo.url(filename), f"the repository has no file {filename}")
        if cached is None:
            raise DownloadError(repo.url(filename), "not in the hub cache")
        return Path(cached)
    try:
        return Path(hf_hub_download(repo.repo_id, filename, revision=repo.revision, cache_dir=hub_cache_dir(),
                                    endpoint=_endpoint()))
    except errors.RemoteEntryNotFoundError as e:
        raise MissingHubFile(repo.url(filename), _reason(e, filename)) from e
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises HTTP, OS and its own errors; all end the same way
        raise DownloadError(repo.url(filename), _reason(e, filename)) from e


def hub_file_metadata(repo: HubRepo, filename: str) -> tuple[int | None, str | None]:
    """(size in bytes, sha256 hex or None) of ``filename`` as the hub announces it. The sha256 is known for files
    stored with Git LFS (the weights), whose ETag is their sha256."""
    from huggingface_hub import get_hf_file_metadata

    try:
        meta = get_hf_file_metadata(repo.url(filename))
    except Exception as e:  # noqa: BLE001 - see hub_file
        raise DownloadError(repo.url(filename), _reason(e, filename)) from e
    etag = (meta.etag or "").strip('"').lower()
    sha256 = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
    return meta.size, sha256
