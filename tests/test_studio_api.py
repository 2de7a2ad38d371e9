"""Jukebox Studio's JSON API, every endpoint, with the bundled demo model (and the tiny lyric model for the lyric
alignment): projects, continuations, previews, trims, branches, prompts, imports, exports and upsampling."""
from __future__ import annotations

import io
import json

import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

from conftest import DATA, IDS_DIR
from helpers.studio import AUTH, TOKEN, wait_job
from helpers.tiny_model import tiny_model
from jukebox.hparams import Hyperparams
from jukebox.inference.inputs import load_codes
from jukebox.make_models import make_model
from jukebox.studio.app import create_app
from jukebox.utils.checkpoint import load_checkpoint

SR, HOP = 22050, 128
SECONDS = 0.8  # above the 0.74 s that upsampling the demo model needs
TOKENS = int(SECONDS * SR) // HOP

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(tmp_path_factory.mktemp("projects"), "demo", token=TOKEN, port=8000)
    with TestClient(app, base_url="http://127.0.0.1:8000", headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def composed(client):
    """A project with two continuations of the root, sampled as one batch."""
    project = client.post("/api/projects", json=dict(name="Song", total_seconds=3)).json()
    job = client.post(f"/api/projects/{project['id']}/nodes/{project['current']}/continue",
                      json=dict(count=2, seconds=SECONDS, temperature=0.9, seed=7))
    assert job.status_code == 202
    job = wait_job(client, job.json())
    return client.get(f"/api/projects/{project['id']}").json(), job


@pytest.fixture(scope="module")
def upsampled(client, composed):
    project, job = composed
    nid = job["nodes"][0]
    response = client.post(f"/api/projects/{project['id']}/nodes/{nid}/upsample", json=dict(seed=3))
    assert response.status_code == 202
    job = response.json()
    events, preview = [], None
    with client.stream("GET", f"/api/projects/{project['id']}/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if preview is None and events[-1]["status"] == "running" and events[-1]["progress"] > 0:
                    # a continuation asked for meanwhile runs before the upsampling goes on
                    preview = client.post(f"/api/projects/{project['id']}/nodes/{nid}/continue",
                                          json=dict(count=1, seconds=0.1, seed=5)).json()
    return project, nid, events, wait_job(client, preview)


def test_page_info_and_openapi(client):
    page = TestClient(client.app, base_url="http://127.0.0.1:8000").get(f"/?token={TOKEN}")
    assert page.status_code == 200 and "Jukebox Studio" in page.text
    assert "jukebox_studio_8000" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    info = client.get("/api/info").json()
    demo = next(m for m in info["models"] if m["name"] == "demo")
    assert info["model"] == "demo" and demo["sr"] == SR and demo["top_hop"] == HOP and not demo["lyrics"]
    assert 0.7 < demo["min_upsample_seconds"] < SECONDS
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/api/info", "/api/projects", "/api/projects/primed", "/api/projects/import",
                  "/api/projects/{pid}", "/api/projects/{pid}/nodes/{nid}/continue",
                  "/api/projects/{pid}/nodes/{nid}/trim", "/api/projects/{pid}/nodes/{nid}/pick",
                  "/api/projects/{pid}/nodes/{nid}", "/api/projects/{pid}/nodes/{nid}/preview.wav",
                  "/api/projects/{pid}/nodes/{nid}/alignment", "/api/projects/{pid}/nodes/{nid}/codes.pth.tar",
                  "/api/projects/{pid}/nodes/{nid}/upsample", "/api/projects/{pid}/jobs",
                  "/api/projects/{pid}/jobs/{jid}", "/api/projects/{pid}/jobs/{jid}/events",
                  "/api/projects/{pid}/jobs/{jid}/files/{name}"):
        assert route in paths


def test_projects_create_list_rename_delete(client):
    created = client.post("/api/projects", json=dict(name="  First\ttry ", artist="A", total_seconds=10))
    assert created.status_code == 201
    project = created.json()
    assert project["name"] == "First try" and project["model"] == "demo" and project["sr"] == SR
    assert [n["length"] for n in project["nodes"]] == [0] and project["path"] == [project["current"]]
    assert project["id"] in [p["id"] for p in client.get("/api/projects").json()]
    renamed = client.patch(f"/api/projects/{project['id']}", json=dict(name="Second try"))
    assert renamed.json()["name"] == "Second try"
    assert client.get(f"/api/projects/{project['id']}").json()["name"] == "Second try"
    assert client.delete(f"/api/projects/{project['id']}").status_code == 204
    assert client.get(f"/api/projects/{project['id']}").status_code == 404


@pytest.mark.parametrize("body, status, words", [
    (dict(name="x", model="6b"), 400, "unknown model"),
    (dict(name="", total_seconds=3), 400, "name is empty"),
    (dict(name="x", total_seconds=0), 422, "total_seconds"),
    (dict(name="x" * 300), 400, "at most 200"),
])
def test_bad_projects_are_refused_with_a_message(client, body, status, words):
    response = client.post("/api/projects", json=body)
    assert response.status_code == status and words in response.json()["detail"]


def test_continuations_are_one_batch_with_previews(client, composed):
    project, job = composed
    children = [n for n in project["nodes"] if n["parent"] == project["path"][0]]
    assert sorted(n["id"] for n in children) == sorted(job["nodes"]) and len(children) == 2
    for node in children:
        assert node["length"] == TOKENS and node["seed"] == 7 and node["temperature"] == 0.9 and node["preview"]
        assert node["job"] == job["id"]  # both made by the same batched run
        wav = client.get(f"/api/projects/{project['id']}/nodes/{node['id']}/preview.wav")
        assert wav.headers["content-type"] == "audio/wav"
        audio, sr = sf.read(io.BytesIO(wav.content))
        assert sr == SR and len(audio) == TOKENS * HOP and abs(audio).max() > 0
    assert job["params"]["count"] == 2 and job["progress"] == 1.0
    priors = client.app.state.studio.worker.composer.priors
    assert [p.loaded for p in priors] == [False, False, True]  # the top prior stays in memory, alone
    jobs = client.get(f"/api/projects/{project['id']}/jobs").json()
    assert job["id"] in [j["id"] for j in jobs]


def test_pick_trim_extend_and_delete_branch(client, composed):
    project, job = composed
    pid, first = project["id"], job["nodes"][0]
    picked = client.post(f"/api/projects/{pid}/nodes/{first}/pick").json()
    assert picked["current"] == first and picked["path"] == [project["path"][0], first]
    trim = client.post(f"/api/projects/{pid}/nodes/{first}/trim", json=dict(seconds=0.4))
    assert trim.status_code == 202
    trim = wait_job(client, trim.json())
    project = client.get(f"/api/projects/{pid}").json()
    trimmed = next(n for n in project["nodes"] if n["id"] == trim["node"])
    assert trimmed["parent"] == project["path"][0] and trimmed["trimmed_from"] == first and trimmed["preview"]
    assert project["current"] == trimmed["id"]
    full, cut = (torch.load(io.BytesIO(client.get(f"/api/projects/{pid}/nodes/{n}/codes.pth.tar").content),
                            weights_only=True)["zs"][-1] for n in (first, trimmed["id"]))
    assert torch.equal(cut, full[:, :trimmed["length"]]) and trimmed["length"] == int(0.4 * SR) // HOP
    assert client.post(f"/api/projects/{pid}/nodes/{first}/trim", json=dict(seconds=5)).status_code == 400

    top = client.app.state.studio.worker.composer.priors[-1]
    weights = next(top.module.parameters()).data_ptr()
    extend = wait_job(client, client.post(f"/api/projects/{pid}/nodes/{trimmed['id']}/continue",
                                          json=dict(count=1, seconds=0.2, seed=1)).json())
    child = extend["nodes"][0]
    assert next(top.module.parameters()).data_ptr() == weights  # a second request did not reload the prior
    project = client.get(f"/api/projects/{pid}").json()
    grown = next(n for n in project["nodes"] if n["id"] == child)
    assert grown["parent"] == trimmed["id"] and grown["length"] == trimmed["length"] + int(0.2 * SR) // HOP
    child_codes = torch.load(io.BytesIO(client.get(f"/api/projects/{pid}/nodes/{child}/codes.pth.tar").content),
                             weights_only=True)["zs"][-1]
    assert torch.equal(child_codes[:, :trimmed["length"]], cut)  # a continuation keeps its parent's codes

    client.post(f"/api/projects/{pid}/nodes/{child}/pick")
    after = client.delete(f"/api/projects/{pid}/nodes/{trimmed['id']}").json()
    ids = [n["id"] for n in after["nodes"]]
    assert trimmed["id"] not in ids and child not in ids and first in ids
    assert after["current"] == project["path"][0]  # the picked node was in the branch: its root is picked
    assert client.delete(f"/api/projects/{pid}/nodes/{after['path'][0]}").status_code == 409  # the root stays
    assert client.get(f"/api/projects/{pid}/nodes/{child}/preview.wav").status_code == 404


def test_continuing_past_the_song_or_from_nowhere_is_refused(client, composed):
    project, _ = composed
    pid = project["id"]
    assert client.post(f"/api/projects/{pid}/nodes/ffffffffffff/continue", json={}).status_code == 404
    response = client.post(f"/api/projects/{pid}/nodes/{project['path'][0]}/continue", json=dict(count=0))
    assert response.status_code == 422 and "count" in response.json()["detail"]
    short = client.post("/api/projects", json=dict(name="short", total_seconds=0.1)).json()
    first = wait_job(client, client.post(f"/api/projects/{short['id']}/nodes/{short['current']}/continue",
                                         json=dict(count=1, seconds=1, seed=0)).json())
    node = client.get(f"/api/projects/{short['id']}").json()["nodes"]
    assert max(n["length"] for n in node) == int(0.1 * SR) // HOP  # capped at the song's length
    again = client.post(f"/api/projects/{short['id']}/nodes/{first['nodes'][0]}/continue", json={})
    assert again.status_code == 400 and "song's length" in again.json()["detail"]
    too_short = client.post(f"/api/projects/{short['id']}/nodes/{first['nodes'][0]}/upsample", json={})
    assert too_short.status_code == 400 and "needs at least" in too_short.json()["detail"]


def test_exported_codes_are_what_sample_py_reads(client, composed):
    project, job = composed
    nid = job["nodes"][1]
    response = client.get(f"/api/projects/{project['id']}/nodes/{nid}/codes.pth.tar")
    assert response.status_code == 200
    path = client.app.state.studio.store.root / "export.pth.tar"
    path.write_bytes(response.content)
    _, priors = make_model("demo", "cpu", Hyperparams(sample_length=TOKENS * HOP))
    zs = load_codes(str(path), 1, 3, None, priors, "cpu")  # what sample.py --codes_file runs
    assert [z.shape for z in zs] == [(1, 0), (1, 0), (1, TOKENS)]
    node_codes = load_checkpoint(client.app.state.studio.store.folder(project["id"]) / "nodes" / f"{nid}.pt")["z"]
    assert torch.equal(zs[-1], node_codes)


def test_upsampling_streams_progress_and_serves_samplepy_outputs(client, composed, upsampled):
    project, nid, events, preview = upsampled
    pid = project["id"]
    assert events[-1]["status"] == "done" and events[-1]["progress"] == 1.0
    # a continuation asked for while it ran finished first: the upsampling gave way to it after a window
    assert events[-1]["started"] < preview["created"] < preview["finished"] < events[-1]["finished"]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and len(events) >= 4  # pushed window by window
    assert any(e["eta_seconds"] is not None and e["status"] == "running" for e in events)
    job = events[-1]
    assert job["files"] == ["level_0/item_0.wav", "level_0/data.pth.tar", "level_0/index.html"]
    files = f"/api/projects/{pid}/jobs/{job['id']}/files"
    audio, sr = sf.read(io.BytesIO(client.get(f"{files}/level_0/item_0.wav").content))
    assert sr == SR and len(audio) == TOKENS * HOP
    data = torch.load(io.BytesIO(client.get(f"{files}/level_0/data.pth.tar").content), weights_only=True)
    node_codes = load_checkpoint(client.app.state.studio.store.folder(pid) / "nodes" / f"{nid}.pt")["z"]
    assert torch.equal(data["zs"][-1], node_codes)
    assert [z.shape[1] for z in data["zs"]] == [TOKENS * 16, TOKENS * 4, TOKENS]
    page = client.get(f"{files}/level_0/index.html")
    assert page.status_code == 200 and 'href="item_0/index.html"' in page.text
    assert client.get(f"{files}/level_0/item_0/index.html").status_code == 200
    for outside in ("job.json", "start.pth.tar", "../../project.json", "level_1/../job.json"):
        assert client.get(f"{files}/{outside}").status_code == 404


def test_import_a_samplepy_data_file(client, upsampled):
    project, nid, events, _ = upsampled
    data = client.get(f"/api/projects/{project['id']}/jobs/{events[-1]['id']}/files/level_0/data.pth.tar").content
    response = client.post("/api/projects/import", data=dict(name="Imported"),
                           files=dict(file=("data.pth.tar", data, "application/octet-stream")))
    assert response.status_code == 201
    job = wait_job(client, response.json())
    imported = client.get(f"/api/projects/{job['project']}").json()
    node = next(n for n in imported["nodes"] if n["id"] == job["nodes"][0])
    assert node["length"] == TOKENS and node["preview"] and imported["current"] == node["id"]
    assert imported["total_seconds"] == pytest.approx(TOKENS * HOP / SR)

    garbage = client.post("/api/projects/import", data=dict(name="x"),
                          files=dict(file=("data.pth.tar", b"not a checkpoint", "application/octet-stream")))
    assert garbage.status_code == 400 and "cannot be read" in garbage.json()["detail"]
    buffer = io.BytesIO()
    torch.save(dict(zs=[torch.zeros(1, 0, dtype=torch.long)] * 2 + [torch.full((1, 4), 9999)]), buffer)
    foreign = client.post("/api/projects/import", data=dict(name="x"),
                          files=dict(file=("data.pth.tar", buffer.getvalue(), "application/octet-stream")))
    assert foreign.status_code == 400 and "codebook" in foreign.json()["detail"]


@pytest.mark.parametrize("name", ["through_space_mono_16000.wav", "through_space_stereo_44100.flac",
                                  "through_space_stereo_44100.mp3", "through_space_stereo_48000.ogg"])
def test_primed_project_from_an_uploaded_prompt(client, name):
    with open(DATA / "formats" / name, "rb") as f:
        response = client.post("/api/projects/primed", data=dict(name="Primed", prompt_seconds=0.5, total_seconds=4),
                               files=dict(file=(name, f.read(), "application/octet-stream")))
    assert response.status_code == 201, response.text
    job = wait_job(client, response.json())
    project = client.get(f"/api/projects/{job['project']}").json()
    node = next(n for n in project["nodes"] if n["id"] == job["nodes"][0])
    assert node["prompt"] and node["length"] == int(0.5 * SR) // HOP and project["current"] == node["id"]
    job_dir = client.app.state.studio.store.job_folder(project["id"], job["id"])
    assert sorted(p.name for p in job_dir.iterdir()) == ["job.json"]  # the decoded prompt is not kept


def test_bad_uploads_are_refused_and_make_no_project(client):
    before = len(client.get("/api/projects").json())
    text = client.post("/api/projects/primed", data=dict(name="x", prompt_seconds=1),
                       files=dict(file=("song.wav", b"RIFF but not really audio", "audio/wav")))
    assert text.status_code == 400 and "cannot be used" in text.json()["detail"]
    script = client.post("/api/projects/primed", data=dict(name="x", prompt_seconds=1),
                         files=dict(file=("run.sh", b"#!/bin/sh\necho hi", "text/plain")))
    assert script.status_code == 400 and ".wav, .flac, .mp3, .ogg" in script.json()["detail"]
    assert len(client.get("/api/projects").json()) == before


def test_lyric_alignment_of_a_lyric_model(tmp_path, monkeypatch):
    monkeypatch.setenv("JUKEBOX_IDS_DIR", str(IDS_DIR))
    with tiny_model(tmp_path / "tiny"):
        app = create_app(tmp_path / "projects", "tiny_test", token=TOKEN)
        with TestClient(app, base_url="http://localhost", headers=AUTH) as client:
            assert client.get("/api/info").json()["models"][-1]["lyrics"]
            body = dict(name="Lyrics", model="tiny_test", artist="unknown", genre="unknown", lyrics="la la la",
                        total_seconds=2)
            project = client.post("/api/projects", json=body).json()
            job = wait_job(client, client.post(f"/api/projects/{project['id']}/nodes/{project['current']}/continue",
                                               json=dict(count=2, seconds=0.25, seed=0)).json())
            node = job["nodes"][0]
            alignment = client.get(f"/api/projects/{project['id']}/nodes/{node}/alignment").json()
            assert alignment["lyrics"] == "la la la" and alignment["sung"]
            assert all(-1 <= s < len("la la la") for s in alignment["sung"])
            root = project["current"]
            assert client.get(f"/api/projects/{project['id']}/nodes/{root}/alignment").status_code == 404
