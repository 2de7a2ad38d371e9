"""The studio's background worker: the jobs of every project, one at a time, on the studio's one device.

A job is a folder ``{project}/jobs/{job id}/`` with ``job.json`` (kind, node, parameters, status, progress, ETA,
error, result) and the sampling session it runs. Kinds:

- ``continue``: K continuations of a node at the top level, added as its children with their previews;
- ``decode``: previews of nodes that have none (trimmed or imported nodes);
- ``prime``: the codes of an audio prompt (decoded when it was uploaded), added as a child of the root;
- ``upsample``: the upsamplers over a node's codes, window by window, into sample.py's outputs.

Jobs the user waits for (all but ``upsample``) go first; a running upsampling gives way to them after its next
saved window and continues afterwards from its progress file. Jobs left unfinished by a crash or a restart are
queued again when the worker starts; their sampling sessions resume from the last saved window, so the codes equal
those of an uninterrupted run. A failed job keeps its error for the page; nothing made before is touched.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jukebox.studio.composer import Composer, model_facts
from jukebox.studio.projects import NotFound, ProjectStore, new_id, read_json, write_json
from jukebox.utils.atomic import atomic_write, remove_stale_temporaries
from jukebox.utils.checkpoint import load_checkpoint
from jukebox.utils.cli import error_message
from jukebox.utils.dist_utils import print_once
from jukebox.utils.io import save_wav

__all__ = ["Worker", "KINDS", "FINISHED", "JOB_FILE"]

KINDS = ("continue", "decode", "prime", "upsample")
FINISHED = ("done", "failed")
JOB_FILE = "job.json"
# The bottom level's outputs of an upsampling job that the page offers for download.
RESULT_FILES = ("item_0.wav", "data.pth.tar", "index.html")


def _copy_atomic(source: Path, target: Path) -> None:
    with open(source, "rb") as src, atomic_write(target) as dst:
        shutil.copyfileobj(src, dst)


class _GiveWay(Exception):
    """Raised after a saved window of an upsampling job when a job the user waits for is queued."""


class Worker:
    """Runs the jobs of ``store``'s projects with ``composer``, in one background thread."""

    def __init__(self, store: ProjectStore, composer: Composer) -> None:
        self.store, self.composer = store, composer
        self.queue: list[tuple[str, str]] = []
        self.cond = threading.Condition()
        self.running: tuple[str, str] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None

    # the queue -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Queue the jobs left unfinished (oldest first), remove what a kill left half-written, start the thread."""
        self.queue, self._stop, unfinished = [], False, []
        for project in self.store.list():
            folder = self.store.folder(project["id"])
            jobs_dir = folder / "jobs"
            for partial in (folder, folder / "nodes", *jobs_dir.glob("*")):  # what a kill left half-written
                if partial.is_dir():
                    remove_stale_temporaries(partial)
            for job_file in jobs_dir.glob(f"*/{JOB_FILE}") if jobs_dir.is_dir() else []:
                job = read_json(job_file)
                if job["status"] not in FINISHED:
                    unfinished.append(job)
        for job in sorted(unfinished, key=lambda j: j["created"]):
            self.queue.append((job["project"], job["id"]))
        self._thread = threading.Thread(target=self._loop, name="studio-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, pid: str, kind: str, node: str | None, params: dict[str, Any],
               prepare: Callable[[Path], None] | None = None) -> dict:
        """Queue a job of ``kind`` on ``node`` of project ``pid``. ``prepare(folder)`` writes its input files first."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
        jid = new_id()
        folder = self.store.inside(self.store.folder(pid), "jobs", jid)
        folder.mkdir(parents=True)
        if prepare is not None:
            prepare(folder)
        job = dict(id=jid, project=pid, kind=kind, node=node, params=params, status="queued", progress=0.0,
                   level=None, eta_seconds=None, error=None, created=time.time(), started=None, finished=None,
                   nodes=[], files=[])
        write_json(folder / JOB_FILE, job)
        with self.cond:
            self.queue.append((pid, jid))
            self.cond.notify_all()
        return job

    def job(self, pid: str, jid: str) -> dict:
        path = self.store.job_folder(pid, jid) / JOB_FILE
        if not path.is_file():
            raise NotFound(f"no job {jid!r} in project {pid!r}")
        return read_json(path)

    def jobs(self, pid: str) -> list[dict]:
        folder = self.store.folder(pid) / "jobs"
        found = [read_json(f) for f in folder.glob(f"*/{JOB_FILE}")] if folder.is_dir() else []
        return sorted(found, key=lambda j: j["created"])

    def busy_nodes(self, pid: str) -> set[str]:
        """The nodes of project ``pid`` that unfinished jobs start from."""
        return {j["node"] for j in self.jobs(pid) if j["status"] not in FINISHED and j["node"]}

    def _waiting_interactive(self) -> bool:
        with self.cond:
            return any(self._kind(key) != "upsample" for key in self.queue)

    def _kind(self, key: tuple[str, str]) -> str | None:
        try:
            return self.job(*key)["kind"]
        except (NotFound, OSError, ValueError):
            return None

    def _next(self) -> tuple[str, str] | None:
        """The next job: the oldest the user waits for, else the oldest upsampling; None when stopping."""
        with self.cond:
            while not self.queue and not self._stop:
                self.cond.wait()
            if self._stop:
                return None
            key = next((k for k in self.queue if self._kind(k) != "upsample"), self.queue[0])
            self.queue.remove(key)
            self.running = key
            return key

    def _loop(self) -> None:
        while True:
            key = self._next()
            if key is None:
                return
            try:
                self._execute(*key)
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk while saving a job's state: keep serving
                print_once(f"studio: job {key[1]} could not be run: {error_message(exc)}")
            finally:
                self.running = None

    # one job -------------------------------------------------------------------------------------------------
    def _update(self, folder: Path, job: dict, **fields: Any) -> None:
        job.update(fields)
        write_json(folder / JOB_FILE, job)

    def _execute(self, pid: str, jid: str) -> None:
        try:
            folder = self.store.job_folder(pid, jid)
            job = read_json(folder / JOB_FILE)
        except (NotFound, OSError, ValueError):
            return  # the project was deleted meanwhile
        self._update(folder, job, status="running", started=job["started"] or time.time())
        try:
            getattr(self, f"_run_{job['kind']}")(pid, folder, job)
        except _GiveWay:
            self._update(folder, job, status="queued", eta_seconds=None)
            with self.cond:
                self.queue.append((pid, jid))
            return
        except Exception as exc:  # noqa: BLE001 - a failed job reports its error to the page and the next one runs
            if not folder.is_dir():
                return  # the project was deleted meanwhile
            if os.environ.get("JUKEBOX_DEBUG") == "1":
                traceback.print_exc()
            print_once(f"studio: job {jid} ({job['kind']}) failed: {error_message(exc)}")
            self._update(folder, job, status="failed", error=error_message(exc), eta_seconds=None,
                         finished=time.time())
            return
        self._update(folder, job, status="done", progress=1.0, eta_seconds=0.0, finished=time.time())

    def _reporter(self, folder: Path, job: dict, totals: dict[int, int], starts: dict[int, int],
                  give_way: bool) -> Callable[[int, list], None]:
        """The per-window report of a sampling job: progress over the tokens of ``totals`` (level -> tokens to
        reach, from ``starts``), an ETA from this run's rate, and giving way to interactive jobs."""
        began, first = time.time(), None
        work = sum(totals[l] - starts[l] for l in totals) or 1

        def report(level: int, zs: list[torch.Tensor]) -> None:
            nonlocal first
            done = sum(min(zs[l].shape[1], totals[l]) - starts[l] for l in totals)
            first = done if first is None else first
            elapsed, gained = time.time() - began, done - first
            eta = elapsed / gained * (work - done) if gained > 0 else None
            self._update(folder, job, progress=round(done / work, 4), level=max(level, 0),
                         eta_seconds=None if eta is None else round(eta, 1))
            if give_way and done < work and self._waiting_interactive():
                raise _GiveWay()

        return report

    def _run_continue(self, pid: str, folder: Path, job: dict) -> None:
        project = self.store.load(pid)
        if any(n.get("job") == job["id"] for n in project["nodes"].values()):
            return  # its nodes were added before a crash
        p = job["params"]
        facts = model_facts(project["model"])
        start = self.store.codes(pid, job["node"])
        top = facts.levels - 1
        report = self._reporter(folder, job, {top: p["tokens"]}, {top: start.shape[1]}, give_way=False)
        codes, wavs, aligns = self.composer.continuations(project, start, p["count"], p["tokens"], p["temperature"],
                                                          p["seed"], folder, report)
        with self.store.edit(pid) as project:
            nodes_dir = self.store.folder(pid) / "nodes"
            made = []
            for i in range(codes.shape[0]):
                node = self.store.add_node(project, job["node"], codes[i:i + 1], seed=p["seed"], item=i,
                                           temperature=p["temperature"], job=job["id"])
                _copy_atomic(wavs[i], nodes_dir / f"{node['id']}.wav")
                node["preview"] = f"nodes/{node['id']}.wav"
                if aligns:
                    _copy_atomic(aligns[i], nodes_dir / f"{node['id']}.align.json")
                    node["alignment"] = f"nodes/{node['id']}.align.json"
                made.append(node["id"])
        job["nodes"] = made
        shutil.rmtree(folder / f"level_{top}", ignore_errors=True)

    def _run_decode(self, pid: str, folder: Path, job: dict) -> None:
        project = self.store.load(pid)
        for nid in job["params"]["nodes"]:
            node = project["nodes"].get(nid)
            if node is None or node["preview"]:
                continue
            x = self.composer.decode(project["model"], self.store.codes(pid, nid))
            save_wav(self.store.folder(pid) / "nodes" / f"{nid}.wav", x[0], project["sr"])
            with self.store.edit(pid) as edited:
                if nid in edited["nodes"]:
                    edited["nodes"][nid]["preview"] = f"nodes/{nid}.wav"
        job["nodes"] = list(job["params"]["nodes"])

    def _run_prime(self, pid: str, folder: Path, job: dict) -> None:
        project = self.store.load(pid)
        if any(n.get("job") == job["id"] for n in project["nodes"].values()):
            return
        prompt = load_checkpoint(folder / "prompt.pt")["x"]
        codes = self.composer.encode(project["model"], prompt)
        x = self.composer.decode(project["model"], codes)
        with self.store.edit(pid) as project:
            node = self.store.add_node(project, job["node"], codes, job=job["id"], prompt=True)
            save_wav(self.store.folder(pid) / "nodes" / f"{node['id']}.wav", x[0], project["sr"])
            node["preview"] = f"nodes/{node['id']}.wav"
            project["current"] = node["id"]
        job["nodes"] = [node["id"]]
        (folder / "prompt.pt").unlink(missing_ok=True)

    def _run_upsample(self, pid: str, folder: Path, job: dict) -> None:
        project = self.store.load(pid)
        facts = model_facts(project["model"])
        tokens = job["params"]["tokens"]
        done_dir = folder / "level_0"
        if not (done_dir / "data.pth.tar").is_file():
            totals = {l: tokens * facts.top_hop // facts.hops[l] for l in range(facts.levels - 1)}
            report = self._reporter(folder, job, totals, dict.fromkeys(totals, 0), give_way=True)
            self.composer.upsample(project, folder / "start.pth.tar", tokens, job["params"]["seed"], folder, report)
        job["files"] = [f"level_0/{name}" for name in RESULT_FILES if (done_dir / name).is_file()]
