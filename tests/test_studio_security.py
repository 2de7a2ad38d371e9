"""Jukebox Studio against the web pages a user visits: the token on every request, the Host header (DNS rebinding),
names that try to leave the projects folder, oversized uploads, hostile text in the page, and the command line's
refusal to listen beyond this machine without a token."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from helpers.studio import AUTH, TOKEN, serve_in_thread
from jukebox.studio.__main__ import serve
from jukebox.studio.app import create_app
from jukebox.utils.cli import fire_command

HOSTILE_NAME = '<img src=x onerror="window.pwned=1">"; DROP TABLE projects; --'
HOSTILE_LYRICS = "</pre></script><script>window.pwned=2</script>\n<b onclick=alert(1)>la</b>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def app(tmp_path):
    return create_app(tmp_path / "projects", "demo", token=TOKEN, port=8123, max_upload_mb=0.05)


def test_every_request_needs_the_token(app):
    with TestClient(app, base_url="http://127.0.0.1:8123") as client:
        for path in ("/", "/api/info", "/api/projects", "/openapi.json", "/static/app.js"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            assert client.get(path, headers=AUTH).status_code == 200, path
        refused = client.post("/api/projects", json=dict(name="x"))
        assert refused.status_code == 401 and "token" in refused.json()["detail"]
        assert client.get("/api/projects?token=wrong").status_code == 401
        first = client.get(f"/?token={TOKEN}")  # the address printed at start
        assert first.status_code == 200 and "SameSite=Strict" in first.headers["set-cookie"]
        assert client.get("/api/projects").status_code == 200  # the cookie now carries the token
        client.cookies.clear()
        client.cookies.set("jukebox_studio_8123", "wrong")
        assert client.get("/api/projects").status_code == 401


def test_responses_say_how_the_browser_may_use_them(app):
    with TestClient(app, base_url="http://127.0.0.1:8123", headers=AUTH) as client:
        headers = client.get("/").headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("host, bound, status", [
    ("evil.example", "127.0.0.1", 400),            # DNS rebinding: a foreign name for 127.0.0.1
    ("evil.example:8123", "127.0.0.1", 400),
    ("localhost:8123", "127.0.0.1", 200),
    ("127.0.0.1:8123", "127.0.0.1", 200),
    ("192.168.1.5:8123", "192.168.1.5", 200),      # the bound address
    ("evil.example", "192.168.1.5", 400),
    ("anything.lan", "0.0.0.0", 200),              # all interfaces: the token is the guard (it needs --token)
])
def test_a_foreign_host_header_is_refused(tmp_path, host, bound, status):
    app = create_app(tmp_path / "projects", "demo", token=TOKEN, host=bound)
    with TestClient(app, base_url="http://127.0.0.1:8123") as client:
        assert client.get("/api/info", headers={**AUTH, "Host": host}).status_code == status


def test_names_cannot_leave_the_projects_folder(app, tmp_path):
    with TestClient(app, base_url="http://127.0.0.1:8123", headers=AUTH) as client:
        project = client.post("/api/projects", json=dict(name="../../outside", total_seconds=2)).json()
        assert project["name"] == "../../outside"  # a name is text; the folder is the studio's id
        assert sorted(p.name for p in (tmp_path / "projects").iterdir()) == [project["id"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["projects"]
        pid, root = project["id"], project["current"]
        for path in ("/api/projects/..%2F..%2Fetc", "/api/projects/%2e%2e", f"/api/projects/{pid}%2F..%2F{pid}",
                     f"/api/projects/{pid}/nodes/..%2Fproject.json/preview.wav",
                     f"/api/projects/{pid}/nodes/{root}%2F..%2F..%2Fproject/codes.pth.tar",
                     f"/api/projects/{pid}/jobs/..%2F..%2F{pid}",
                     f"/api/projects/{pid}/jobs/{'0' * 12}/files/..%2F..%2Fproject.json",
                     "/api/projects/%2Fetc%2Fpasswd"):
            response = client.get(path)
            assert response.status_code == 404, (path, response.text)
        assert client.delete("/api/projects/..%2Fprojects").status_code == 404
        assert (tmp_path / "projects" / pid / "project.json").is_file()


def test_oversized_uploads_are_refused(app):
    with TestClient(app, base_url="http://127.0.0.1:8123", headers=AUTH) as client:
        big = b"\0" * 200_000
        response = client.post("/api/projects/primed", data=dict(name="x", prompt_seconds=1),
                               files=dict(file=("big.wav", big, "audio/wav")))
        assert response.status_code == 413

        def chunks():  # no Content-Length: the limit holds on the bytes that arrive
            for _ in range(40):
                yield b"\0" * 10_000

        streamed = client.post("/api/projects/import", content=chunks(),
                               headers={"Content-Type": "multipart/form-data; boundary=x"})
        assert streamed.status_code == 413
        assert client.get("/api/projects").json() == []


@pytest.mark.parametrize("args, words", [
    (["--host=0.0.0.0"], "--token"),
    (["--host=192.168.1.5", "--token=short"], "too short"),
    (["--port=70000"], "not a TCP port"),
    (["--modle=demo"], "did you mean --model"),
    (["--model=6b"], "unknown model"),
])
def test_command_line_refuses_bad_options_in_one_line(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as exit_:
        fire_command(serve, [f"--projects={tmp_path}", *args], prog="python -m jukebox.studio")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and words in err and len(err.splitlines()) == 1


def test_module_refuses_to_listen_beyond_this_machine_without_a_token(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jukebox.studio", f"--projects={tmp_path}", "--host=0.0.0.0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: --host=0.0.0.0") and "--token" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run scripts/install_chromium.sh)")
def test_hostile_names_and_lyrics_stay_text_in_the_page(app):
    sync_api = pytest.importorskip("playwright.sync_api")
    with TestClient(app, base_url="http://127.0.0.1:8123", headers=AUTH) as client:
        pid = client.post("/api/projects", json=dict(name=HOSTILE_NAME, lyrics=HOSTILE_LYRICS, artist=HOSTILE_NAME,
                                                     total_seconds=2)).json()["id"]
    with serve_in_thread(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{url}/?token={TOKEN}")
            page.locator(f"#project-list [data-project='{pid}']").click()
            page.locator("#project:not([hidden])").wait_for()
            assert page.locator("#project-name").text_content() == HOSTILE_NAME
            assert page.locator("#project-list button").first.text_content() == HOSTILE_NAME
            assert page.locator("#project-lyrics").text_content() == HOSTILE_LYRICS
            assert page.locator("img").count() == 0 and page.locator("#project b").count() == 0
            assert page.locator("script").count() == 1  # app.js only
            assert page.evaluate("typeof window.pwned") == "undefined" and not dialogs
        finally:
            browser.close()
