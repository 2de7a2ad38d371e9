"""Time Jukebox Studio's two costly steps through its API, with the demo model on this machine's device:
the preview of K x S s continuations (three requests: the first one also loads the model), and upsampling a node.

    python scripts/studio_timing.py [--count=2] [--seconds=2] [--upsample_seconds=4] [--projects=/tmp/studio-timing]
"""
from __future__ import annotations

import os
import shutil
import time

from fastapi.testclient import TestClient

from jukebox.studio.app import create_app
from jukebox.utils.cli import fire_command

TOKEN = "studio-timing-token"


def _wait(client: TestClient, job: dict) -> dict:
    while job["status"] not in ("done", "failed"):
        time.sleep(0.05)
        job = client.get(f"/api/projects/{job['project']}/jobs/{job['id']}").json()
    if job["status"] == "failed":
        raise RuntimeError(f"{job['kind']} failed: {job['error']}")
    return job


def main(count: int = 2, seconds: float = 2.0, upsample_seconds: float = 4.0,
         projects: str = "/tmp/studio-timing") -> None:
    shutil.rmtree(projects, ignore_errors=True)
    app = create_app(projects, "demo", token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        project = client.post("/api/projects", json=dict(name="timing", total_seconds=60)).json()
        pid, root = project["id"], project["current"]
        for request in range(3):
            job = _wait(client, client.post(f"/api/projects/{pid}/nodes/{root}/continue",
                                            json=dict(count=count, seconds=seconds, seed=request)).json())
            print(f"preview of {count} x {seconds} s, request {request + 1}: {job['finished'] - job['started']:.1f} s")
        node = _wait(client, client.post(f"/api/projects/{pid}/nodes/{root}/continue",
                                         json=dict(count=1, seconds=upsample_seconds, seed=9)).json())["nodes"][0]
        job = _wait(client, client.post(f"/api/projects/{pid}/nodes/{node}/upsample", json=dict(seed=1)).json())
        print(f"upsampling {upsample_seconds} s: {job['finished'] - job['started']:.1f} s")
    print("load average over 1, 5, 15 min: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    fire_command(main, prog="python scripts/studio_timing.py")
