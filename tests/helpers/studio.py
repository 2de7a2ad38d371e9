"""Helpers of the Jukebox Studio tests: waiting for jobs, and a studio served by uvicorn in a thread or a process."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

TOKEN = "studio-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_job(client: Any, job: dict, timeout: float = 300.0) -> dict:
    """Poll the job until it is done or failed; its final state (a failed job fails the test with its error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/projects/{job['project']}/jobs/{job['id']}").json()
        if job["status"] in ("done", "failed"):
            assert job["status"] == "done", job["error"]
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job['id']} ({job['kind']}) not finished after {timeout} s: {job}")


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 with uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the studio did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def start_server_process(args: list[str], port: int, log: Path) -> subprocess.Popen:
    """``python <args>`` (a studio command line) in its own process; returns once it answers on ``port``."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/info", headers=AUTH, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the studio did not answer on port {port}: {log.read_text()[-2000:]}")
