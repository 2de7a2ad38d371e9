"""A checkpoint in the transformers port's layout, read one tensor at a time.

The port saves one flat state_dict for the whole model, split into shards: ``pytorch_model-0000k-of-0000n.bin``
(or ``model-...safetensors``) plus an index, ``pytorch_model.bin.index.json`` (``model.safetensors.index.json``),
whose ``weight_map`` says which shard holds each tensor. ``PortCheckpoint`` is that state_dict as a lazy mapping:
a tensor is looked up in the index, its shard is fetched and opened memory-mapped on first use, and nothing of
the other shards is touched. Restoring one part (the VQ-VAE, one prior) therefore fetches and pages in only the
shards and bytes of that part.

Shards are checked when they are opened: a ``.bin`` must be a complete zip archive (a truncated download loses the
archive's directory at its end) that torch reads; a ``.safetensors`` must cover every tensor its header lists.
A shard that fails is named in a ``CheckpointError`` and never loaded.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from jukebox.utils.checkpoint import CheckpointError
from jukebox.utils.cli import error_message

__all__ = ["INDEX_NAMES", "SINGLE_NAMES", "PortCheckpoint", "is_port_folder", "read_index", "open_port_folder",
           "open_port_file", "local_fetch", "is_legacy_torch_file"]

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


class PortCheckpoint(Mapping[str, torch.Tensor]):
    """The port's flat state_dict, read lazily: ``weight_map`` (key -> shard file name) says where each tensor is;
    ``fetch(name)`` gives a shard's local path (fetching it first if it is remote). ``opened`` lists the shards
    opened so far, in order; ``where`` names the checkpoint in messages."""

    def __init__(self, weight_map: Mapping[str, str], fetch: Callable[[str], Path], where: str) -> None:
        self.weight_map = dict(weight_map)
        self.where = where
        self.opened: list[str] = []
        self._fetch = fetch
        self._shards: dict[str, Mapping[str, torch.Tensor]] = {}
        self._paths: dict[str, Path] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._from_shard(key, lambda shard: shard[key])

    def shape(self, key: str) -> torch.Size:
        """The shape of tensor ``key`` without reading its data: from a ``.safetensors`` shard's header, or from a
        ``.bin`` shard's memory-mapped tensor (no page of it is touched). A ``.bin`` of torch's pre-1.6 format
        cannot be memory-mapped: it is read whole when first opened, shapes or tensors alike."""
        def shape(shard: Mapping[str, torch.Tensor]) -> torch.Size:
            return shard.shape(key) if isinstance(shard, _SafetensorsShard) else shard[key].shape
        return self._from_shard(key, shape)

    def _from_shard(self, key: str, read: Callable[[Mapping[str, torch.Tensor]], Any]) -> Any:
        """``read(shard)`` of the shard the index puts ``key`` in."""
        name = self.weight_map[key]
        try:
            return read(self._shard(name))
        except KeyError:
            raise CheckpointError(f"{self.where}: the index puts {key} in {name}, but that shard does not hold it "
                                  "(index and shards of different checkpoints?)") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)

    def __contains__(self, key: object) -> bool:
        return key in self.weight_map

    def shards_with(self, prefix: str) -> list[str]:
        """The shard files that hold a tensor whose name starts with ``prefix``, in order."""
        return sorted({name for key, name in self.weight_map.items() if key.startswith(prefix)})

    def prefetch(self, prefix: str) -> list[Path]:
        """The local paths of the shards holding ``prefix``, fetched now if they are remote (nothing is read)."""
        return [self._path(name) for name in self.shards_with(prefix)]

    def _path(self, name: str) -> Path:
        """The local path of shard ``name``, fetched once."""
        if name not in self._paths:
            self._paths[name] = self._fetch(name)
        return self._paths[name]

    def _shard(self, name: str) -> Mapping[str, torch.Tensor]:
        if name not in self._shards:
            self._shards[name] = _open_shard(self._path(name))
            self.opened.append(name)
        return self._shards[name]


class _SafetensorsShard(Mapping[str, torch.Tensor]):
    """A ``.safetensors`` shard whose tensors are read (memory-mapped) one at a time."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt", device="cpu")
        self._keys = list(self._file.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def shape(self, key: str) -> torch.Size:
        """A tensor's shape, from the header."""
        if key not in self._keys:
            raise KeyError(key)
        return torch.Size(self._file.get_slice(key).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _open_shard(path: Path) -> Mapping[str, torch.Tensor]:
    """A shard's tensors, memory-mapped; a truncated or corrupt shard is a ``CheckpointError`` naming it."""
    advice = "delete it and download it again"
    if path.suffix == ".safetensors":
        try:
            return _SafetensorsShard(path)
        except ImportError as e:
            raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from e
        except Exception as e:  # noqa: BLE001 - safetensors words a bad header or a short file its own way
            raise CheckpointError(f"shard {path} is truncated or corrupt ({error_message(e)}); {advice}") from None
    zipped = zipfile.is_zipfile(path)
    if not zipped and not is_legacy_torch_file(path):
        raise CheckpointError(f"shard {path} is truncated or corrupt (not a complete torch zip archive, "
                              f"{path.stat().st_size} bytes); {advice}")
    try:  # the old pickle-only format cannot be memory-mapped: it is read whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError:
        raise  # intact, but holds objects other than tensors: refused as such, not as damage
    except Exception as e:  # noqa: BLE001 - torch's reader raises RuntimeError/ValueError/EOFError on damage
        raise CheckpointError(f"shard {path} is truncated or corrupt ({error_message(e)}); {advice}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"shard {path} holds a {type(state).__name__}, expected a state_dict")
    return state


def is_legacy_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a file of ``torch.save``'s pre-1.6 format (a pickle, protocol 2)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x80\x02"


def is_port_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder saved in the port's layout (an index or a single weights file)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in INDEX_NAMES + SINGLE_NAMES)


def read_index(index_path: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index (key -> shard file name)."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path} is not a shard index (a JSON object with a weight_map): "
                              f"{error_message(e)}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and "/" not in v for v in weight_map.values()):
        raise CheckpointError(f"{index_path}: its weight_map must map tensor names to shard file names")
    return weight_map


def open_port_file(path: str | Path) -> PortCheckpoint:
    """One unsharded weights file (``.bin`` or ``.safetensors``) as a ``PortCheckpoint``."""
    path = Path(path)
    shard = _open_shard(path)
    checkpoint = PortCheckpoint({key: path.name for key in shard}, lambda name: path.parent / name, str(path))
    checkpoint._shards[path.name] = shard
    checkpoint.opened.append(path.name)
    return checkpoint


def open_port_folder(fetch: Callable[[str], Path | None], where: str) -> PortCheckpoint:
    """The checkpoint of a port-layout folder; ``fetch(name)`` gives the local path of one of its files, or None
    when the folder has no such file. The index is read if there is one, else the single weights file."""
    def shard(name: str) -> Path:
        local = fetch(name)
        if local is None:
            raise CheckpointError(f"{where}: shard {name}, listed in its index, is missing")
        return local

    for index_name in INDEX_NAMES:
        index_path = fetch(index_name)
        if index_path is not None:
            return PortCheckpoint(read_index(index_path), shard, where)
    for name in SINGLE_NAMES:
        path = fetch(name)
        if path is not None:
            return open_port_file(path)
    raise CheckpointError(f"{where} holds no {', '.join(INDEX_NAMES + SINGLE_NAMES)}: it is not a checkpoint "
                          "folder of the transformers port")


def local_fetch(folder: str | Path) -> Callable[[str], Path | None]:
    """``fetch`` for a local folder: the file's path if it exists."""
    folder = Path(folder)
    return lambda name: folder / name if (folder / name).is_file() else None
