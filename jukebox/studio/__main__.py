"""Start Jukebox Studio: ``python -m jukebox.studio [--model=demo] [--projects=studio] [--port=8000]
[--host=127.0.0.1] [--token=...]``. It prints the address to open, with its access token, as Jupyter does."""
from __future__ import annotations

import secrets

import torch

from jukebox.utils.cli import fire_command
from jukebox.utils.dist_utils import print_once

__all__ = ["serve"]


def serve(model: str = "demo", projects: str = "studio", port: int = 8000, host: str = "127.0.0.1",
          token: str | None = None, max_upload_mb: float = 64.0) -> None:
    """Serve the studio for ``projects`` (a folder, created if missing) with ``model`` on this machine's device.

    Any host but a loopback address needs an explicit ``--token`` (the studio is then reachable from the network).
    """
    import uvicorn

    from jukebox.studio.app import create_app
    from jukebox.studio.security import LOCAL_HOSTS

    if host.strip("[]").lower() not in LOCAL_HOSTS and not token:
        raise ValueError(f"--host={host} makes the studio reachable from other machines: pass --token=<a long secret> "
                         "as well (or leave --host at 127.0.0.1)")
    if token is not None and len(str(token)) < 8:
        raise ValueError("--token is too short: use at least 8 characters")
    if not 0 < int(port) < 65536:
        raise ValueError(f"--port={port} is not a TCP port (1-65535)")
    token = str(token) if token else secrets.token_urlsafe(24)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    app = create_app(projects, model, token=token, host=host, port=int(port), device=device,
                     max_upload_mb=max_upload_mb)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print_once(f"Jukebox Studio ({model} on {device}, projects in {app.state.studio.store.root})\n"
               f"Open http://{shown}:{port}/?token={token}")
    uvicorn.run(app, host=host, port=int(port), log_level="warning")


if __name__ == "__main__":
    fire_command(serve, prog="python -m jukebox.studio")
