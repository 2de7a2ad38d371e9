"""Downloads against a local HTTP server that can cut connections, lie about lengths, ignore Range
or answer 404. Nothing here touches the internet."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import HELPERS
from jukebox.utils import remote
from jukebox.utils.remote import DownloadError, cache_dir, cache_path, download, mirror_urls, resolve_path

PAYLOAD = os.urandom(300_000)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.behaviour[path]`` can hold ``status`` (answer with that code),
    ``cut_after`` (close the connection after that many body bytes, for the first ``cuts`` requests),
    ``extra_length`` (announce that many bytes more than exist) and ``ignore_range``."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests.append((self.path, self.headers.get("Range")))
            how = server.behaviour.get(self.path, {})
            cut = how.get("cuts", 1) > 0 and "cut_after" in how
            if cut:
                how["cuts"] = how.get("cuts", 1) - 1
        if "status" in how or self.path not in server.files:
            self.send_error(how.get("status", 404))
            return
        data = server.files[self.path]
        start = 0
        if self.headers.get("Range") and not how.get("ignore_range"):
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body) + how.get("extra_length", 0)))
        self.end_headers()
        if cut:
            body = body[:how["cut_after"]]
        self.wfile.write(body)
        self.wfile.flush()
        if cut or how.get("extra_length"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.behaviour, httpd.requests, httpd.lock = {}, {}, [], threading.Lock()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JUKEBOX_CACHE", str(tmp_path / "cache"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_full_download(server, tmp_path):
    server.files["/w/model.pth.tar"] = PAYLOAD
    dest = download(server.url + "/w/model.pth.tar", tmp_path / "out" / "model.pth.tar",
                    expected_size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.pth.tar.part").exists()
    assert server.requests == [("/w/model.pth.tar", None)]


def test_interrupted_download_resumes_from_partial_bytes(server, tmp_path):
    server.files["/f"] = PAYLOAD
    server.behaviour["/f"] = {"cut_after": 100_000, "cuts": 1}
    dest = tmp_path / "f"
    with pytest.raises(DownloadError, match="truncated"):
        download(server.url + "/f", dest, progress=False, retries=0)
    part = tmp_path / "f.part"
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:100_000]

    download(server.url + "/f", dest, progress=False, retries=0)
    assert server.requests[-1] == ("/f", "bytes=100000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_retries_resume_within_one_call(server, tmp_path):
    server.files["/f"] = PAYLOAD
    server.behaviour["/f"] = {"cut_after": 70_000, "cuts": 2}
    dest = download(server.url + "/f", tmp_path / "f", progress=False, retries=3, backoff_s=0)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=70000-", "bytes=140000-"]


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path):
    server.files["/f"] = PAYLOAD
    server.behaviour["/f"] = {"ignore_range": True}
    (tmp_path / "f.part").write_bytes(b"x" * 5000)  # wrong bytes: must not survive a 200 answer
    dest = download(server.url + "/f", tmp_path / "f", progress=False)
    assert server.requests == [("/f", "bytes=5000-")]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_accepted_on_416(server, tmp_path):
    server.files["/f"] = PAYLOAD
    (tmp_path / "f.part").write_bytes(PAYLOAD)
    dest = download(server.url + "/f", tmp_path / "f", progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_truncated_file_raises_and_leaves_no_final_file(server, tmp_path):
    server.files["/f"] = PAYLOAD
    server.behaviour["/f"] = {"extra_length": 1000}
    dest = tmp_path / "f"
    with pytest.raises(DownloadError, match=r"truncated: got 300000 of 301000 bytes") as info:
        download(server.url + "/f", dest, progress=False, retries=0)
    assert info.value.url == server.url + "/f"
    assert "pass its local path" in str(info.value)
    assert not dest.exists()


def test_404_names_status_and_url(server, tmp_path):
    url = server.url + "/missing.pth.tar"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x", progress=False)
    assert "404" in str(info.value) and url in str(info.value)
    assert len(server.requests) == 1  # a 404 is final, not retried
    assert not (tmp_path / "x").exists()


def test_checksum_mismatch(server, tmp_path):
    server.files["/f"] = PAYLOAD
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(server.url + "/f", tmp_path / "f", sha256="0" * 64, progress=False)
    assert not (tmp_path / "f").exists() and not (tmp_path / "f.part").exists()


def test_expected_size_mismatch(server, tmp_path):
    server.files["/f"] = PAYLOAD
    with pytest.raises(DownloadError, match="size mismatch"):
        download(server.url + "/f", tmp_path / "f", expected_size=len(PAYLOAD) + 1, progress=False)
    assert not (tmp_path / "f").exists()


def test_network_unreachable_is_retried_then_explained(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/f"
    with pytest.raises(DownloadError, match="network unreachable.*gave up after 2 retries") as info:
        download(url, tmp_path / "f", progress=False, retries=2, backoff_s=0)
    assert "manually" in str(info.value)


def test_mirror_urls():
    old = "https://openaipublic.azureedge.net/jukebox/models/5b/vqvae.pth.tar"
    assert mirror_urls(old) == ["https://openaipublic.blob.core.windows.net/jukebox/models/5b/vqvae.pth.tar", old]
    assert mirror_urls("https://example.org/a.pth.tar") == ["https://example.org/a.pth.tar"]


def test_cache_paths_follow_jukebox_cache(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    assert cache_path("https://openaipublic.azureedge.net/jukebox/models/5b/vqvae.pth.tar") == \
        tmp_path / "cache" / "models" / "5b" / "vqvae.pth.tar"
    assert cache_path("http://127.0.0.1:8000/a/b.pt") == tmp_path / "cache" / "127.0.0.1_8000" / "a" / "b.pt"
    with pytest.raises(ValueError, match="does not name a file"):
        cache_path("http://host/a/../../etc/passwd")
    monkeypatch.delenv("JUKEBOX_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "jukebox"


def test_resolve_path_downloads_once_into_cache(server, tmp_path):
    server.files["/models/prior.pth.tar"] = PAYLOAD
    url = server.url + "/models/prior.pth.tar"
    path = resolve_path(url)
    assert Path(path).is_relative_to(tmp_path / "cache") and Path(path).read_bytes() == PAYLOAD
    assert resolve_path(url) == path
    assert len(server.requests) == 1


def test_resolve_path_falls_back_to_next_mirror(server, monkeypatch):
    server.files["/good/vqvae.pth.tar"] = PAYLOAD
    bad, good = server.url + "/bad/vqvae.pth.tar", server.url + "/good/vqvae.pth.tar"
    monkeypatch.setattr(remote, "mirror_urls", lambda url: [bad, good])
    path = resolve_path(server.url + "/wanted/vqvae.pth.tar")
    assert Path(path).read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/bad/vqvae.pth.tar", "/good/vqvae.pth.tar"]


def test_resolve_path_reports_every_failed_mirror(server, monkeypatch):
    urls = [server.url + "/a", server.url + "/b"]
    monkeypatch.setattr(remote, "mirror_urls", lambda url: urls)
    with pytest.raises(DownloadError, match=r"every mirror failed: .*/a: HTTP 404.*/b: HTTP 404"):
        resolve_path(server.url + "/wanted")


def test_resolve_path_local(tmp_path):
    f = tmp_path / "ckpt.pth.tar"
    f.write_bytes(b"x")
    assert resolve_path(f) == str(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_path(tmp_path / "nope.pth.tar")




@pytest.mark.slow
def test_distributed_only_local_rank_zero_downloads(server, tmp_path):
    server.files["/m/prior.pth.tar"] = PAYLOAD
    server.behaviour["/m/prior.pth.tar"] = {"cut_after": 1000, "cuts": 1}  # rank 0 takes a while
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(HELPERS / "resolve_on_rank.py"), server.url + "/m/prior.pth.tar"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]
