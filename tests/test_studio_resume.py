"""Jukebox Studio's upsampling survives a SIGKILL of the server: restarted, it resumes the job from its last saved
window, and the codes equal those of an uninterrupted run: sample.py's, upsampling the studio's exported codes."""
from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
import torch

from conftest import HELPERS, IDS_DIR
from helpers.studio import AUTH, TOKEN, free_port, start_server_process, wait_job
from helpers.tiny_model import SR, tiny_model
from jukebox import sample
from jukebox.utils.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow
TOP_TOKENS, TOP_HOP = 32, 16  # 0.25 s of the tiny model: 7 windows on level 1, 15 on level 0


def test_killed_upsampling_resumes_to_the_codes_of_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("JUKEBOX_IDS_DIR", str(IDS_DIR))
    with tiny_model(tmp_path / "tiny") as checkpoints:
        port, projects = free_port(), tmp_path / "projects"
        command = [str(HELPERS / "studio_server.py"), str(checkpoints), "--model=tiny_test", f"--projects={projects}",
                   f"--port={port}", f"--token={TOKEN}"]
        server = start_server_process(command, port, tmp_path / "server.log")
        assert f"Open http://127.0.0.1:{port}/?token={TOKEN}" in (tmp_path / "server.log").read_text()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30)
        try:
            torch.manual_seed(0)
            codes = tmp_path / "codes.pth.tar"
            top = torch.randint(0, 16, (1, TOP_TOKENS))
            save_checkpoint(codes, dict(zs=[torch.zeros(1, 0, dtype=torch.long)] * 2 + [top]))
            imported = client.post("/api/projects/import", data=dict(name="Resume", model="tiny_test", total_seconds=4),
                                   files=dict(file=("data.pth.tar", codes.read_bytes())))
            assert imported.status_code == 201, imported.text
            pid = imported.json()["project"]
            nid = wait_job(client, imported.json())["nodes"][0]
            job = client.post(f"/api/projects/{pid}/nodes/{nid}/upsample", json=dict(seed=11)).json()
            deadline = time.monotonic() + 120
            while True:
                state = client.get(f"/api/projects/{pid}/jobs/{job['id']}").json()
                if state["status"] == "running" and state["level"] == 0 and 0.5 < state["progress"] < 0.9:
                    break
                assert state["status"] != "done", "the job finished before it could be killed; make it longer"
                assert time.monotonic() < deadline, state
                time.sleep(0.02)
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            job_dir = projects / pid / "jobs" / job["id"]
            saved = load_checkpoint(job_dir / "progress.pth.tar")
            assert saved["level"] == 0 and 0 < saved["windows_done"]

            server = start_server_process(command, port, tmp_path / "server.log")
            done = wait_job(client, job, timeout=300)
            assert done["files"] == ["level_0/item_0.wav", "level_0/data.pth.tar", "level_0/index.html"]
            resumed = torch.load(job_dir / "level_0" / "data.pth.tar", weights_only=True)["zs"]
            export = tmp_path / "export.pth.tar"
            export.write_bytes(client.get(f"/api/projects/{pid}/nodes/{nid}/codes.pth.tar").content)
        finally:
            client.close()
            server.send_signal(signal.SIGTERM)
            server.wait(30)

        # an uninterrupted run: sample.py upsampling the studio's exported codes with the same settings and seed
        project = load_checkpoint(export)
        sample.main(["--model=tiny_test", f"--name={tmp_path / 'uninterrupted'}", "--levels=3", "--mode=upsample",
                     f"--codes_file={export}", f"--sample_length={TOP_TOKENS * TOP_HOP}", "--n_samples=1",
                     "--total_sample_length_in_seconds=4", f"--sr={SR}", "--hop_fraction=0.5,0.5,0.125",
                     "--fp16=False", "--seed=11"])
        uninterrupted = torch.load(tmp_path / "uninterrupted" / "level_0" / "data.pth.tar", weights_only=True)["zs"]
        assert project["zs"][-1].shape == (1, TOP_TOKENS)
        assert [z.shape[1] for z in resumed] == [TOP_TOKENS * 4, TOP_TOKENS * 2, TOP_TOKENS]
        for level, (a, b) in enumerate(zip(resumed, uninterrupted)):
            assert torch.equal(a, b), f"level {level} differs from the uninterrupted run"
