"""The studio's projects on disk: one folder per project under the projects folder.

A project folder ``{root}/{project id}/`` holds

- ``project.json``: the project's settings and its tree of nodes (``nodes``: id -> node), and the node picked
  last (``current``). A node is a point of the song: the top-level codes from the start of the song to its end,
  made by extending its parent's codes (the root has none, or the codes of an audio prompt);
- ``nodes/{node id}.pt``: a node's top-level codes ``(1, T)``, ``nodes/{node id}.wav`` its preview (the codes
  decoded by the VQ-VAE) and, for lyric models, ``nodes/{node id}.align.json`` its lyric alignment;
- ``jobs/{job id}/``: the jobs run on the project (``job.json`` and the job's sampling folder).

Ids are made here (short lowercase hex) and checked against ``ID_PATTERN`` before they become paths, and every
path is resolved and checked to lie inside the projects folder, so no name a client sends can reach outside it.
Names are free text (shown as text), kept to one line and ``MAX_NAME`` characters. Every file is written
atomically, and the read-modify-write of ``project.json`` holds the store's lock.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from jukebox.utils.atomic import atomic_write
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["ProjectStore", "NotFound", "Conflict", "ID_PATTERN", "MAX_NAME", "MAX_TEXT", "new_id", "clean_name",
           "clean_text", "write_json", "read_json"]

ID_PATTERN = re.compile(r"[0-9a-f]{8,32}")
MAX_NAME = 200
MAX_TEXT = 20_000
PROJECT_FILE = "project.json"


class NotFound(LookupError):
    """A project, node, job or file that does not exist (HTTP 404)."""


class Conflict(RuntimeError):
    """A request that the project's present state forbids (HTTP 409)."""


def new_id() -> str:
    """A fresh id: 12 lowercase hex digits."""
    return secrets.token_hex(6)


def _strip_controls(text: str, keep: str = "") -> str:
    return "".join(c for c in text if c in keep or unicodedata.category(c)[0] != "C")


def clean_name(name: Any, what: str = "name") -> str:
    """A name as one line of text: control characters dropped, spaces collapsed; empty or too long is refused."""
    text = _strip_controls(" ".join(str(name or "").split()))
    if not text:
        raise ValueError(f"the {what} is empty; give it some text")
    if len(text) > MAX_NAME:
        raise ValueError(f"the {what} has {len(text)} characters; use at most {MAX_NAME}")
    return text


def clean_text(text: Any, what: str) -> str:
    """Free text (lyrics): control characters other than newlines and tabs dropped; too long is refused."""
    text = _strip_controls(str(text or "").replace("\r\n", "\n"), keep="\n\t")
    if len(text) > MAX_TEXT:
        raise ValueError(f"the {what} have {len(text)} characters; use at most {MAX_TEXT}")
    return text


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class ProjectStore:
    """The projects under ``root`` (created if missing); see the module docstring for the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # paths ---------------------------------------------------------------------------------------------------
    def inside(self, base: Path, *parts: str) -> Path:
        """``base/parts...`` resolved; refused unless it lies inside ``base`` (itself inside the projects folder)."""
        path = base.joinpath(*parts).resolve()
        if path != base and base not in path.parents or self.root not in (path, *path.parents):
            raise NotFound(f"{'/'.join(parts)!r} is not a file of this project")
        return path

    def folder(self, pid: str) -> Path:
        """The folder of project ``pid``; an id that is not one of ours, or a missing project, is NotFound."""
        if not isinstance(pid, str) or not ID_PATTERN.fullmatch(pid):
            raise NotFound(f"no project {pid!r}: project ids are the hex ids the studio gave them")
        path = self.inside(self.root, pid)
        if not (path / PROJECT_FILE).is_file():
            raise NotFound(f"no project {pid!r} in {self.root}")
        return path

    def job_folder(self, pid: str, jid: str) -> Path:
        if not ID_PATTERN.fullmatch(jid):
            raise NotFound(f"no job {jid!r}")
        return self.inside(self.folder(pid), "jobs", jid)

    # projects ------------------------------------------------------------------------------------------------
    def create(self, settings: dict) -> dict:
        """A new project with ``settings`` (name, model, labels, lengths...) and an empty root node."""
        pid, root = new_id(), new_id()
        now = time.time()
        project = dict(settings, id=pid, name=clean_name(settings.get("name"), "project name"), created=now,
                       current=root, nodes={root: self._node(root, None, 0, created=now)})
        folder = self.root / pid
        (folder / "nodes").mkdir(parents=True)
        self._save_codes(folder, root, torch.zeros(1, 0, dtype=torch.long))
        write_json(folder / PROJECT_FILE, project)
        return project

    def list(self) -> list[dict]:
        """Every project's summary (id, name, model, created, node count), newest first; unreadable ones skipped."""
        found = []
        for path in self.root.iterdir():
            if ID_PATTERN.fullmatch(path.name) and (path / PROJECT_FILE).is_file():
                try:
                    found.append(read_json(path / PROJECT_FILE))
                except (OSError, ValueError):
                    continue
        return sorted(found, key=lambda p: -p.get("created", 0))

    def load(self, pid: str) -> dict:
        return read_json(self.folder(pid) / PROJECT_FILE)

    @contextmanager
    def edit(self, pid: str) -> Iterator[dict]:
        """Load project ``pid`` under the store's lock; on a clean exit the changes are saved atomically."""
        with self.lock:
            folder = self.folder(pid)
            project = read_json(folder / PROJECT_FILE)
            yield project
            write_json(folder / PROJECT_FILE, project)

    def rename(self, pid: str, name: str) -> dict:
        with self.edit(pid) as project:
            project["name"] = clean_name(name, "project name")
        return project

    def delete(self, pid: str) -> None:
        with self.lock:
            shutil.rmtree(self.folder(pid))

    # nodes ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _node(nid: str, parent: str | None, length: int, **fields: Any) -> dict:
        return dict(id=nid, parent=parent, length=int(length), codes=f"nodes/{nid}.pt", preview=None,
                    alignment=None, seed=None, temperature=None, job=None, created=time.time()) | fields

    @staticmethod
    def node(project: dict, nid: str) -> dict:
        if not isinstance(nid, str) or nid not in project["nodes"]:
            raise NotFound(f"no node {nid!r} in project {project['id']!r}")
        return project["nodes"][nid]

    def _save_codes(self, folder: Path, nid: str, codes: torch.Tensor) -> None:
        save_checkpoint(folder / "nodes" / f"{nid}.pt", dict(z=codes.detach().long().cpu()))

    def codes(self, pid: str, nid: str) -> torch.Tensor:
        """The top-level codes ``(1, T)`` of node ``nid``."""
        project = self.load(pid)
        node = self.node(project, nid)
        return load_checkpoint(self.inside(self.folder(pid), node["codes"]))["z"]

    def add_node(self, project: dict, parent: str, codes: torch.Tensor, **fields: Any) -> dict:
        """Add a child of ``parent`` holding ``codes`` (1, T) to ``project`` (inside ``edit``)."""
        self.node(project, parent)
        nid = new_id()
        self._save_codes(self.folder(project["id"]), nid, codes)
        node = self._node(nid, parent, codes.shape[1], **fields)
        project["nodes"][nid] = node
        return node

    def subtree(self, project: dict, nid: str) -> list[str]:
        """``nid`` and all its descendants."""
        found, todo = [], [nid]
        while todo:
            current = todo.pop()
            found.append(current)
            todo.extend(n["id"] for n in project["nodes"].values() if n["parent"] == current)
        return found

    def path_to(self, project: dict, nid: str) -> list[str]:
        """The node ids from the root to ``nid``."""
        path = [nid]
        while project["nodes"][path[-1]]["parent"] is not None:
            path.append(project["nodes"][path[-1]]["parent"])
        return path[::-1]

    def delete_branch(self, project: dict, nid: str, busy: set[str]) -> list[str]:
        """Remove ``nid`` and its descendants (inside ``edit``); the root and nodes in ``busy`` jobs are refused."""
        node = self.node(project, nid)
        if node["parent"] is None:
            raise Conflict("the root node cannot be deleted; delete the project instead")
        doomed = self.subtree(project, nid)
        used = busy.intersection(doomed)
        if used:
            raise Conflict(f"node {sorted(used)[0]} is used by a job that has not finished; wait for it first")
        folder = self.folder(project["id"])
        for d in doomed:
            gone = project["nodes"].pop(d)
            for key in ("codes", "preview", "alignment"):
                if gone.get(key):
                    self.inside(folder, gone[key]).unlink(missing_ok=True)
        if project["current"] in doomed:
            project["current"] = node["parent"]
        return doomed
