"""Fetch everything a model needs before sampling, check it, and say where it is (command line).

    python -m jukebox.download --model=1b_lyrics [--source=openai|hf]
    python -m jukebox.download --list

Each part (the VQ-VAE, each prior) is fetched from its sources in order, as sampling would
(``jukebox.utils.sources``), then the artist/genre tables of the same source. Every file is checked once it is
here: OpenAI's checkpoints must be complete torch files (their transfer was checked against the server's size;
no sha256 is published), hub files must have the size and sha256 the hub announces. ``--list`` shows what the
caches hold.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from jukebox.data.artist_genre_processor import HUB_TABLES, fetch_released_tables, hub_tables_dir, table_path
from jukebox.hparams import setup_hparams
from jukebox.make_models import model_sets, resolve_model
from jukebox.utils.cli import fire_command
from jukebox.utils.dist_utils import print_once
from jukebox.utils.hub import hub_cache_dir, hub_file_metadata, is_hub_uri, parse_hub_uri
from jukebox.utils.port_checkpoint import PortCheckpoint, is_legacy_torch_file
from jukebox.utils.remote import DownloadError, cache_dir, sha256_of
from jukebox.utils.sources import HUB_REPOS, Origin, check_source, label_tables_source, locate_weights, model_origin
from jukebox.utils.transformers_format import transformers_prefix

__all__ = ["run", "main"]

def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _check_hub_file(repo_uri: str, name: str, path: Path) -> str:
    """'ok (...)' when ``path`` has the size and sha256 the hub announces; raises naming the mismatch."""
    try:
        size, sha256 = hub_file_metadata(parse_hub_uri(repo_uri), name)
    except DownloadError as e:
        return f"not verified: the hub's metadata cannot be had ({e.reason})"
    local = path.stat().st_size
    if size is not None and local != size:
        raise DownloadError(f"{repo_uri}/{name}", f"{path} has {local} bytes, the hub announces {size}: delete it "
                                                  "and run this again")
    if sha256 is None:
        return "ok (size)"
    if sha256_of(path) != sha256:
        raise DownloadError(f"{repo_uri}/{name}", f"{path} does not have the sha256 the hub announces ({sha256}): "
                                                  "delete it and run this again")
    return "ok (size, sha256)"


def _check_torch_file(path: Path) -> str:
    """OpenAI's checkpoints: a zip archive must be complete; the released files (pre-1.6 torch format) had their
    size checked against the server's when they were downloaded."""
    if zipfile.is_zipfile(path):
        return "ok (complete archive)"
    if is_legacy_torch_file(path):
        return "ok (size checked against the server's when downloaded; no sha256 published)"
    raise DownloadError(str(path), "neither a complete torch zip archive nor a torch file of the old format "
                                   "(truncated or corrupt): delete it and run this again")


def _parts(name: str, ref: str) -> Iterator[tuple[str, str, str, bool | None]]:
    """(label, weights reference, port key prefix, labels_v3 or None when unlabelled) of each part of model
    ``name`` (every part's weights are ``ref`` when given)."""
    vqvae_set, *prior_sets = [setup_hparams(s, {}) for s in model_sets(name)]
    yield "vqvae", ref or vqvae_set.restore_vqvae, "vqvae.", None
    for level, hps in enumerate(prior_sets):
        yield (f"prior level {level}", ref or hps.restore_prior, transformers_prefix(level, len(prior_sets)),
               bool(hps.labels_v3) if hps.labels else None)


def _fetch_part(label: str, ref: str, prefix: str, origin: Origin, checked: dict[Path, str]) -> None:
    """Fetch one part, print a line per file; ``checked`` remembers each file's check (shards hold several parts)."""
    located = locate_weights(ref, prefix, origin)
    if isinstance(located, PortCheckpoint):
        for name, path in zip(located.shards_with(prefix), located.prefetch(prefix)):
            if path not in checked:
                checked[path] = _check_hub_file(located.where, name, path) if is_hub_uri(located.where) \
                    else "local folder"
            print_once(f"{label:14s} {path}  {_size(path.stat().st_size)}  {checked[path]}")
        return
    path = Path(located)
    if path not in checked:
        checked[path] = _check_torch_file(path)
    print_once(f"{label:14s} {path}  {_size(path.stat().st_size)}  {checked[path]}")


def _fetch_tables(versions: set[bool], ref: str, origin: Origin) -> None:
    """Fetch and check the artist/genre tables of weights ``ref`` (a released model's, or a hub repository's): the
    hub's where sampling would read those, else the original's of each vocabulary version in ``versions``."""
    hub = label_tables_source(ref, origin)
    if hub:
        folder = hub_tables_dir(hub)
        for name in HUB_TABLES.values():
            path = folder / name
            print_once(f"{'labels':14s} {path}  {_size(path.stat().st_size)}  {_check_hub_file(hub, name, path)}")
        return
    for v3 in sorted(versions):
        folder = fetch_released_tables(v3)
        for kind in ("artist", "genre"):
            path = table_path(folder, v3, kind)
            print_once(f"{'labels':14s} {path}  {_size(path.stat().st_size)}  ok")


def fetch_model(model: str, source: str | None = None) -> None:
    """Fetch and check every file ``model`` needs (see the module docstring), printing one line per file."""
    source = check_source(source)
    name, ref = resolve_model(model)
    origin = model_origin(name, ref, source)
    versions, checked = set(), {}
    for label, part_ref, prefix, v3 in _parts(name, ref):
        _fetch_part(label, part_ref, prefix, origin, checked)
        if v3 is not None:
            versions.add(v3)
    if versions and (not ref or is_hub_uri(ref)):
        _fetch_tables(versions, ref, origin)
    print_once(f"{model}: everything is here")


def list_cached() -> None:
    """What the jukebox cache and the hub cache hold for the released models, with sizes."""
    root = cache_dir()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".part"))) \
        if root.is_dir() else []
    partial = sorted(root.rglob("*.part")) if root.is_dir() else []
    print_once(f"{root}: {len(files)} files, {_size(sum(p.stat().st_size for p in files))}")
    for path in files:
        print_once(f"  {path.relative_to(root)}  {_size(path.stat().st_size)}")
    for path in partial:
        print_once(f"  {path.relative_to(root)}  {_size(path.stat().st_size)} (partial: resumed by the next download)")
    cache = hub_cache_dir()
    if not cache.is_dir():
        print_once(f"{cache}: empty")
        return
    from huggingface_hub import scan_cache_dir

    wanted = set(HUB_REPOS.values())
    repos = [r for r in scan_cache_dir(cache).repos if r.repo_id in wanted]
    print_once(f"{cache}: {len(repos)} of the released models' repositories")
    for repo in sorted(repos, key=lambda r: r.repo_id):
        print_once(f"  {repo.repo_id}  {_size(repo.size_on_disk)}")
        for revision in repo.revisions:
            for f in sorted(revision.files, key=lambda f: f.file_name):
                print_once(f"    {f.file_name}  {_size(f.size_on_disk)}  (revision {revision.commit_hash[:8]})")


def run(model: str = "", source: str | None = None, list: bool = False) -> None:  # noqa: A002 - the --list flag
    """``--model`` (and ``--source``): fetch and check that model; ``--list``: show the caches."""
    if list:
        list_cached()
        return
    if not model:
        raise ValueError("pass --model=NAME (e.g. --model=1b_lyrics, or hf://openai/jukebox-1b-lyrics), or --list")
    fetch_model(model, source)


def main(argv: list[str] | None = None) -> None:
    fire_command(run, argv, prog="python -m jukebox.download")


if __name__ == "__main__":
    main()
