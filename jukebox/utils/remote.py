"""Fetching released weights: a resumable, size- and checksum-checked HTTP download into a cache.

``resolve_path`` is the entry point: a local path comes back unchanged, an ``http(s)://`` URL is
downloaded once into ``cache_dir()`` (``$JUKEBOX_CACHE``, default ``~/.cache/jukebox``) and its
cached path is returned. Transfers go to ``<dest>.part`` and resume from there with an HTTP Range
request, so an interrupted multi-gigabyte download continues where it stopped instead of restarting.
Only the standard library's urllib is used for the network.
"""
from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from jukebox.utils import dist_utils

__all__ = ["DownloadError", "cache_dir", "cache_path", "mirror_urls", "download", "resolve_path", "is_url",
           "report_failure"]

RETIRED_HOST = "https://openaipublic.azureedge.net/"
MIRROR_HOST = "https://openaipublic.blob.core.windows.net/"
_OPENAI_NETLOCS = {urlsplit(RETIRED_HOST).netloc, urlsplit(MIRROR_HOST).netloc}
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A file could not be downloaded; ``url`` and ``reason`` say which and why."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"could not download {url}: {reason}. If this keeps failing, download the file "
                         f"manually (e.g. `wget -c {url}`) and pass its local path instead of the URL.")


class _Transient(Exception):
    """A failure worth retrying (connection dropped, transfer cut short, server error)."""


def is_url(path_or_url: str | os.PathLike) -> bool:
    return str(path_or_url).startswith(("http://", "https://"))


def cache_dir() -> Path:
    """Where downloaded weights live: ``$JUKEBOX_CACHE`` or ``~/.cache/jukebox``."""
    return Path(os.environ.get("JUKEBOX_CACHE") or "~/.cache/jukebox").expanduser()


def mirror_urls(url: str) -> list[str]:
    """URLs to try in order for ``url``: the original's retired CDN host maps to its blob-storage mirror
    first, with the CDN itself as the fallback; any other URL is tried as is."""
    if url.startswith(RETIRED_HOST):
        return [MIRROR_HOST + url[len(RETIRED_HOST):], url]
    return [url]


def cache_path(url: str) -> Path:
    """Local file for ``url`` under ``cache_dir()``, mirroring the URL path.

    OpenAI's released files (``.../jukebox/models/5b/vqvae.pth.tar``) land where the original put them,
    ``~/.cache/jukebox/models/5b/vqvae.pth.tar``; files from other servers go under a folder named
    after the host so equal paths on different servers do not collide.
    """
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if not segments or any(s in (".", "..") for s in segments):
        raise ValueError(f"URL {url!r} does not name a file (its path must be non-empty and without '.'/'..')")
    if parts.netloc in _OPENAI_NETLOCS:
        if segments[0] == "jukebox":
            segments = segments[1:]
    else:
        segments = [parts.netloc.replace(":", "_")] + segments
    return cache_dir().joinpath(*segments)


def _content_total(response: http.client.HTTPResponse, offset: int, url: str) -> int | None:
    """Full size of the remote file from a 206's Content-Range or a 200's Content-Length."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None:
            raise DownloadError(url, f"server sent an unparseable Content-Range "
                                     f"{response.headers.get('Content-Range')!r}")
        if int(match.group(1)) != offset:
            raise _Transient(f"server resumed at byte {match.group(1)} instead of {offset}; restarting")
        return None if match.group(3) == "*" else int(match.group(3))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() else None


def _fetch(url: str, part: Path, expected_size: int | None, show_progress: bool, timeout_s: float) -> None:
    """One request: append to ``part`` from its current size (or rewrite it when the server ignores
    Range). Returns when the part holds the whole file; raises ``_Transient`` when it does not yet."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "jukebox-downloader", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # Nothing left past `offset`: complete if the server's total agrees, otherwise start over.
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
            raise _Transient(f"server refused to resume at byte {offset}; restarting from scratch") from e
        if e.code >= 500 or e.code == 429:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(url, f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(f"network unreachable or connection failed ({reason})") from e

    with response:
        try:
            total = _content_total(response, offset, url)
        except _Transient:
            part.unlink()
            raise
        if response.status != 206:
            offset = 0  # the server ignored Range (or there was none): it sends the whole file
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise DownloadError(url, f"size mismatch: server reports {total} bytes, expected {expected_size}")
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[:-len(".part")], disable=not show_progress) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"connection lost after {f.tell()} bytes ({e!r})") from e
            size = f.tell()
    if total is not None and size < total:
        raise _Transient(f"transfer truncated: got {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(url, f"size mismatch: received {size} bytes, server announced {total}")


def download(url: str, dest_path: str | os.PathLike, expected_size: int | None = None,
             sha256: str | None = None, progress: bool = True, retries: int = 3,
             backoff_s: float = 1.0, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest_path``, resuming a previous ``<dest>.part`` if there is one.

    Connection failures and cut-short transfers are retried ``retries`` times (resuming each time,
    waiting ``backoff_s * 2**attempt`` seconds). The file appears at ``dest_path`` only once complete
    and checked against the announced size, ``expected_size`` and ``sha256`` (hex). A transfer that
    keeps failing leaves its ``.part`` behind so the next call continues it. Raises ``DownloadError``.
    """
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    show_progress = progress and sys.stderr.isatty()
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, expected_size, show_progress, timeout_s)
            break
        except _Transient as e:
            if attempt == retries:
                kept = f"; the next call resumes from {part}" if part.exists() else ""
                raise DownloadError(url, f"{e} (gave up after {retries} retries{kept})") from e
            time.sleep(backoff_s * 2 ** attempt)

    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(url, f"size mismatch: got {size} bytes, expected {expected_size}")
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256.lower():
            part.unlink()
            raise DownloadError(url, f"checksum mismatch: sha256 is {digest}, expected {sha256.lower()}")
    os.replace(part, dest)
    return dest


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def report_failure(where: str, reason: str, next_source: str | None) -> None:
    """One line saying that source ``where`` failed and why, and which one is tried next."""
    then = f"; trying {next_source}" if next_source else ""
    dist_utils.print_all(f"weights: {where} failed: {reason}{then}")


def fetch_to(url: str, dest: Path, then: str | None = None) -> None:
    """Fetch ``url`` into ``dest`` from the first of its mirrors that works, holding a lock file so
    concurrent processes (or nodes sharing a file system) do not write the same ``.part``. Each failed
    mirror is reported in one line naming the next one (``then`` after the last: the caller's next source)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            return
        errors = []
        candidates = mirror_urls(url)
        for i, candidate in enumerate(candidates):
            dist_utils.print_all(f"Downloading {candidate} to {dest}")
            try:
                download(candidate, dest)
                return
            except DownloadError as e:
                errors.append(e)
                report_failure(candidate, e.reason, candidates[i + 1] if i + 1 < len(candidates) else then)
        if len(errors) == 1:
            raise errors[0]
        raise DownloadError(url, "every mirror failed: " + "; ".join(f"{e.url}: {e.reason}" for e in errors))


def _local_rank() -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return dist_utils.get_rank()


def resolve_path(path_or_url: str | os.PathLike, then: str | None = None) -> str:
    """A local file path for ``path_or_url``: a local path is checked and returned as is; an
    ``http(s)://`` URL is downloaded into ``cache_path(url)`` unless already there (``then``: the source the
    caller tries next if this fails, named in the failure's line).

    In a distributed run local rank 0 of each node downloads while the other ranks wait; every rank
    returns the same path, or every rank raises if the download failed.
    """
    if not is_url(path_or_url):
        path = Path(path_or_url).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: pass an existing local file or an http(s):// URL")
        return str(path)

    url = str(path_or_url)
    dest = cache_path(url)
    if not dist_utils.is_distributed():
        if not dest.exists():
            fetch_to(url, dest, then)
        return str(dest)

    errors: list[Exception] = []

    def work() -> None:
        try:
            fetch_to(url, dest, then)
        except Exception as e:  # handed to the main thread and re-raised there
            errors.append(e)

    worker = None
    if _local_rank() == 0 and not dest.exists():
        worker = threading.Thread(target=work, name="jukebox-download", daemon=True)
        worker.start()
    # Wait in lock-step polls rather than one barrier: a multi-gigabyte download outlasts the process
    # group's collective timeout.
    while dist_utils.allreduce(float(worker is not None and worker.is_alive()), op="max"):
        if worker is not None:
            worker.join(timeout=1.0)
        else:
            time.sleep(1.0)
    failed_somewhere = dist_utils.allreduce(float(bool(errors)), op="max")
    if errors:
        raise errors[0]
    if failed_somewhere:
        raise DownloadError(url, "the download failed on another rank (see its error message)")
    return str(dest)
