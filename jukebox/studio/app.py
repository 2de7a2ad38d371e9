"""Jukebox Studio's web application: the page and the JSON API it uses (documented at ``/openapi.json``).

``create_app`` builds a FastAPI application over a projects folder (``jukebox.studio.projects``) and a background
worker (``jukebox.studio.worker``) that runs every model job on one device. The routes, all under ``/api``:

- ``/info``: the models, the default one, the device, the upload limit;
- ``/projects``: list, create (from scratch, ``/projects/primed`` from an audio prompt, ``/projects/import`` from
  sample.py's ``data.pth.tar``), read, rename, delete;
- ``/projects/{id}/nodes/{node}``: continue (K continuations of S seconds), trim, pick, delete a branch, the
  preview wav, the lyric alignment, the codes in sample.py's format, upsample;
- ``/projects/{id}/jobs``: the jobs, one job, its progress as server-sent events, its result files.

Bad input is a 4xx whose JSON ``detail`` is one line saying what is wrong. Security (token, Host, body size,
headers) is ``jukebox.studio.security``'s.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.sse import EventSourceResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from jukebox.inference.inputs import load_prompts
from jukebox.make_models import MODELS
from jukebox.studio.composer import Composer, ModelFacts, export_codes, model_facts
from jukebox.studio.projects import Conflict, NotFound, ProjectStore, clean_name, clean_text
from jukebox.studio.security import StudioGuard, allowed_hosts
from jukebox.studio.worker import FINISHED, JOB_FILE, Worker
from jukebox.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jukebox.utils.cli import error_message
from jukebox.utils.io import AudioReadError

__all__ = ["create_app", "AUDIO_SUFFIXES"]

STATIC = Path(__file__).resolve().parent / "static"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
MAX_SONG_SECONDS = 3600.0


class TooLarge(ValueError):
    """An upload over the size limit (HTTP 413)."""


# request and response bodies ---------------------------------------------------------------------------------
class ModelInfo(BaseModel):
    name: str
    sr: int
    levels: int
    top_hop: int = Field(description="audio samples per top-level token")
    labels: bool = Field(description="the top prior takes an artist and a genre")
    lyrics: bool = Field(description="the top prior takes lyrics")
    min_upsample_seconds: float = Field(description="the shortest node that can be upsampled")


class Info(BaseModel):
    model: str = Field(description="the model new projects use unless they choose another")
    models: list[ModelInfo]
    device: str
    max_upload_bytes: int


class NewProject(BaseModel):
    name: str = Field(max_length=1000)
    model: str | None = Field(None, description="one of /api/info's models; default: the studio's")
    artist: str = Field("", max_length=1000)
    genre: str = Field("", max_length=1000)
    lyrics: str = Field("", max_length=40_000)
    total_seconds: float = Field(60.0, gt=0, le=MAX_SONG_SECONDS, description="the whole song's length")


class Rename(BaseModel):
    name: str = Field(max_length=1000)


class Continue(BaseModel):
    count: int = Field(2, ge=1, le=16, description="K: continuations sampled together")
    seconds: float = Field(2.0, gt=0, le=600, description="S: seconds each continuation adds")
    temperature: float = Field(0.98, gt=0, le=2)
    seed: int | None = Field(None, ge=0, lt=2**31, description="None: a random one (recorded in the nodes)")


class Trim(BaseModel):
    seconds: float = Field(gt=0, description="where the trimmed copy of the node ends")


class Upsample(BaseModel):
    seed: int | None = Field(None, ge=0, lt=2**31)


class Node(BaseModel):
    id: str
    parent: str | None
    length: int = Field(description="top-level tokens from the start of the song")
    seconds: float
    seed: int | None
    temperature: float | None
    item: int | None = Field(None, description="its index in the batch that made it")
    job: str | None = Field(None, description="the job that made it")
    prompt: bool = False
    trimmed_from: str | None = None
    created: float
    preview: bool = Field(description="the preview wav exists (…/preview.wav)")
    alignment: bool = Field(description="the lyric alignment exists (…/alignment)")


class Project(BaseModel):
    id: str
    name: str
    model: str
    artist: str
    genre: str
    lyrics: str
    total_seconds: float
    sr: int
    hop_fraction: list[float]
    created: float
    current: str = Field(description="the node picked last: the current path runs from the root to it")
    path: list[str] = Field(description="the current path's node ids, root first")
    nodes: list[Node]


class ProjectSummary(BaseModel):
    id: str
    name: str
    model: str
    created: float
    nodes: int


class Job(BaseModel):
    id: str
    project: str
    kind: str = Field(description="continue, decode, prime or upsample")
    node: str | None
    params: dict[str, Any]
    status: str = Field(description="queued, running, done or failed")
    progress: float = Field(description="0 to 1")
    level: int | None
    eta_seconds: float | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    nodes: list[str] = Field(description="the nodes it made")
    files: list[str] = Field(description="its result files (…/files/{name})")


class Alignment(BaseModel):
    lyrics: str
    sung: list[int] = Field(description="per frame of the preview, the index of the character sung (-1: none)")


# the application ---------------------------------------------------------------------------------------------
def _facts_info(facts: ModelFacts) -> ModelInfo:
    return ModelInfo(name=facts.name, sr=facts.sr, levels=facts.levels, top_hop=facts.top_hop, labels=facts.labels,
                     lyrics=facts.lyrics, min_upsample_seconds=facts.seconds(facts.min_upsample_tokens))


class Studio:
    """The state behind the routes: the store, the worker and the settings of this server."""

    def __init__(self, projects: str | Path, model: str, device: str, max_upload_bytes: int) -> None:
        model_facts(model)  # an unknown model fails here, before the server starts
        self.store = ProjectStore(projects)
        self.worker = Worker(self.store, Composer(device))
        self.model, self.device, self.max_upload_bytes = model, device, max_upload_bytes

    def project_out(self, project: dict) -> Project:
        facts = model_facts(project["model"])
        nodes = [Node(**{**n, "seconds": facts.seconds(n["length"]), "preview": bool(n["preview"]),
                         "alignment": bool(n["alignment"])}) for n in project["nodes"].values()]
        return Project(**{k: v for k, v in project.items() if k != "nodes"}, nodes=nodes,
                       path=self.store.path_to(project, project["current"]))

    def settings(self, name: str, model: str | None, artist: str, genre: str, lyrics: str,
                 total_seconds: float) -> dict:
        facts = model_facts(model or self.model)
        if facts.tokens(total_seconds) < 1:
            raise ValueError(f"total_seconds={total_seconds} is shorter than one top-level token "
                             f"({facts.seconds(1):.4f} s)")
        return dict(name=clean_name(name, "project name"), model=facts.name,
                    artist=clean_name(artist or "unknown", "artist"), genre=clean_name(genre or "unknown", "genre"),
                    lyrics=clean_text(lyrics, "lyrics"),
                    total_seconds=float(total_seconds), sr=facts.sr,
                    hop_fraction=[0.5] * (facts.levels - 1) + [0.125])  # sample.py's, bottom level first

    async def upload(self, file: UploadFile, suffixes: tuple[str, ...], what: str) -> Path:
        """The uploaded file in a private temporary file (the caller deletes it); its name only gives the suffix."""
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in suffixes:
            raise ValueError(f"the {what} must be a {', '.join(suffixes)} file, got {file.filename!r}")
        with tempfile.NamedTemporaryFile(prefix="jukebox-studio-", suffix=suffix, delete=False) as tmp:
            size = 0
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > self.max_upload_bytes:
                    tmp.close()
                    Path(tmp.name).unlink(missing_ok=True)
                    raise TooLarge(f"the {what} is larger than the limit of {self.max_upload_bytes} bytes")
                tmp.write(chunk)
        return Path(tmp.name)


def _error(status: int, exc: BaseException) -> JSONResponse:
    return JSONResponse({"detail": error_message(exc)}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


def create_app(projects: str | Path = "studio", model: str = "demo", token: str | None = None,
               host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
               max_upload_mb: float = 64.0) -> FastAPI:
    """The studio's ASGI application over the ``projects`` folder, sampling ``model`` (the default of new
    projects) on ``device``. token: every request needs it (None: a random one, ``app.state.token``). host, port:
    where it is served (the Host header must name that address or localhost; the cookie name carries the port)."""
    token = token or secrets.token_urlsafe(24)
    studio = Studio(projects, model, device, int(max_upload_mb * 2**20))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        studio.worker.start()
        yield
        await asyncio.to_thread(studio.worker.stop, 5.0)

    app = FastAPI(title="Jukebox Studio", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  max_body_size=studio.max_upload_bytes + 2**16,  # the upload and a few form fields
                  description="Co-compose with a Jukebox model: sample continuations at the top level, listen, pick, "
                              "extend, then upsample in the background. Every request needs the token (?token=, "
                              "Authorization: Bearer, or the cookie the page sets).")
    app.state.token, app.state.studio = token, studio
    app.add_middleware(StudioGuard, token=token, cookie_name=f"jukebox_studio_{port}")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host), www_redirect=False)
    app.add_exception_handler(NotFound, lambda r, e: _error(404, e))
    app.add_exception_handler(TooLarge, lambda r, e: _error(413, e))
    app.add_exception_handler(Conflict, lambda r, e: _error(409, e))
    for bad_input in (ValueError, CheckpointError, AudioReadError, FileNotFoundError):
        app.add_exception_handler(bad_input, lambda r, e: _error(400, e))
    app.add_exception_handler(RequestValidationError,
                              lambda r, e: JSONResponse({"detail": _validation_message(e)}, status_code=422))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    store, worker = studio.store, studio.worker

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> Info:
        return Info(model=studio.model, models=[_facts_info(model_facts(m)) for m in MODELS], device=studio.device,
                    max_upload_bytes=studio.max_upload_bytes)

    # projects ------------------------------------------------------------------------------------------------
    @app.get("/api/projects")
    def list_projects() -> list[ProjectSummary]:
        return [ProjectSummary(id=p["id"], name=p["name"], model=p["model"], created=p["created"],
                               nodes=len(p["nodes"])) for p in store.list()]

    @app.post("/api/projects", status_code=201)
    def create_project(body: NewProject) -> Project:
        return studio.project_out(store.create(studio.settings(body.name, body.model, body.artist, body.genre,
                                                               body.lyrics, body.total_seconds)))

    @app.post("/api/projects/primed", status_code=201)
    async def create_primed(file: Annotated[UploadFile, File(description="wav, flac, mp3 or ogg")],
                            name: Annotated[str, Form()], prompt_seconds: Annotated[float, Form(gt=0)],
                            model: Annotated[str | None, Form()] = None, artist: Annotated[str, Form()] = "",
                            genre: Annotated[str, Form()] = "", lyrics: Annotated[str, Form()] = "",
                            total_seconds: Annotated[float, Form(gt=0, le=MAX_SONG_SECONDS)] = 60.0) -> Job:
        """A project primed with an audio prompt: the upload is decoded here (never kept, never served), and a
        ``prime`` job encodes it into the codes of a first node."""
        settings = studio.settings(name, model, artist, genre, lyrics, total_seconds)
        facts = model_facts(settings["model"])
        path = await studio.upload(file, AUDIO_SUFFIXES, "audio prompt")
        try:
            duration = min(prompt_seconds, total_seconds)
            x = await asyncio.to_thread(load_prompts, [str(path)], int(duration * facts.sr), 1, facts.sr,
                                        facts.top_hop)
        except (AudioReadError, ValueError) as e:
            raise ValueError(f"the audio prompt {file.filename!r} cannot be used: "
                             f"{error_message(e).replace(str(path), 'the upload')}") from None
        finally:
            path.unlink(missing_ok=True)
        project = store.create(settings)
        root = project["current"]
        return Job(**worker.submit(project["id"], "prime", root, dict(seconds=x.shape[1] / facts.sr),
                                   prepare=lambda folder: save_checkpoint(folder / "prompt.pt", dict(x=x))))

    @app.post("/api/projects/import", status_code=201)
    async def import_project(file: Annotated[UploadFile, File(description="a sample.py level_k/data.pth.tar")],
                             name: Annotated[str, Form()], model: Annotated[str | None, Form()] = None,
                             total_seconds: Annotated[float | None, Form(gt=0, le=MAX_SONG_SECONDS)] = None) -> Job:
        """A project from the codes of a sample.py run: one node per item, previews made by a ``decode`` job."""
        facts = model_facts(model or studio.model)
        path = await studio.upload(file, (".tar", ".pt", ".pth"), "codes file")
        try:
            data = load_checkpoint(path)
        except CheckpointError as e:
            raise ValueError(f"the codes file {file.filename!r} cannot be read: "
                             f"{error_message(e).replace(str(path), 'the upload')}") from None
        finally:
            path.unlink(missing_ok=True)
        top, info = _imported_codes(data, facts)
        length = facts.seconds(top.shape[1])
        settings = studio.settings(name, facts.name, info.get("artist", ""), info.get("genre", ""),
                                   info.get("lyrics", ""), total_seconds or max(length, _info_seconds(info, facts)))
        project = store.create(settings)
        with store.edit(project["id"]) as project:
            made = [store.add_node(project, project["current"], top[i:i + 1], item=i)["id"]
                    for i in range(top.shape[0])]
            project["current"] = made[0]
        return Job(**worker.submit(project["id"], "decode", None, dict(nodes=made)))

    @app.get("/api/projects/{pid}")
    def read_project(pid: str) -> Project:
        return studio.project_out(store.load(pid))

    @app.patch("/api/projects/{pid}")
    def rename_project(pid: str, body: Rename) -> Project:
        return studio.project_out(store.rename(pid, body.name))

    @app.delete("/api/projects/{pid}", status_code=204)
    def delete_project(pid: str) -> None:
        if any(j["status"] == "running" for j in worker.jobs(pid)):
            raise Conflict("a job of this project is running; wait for it to finish (or give way) first")
        store.delete(pid)

    # nodes ---------------------------------------------------------------------------------------------------
    @app.post("/api/projects/{pid}/nodes/{nid}/continue", status_code=202)
    def continue_node(pid: str, nid: str, body: Continue) -> Job:
        project = store.load(pid)
        node = store.node(project, nid)
        facts = model_facts(project["model"])
        total = facts.tokens(project["total_seconds"])
        if node["length"] >= total:
            raise ValueError(f"node {nid} already reaches the song's length ({project['total_seconds']} s); "
                             "continue an earlier node or make a new project with a longer song")
        tokens = min(total, node["length"] + max(1, facts.tokens(body.seconds)))
        seed = secrets.randbits(31) if body.seed is None else body.seed
        return Job(**worker.submit(pid, "continue", nid, dict(count=body.count, seconds=body.seconds, tokens=tokens,
                                                              temperature=body.temperature, seed=seed)))

    @app.post("/api/projects/{pid}/nodes/{nid}/trim", status_code=202)
    def trim_node(pid: str, nid: str, body: Trim) -> Job:
        """A copy of the node ending at ``seconds``, placed under the deepest node of its path that it extends;
        the original node and its branch are kept."""
        with store.edit(pid) as project:
            node = store.node(project, nid)
            facts = model_facts(project["model"])
            tokens = facts.tokens(body.seconds)
            if not 0 < tokens < node["length"]:
                raise ValueError(f"trim to a time inside the node: between {facts.seconds(1):.3f} s and "
                                 f"{facts.seconds(node['length']):.3f} s")
            parent = [p for p in store.path_to(project, nid) if project["nodes"][p]["length"] <= tokens][-1]
            codes = store.codes(pid, nid)[:, :tokens]
            made = store.add_node(project, parent, codes, trimmed_from=nid)
            project["current"] = made["id"]
        return Job(**worker.submit(pid, "decode", made["id"], dict(nodes=[made["id"]])))

    @app.post("/api/projects/{pid}/nodes/{nid}/pick")
    def pick_node(pid: str, nid: str) -> Project:
        with store.edit(pid) as project:
            store.node(project, nid)
            project["current"] = nid
        return studio.project_out(project)

    @app.delete("/api/projects/{pid}/nodes/{nid}")
    def delete_branch(pid: str, nid: str) -> Project:
        with store.edit(pid) as project:
            store.delete_branch(project, nid, worker.busy_nodes(pid))
        return studio.project_out(project)

    def node_file(pid: str, nid: str, key: str, what: str) -> Path:
        node = store.node(store.load(pid), nid)
        if not node.get(key):
            raise NotFound(f"node {nid} has no {what} (yet)")
        return store.inside(store.folder(pid), node[key])

    @app.get("/api/projects/{pid}/nodes/{nid}/preview.wav", response_class=FileResponse,
             responses={200: {"content": {"audio/wav": {}}}})
    def preview(pid: str, nid: str) -> FileResponse:
        """The node's preview: its top-level codes from the start of the song, decoded by the VQ-VAE."""
        return FileResponse(node_file(pid, nid, "preview", "preview"), media_type="audio/wav")

    @app.get("/api/projects/{pid}/nodes/{nid}/alignment")
    def alignment(pid: str, nid: str) -> Alignment:
        record = json.loads(node_file(pid, nid, "alignment", "lyric alignment (lyric models only)").read_text())
        return Alignment(lyrics=record["lyrics"], sung=record["sung"])

    @app.get("/api/projects/{pid}/nodes/{nid}/codes.pth.tar", response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def export(pid: str, nid: str) -> FileResponse:
        """The node's codes as sample.py's data.pth.tar: ``sample.py --mode=upsample --codes_file=`` takes it."""
        project = store.load(pid)
        store.node(project, nid)
        facts = model_facts(project["model"])
        out = store.folder(pid) / "exports" / f"{nid}.pth.tar"
        export_codes(out, store.codes(pid, nid), facts.levels, Composer.metas(project, 1))
        return FileResponse(out, media_type="application/octet-stream", filename=f"studio-{pid}-{nid}.pth.tar")

    @app.post("/api/projects/{pid}/nodes/{nid}/upsample", status_code=202)
    def upsample(pid: str, nid: str, body: Upsample) -> Job:
        """Queue the path from the root to the node for upsampling (all levels below the top)."""
        project = store.load(pid)
        node = store.node(project, nid)
        facts = model_facts(project["model"])
        if node["length"] < facts.min_upsample_tokens:
            raise ValueError(f"node {nid} is {facts.seconds(node['length']):.2f} s long; upsampling needs at least "
                             f"{facts.seconds(facts.min_upsample_tokens):.2f} s (one window of every upsampler)")
        codes = store.codes(pid, nid)
        seed = secrets.randbits(31) if body.seed is None else body.seed
        return Job(**worker.submit(pid, "upsample", nid, dict(seed=seed, tokens=node["length"]),
                                   prepare=lambda folder: export_codes(folder / "start.pth.tar", codes, facts.levels,
                                                                       Composer.metas(project, 1))))

    # jobs ----------------------------------------------------------------------------------------------------
    @app.get("/api/projects/{pid}/jobs")
    def list_jobs(pid: str) -> list[Job]:
        return [Job(**j) for j in worker.jobs(pid)]

    @app.get("/api/projects/{pid}/jobs/{jid}")
    def read_job(pid: str, jid: str) -> Job:
        return Job(**worker.job(pid, jid))

    @app.get("/api/projects/{pid}/jobs/{jid}/events", response_class=EventSourceResponse)
    async def job_events(pid: str, jid: str, request: Request) -> AsyncIterator[Job]:
        """The job's state whenever it changes, until it is done or failed (then the stream ends)."""
        job_file = store.job_folder(pid, jid) / JOB_FILE
        worker.job(pid, jid)  # 404 before the stream starts
        last = None
        while not await request.is_disconnected():
            try:
                text = job_file.read_text(encoding="utf-8")
            except OSError:
                return
            if text != last:
                last = text
                job = json.loads(text)
                yield Job(**job)
                if job["status"] in FINISHED:
                    return
            await asyncio.sleep(0.25)

    @app.get("/api/projects/{pid}/jobs/{jid}/files/{name:path}", response_class=FileResponse)
    def job_file(pid: str, jid: str, name: str) -> FileResponse:
        """A result file of an upsampling job: ``level_0/item_0.wav``, ``level_0/data.pth.tar``, and the
        ``level_0/index.html`` lyric page with the files it links to."""
        folder = store.job_folder(pid, jid)
        path = store.inside(folder, name)
        if not (path.is_file() and path.suffix in (".wav", ".html", ".json", ".png", ".tar")
                and folder / "level_0" in path.parents):
            raise NotFound(f"job {jid} has no result file {name!r}")
        if path.suffix == ".html":  # sample.py's page: its data sits in an inline script, its text is escaped
            return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": (
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'; "
                "media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")})
        filename = f"studio-{pid}-{jid}-{path.name}" if path.suffix in (".wav", ".tar") else None
        return FileResponse(path, filename=filename)

    return app


def _imported_codes(data: dict, facts: ModelFacts) -> tuple[torch.Tensor, dict]:
    """The top-level codes (N, T) of a sample.py data.pth.tar and its first item's labels, checked against the
    model."""
    zs = data.get("zs") if isinstance(data, dict) else None
    if not isinstance(zs, (list, tuple)) or len(zs) != facts.levels:
        raise ValueError(f"the codes file has no codes of {facts.levels} levels (expected a level_k/data.pth.tar "
                         f"of sample.py with model {facts.name!r})")
    top = zs[-1]
    if not isinstance(top, torch.Tensor) or top.dim() != 2 or top.is_floating_point() or top.numel() == 0:
        raise ValueError("the top-level codes of the file must be a non-empty integer tensor (N, T)")
    bins = facts.bins
    if not 0 <= int(top.min()) <= int(top.max()) < bins:
        raise ValueError(f"the codes lie outside [0, {bins}), the codebook of {facts.name!r}; pick the model that "
                         "made them")
    if top.shape[0] > 16:
        raise ValueError(f"the file holds {top.shape[0]} items; import at most 16")
    labels = data.get("labels")
    info: dict = {}
    if isinstance(labels, (list, tuple)) and labels and isinstance(labels[-1], dict):
        items = labels[-1].get("info")
        if isinstance(items, list) and items and isinstance(items[0], dict):
            info = {k: str(v) for k, v in items[0].items() if k in ("artist", "genre", "lyrics")
                    and v not in (None, "n/a")}
            info["total_length"] = items[0].get("total_length")
    return top.long(), info


def _info_seconds(info: dict, facts: ModelFacts) -> float:
    total = info.get("total_length")
    return float(total) / facts.sr if isinstance(total, (int, float)) and total > 0 else 0.0
