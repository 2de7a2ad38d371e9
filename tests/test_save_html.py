"""The sample viewer: files written, user text escaped, and (in headless Chromium) the sung lyric
character highlighted as the audio plays."""
from __future__ import annotations

import fcntl
import html
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from jukebox.save_html import alignment_frames, save_html, script_json

SR = 8000
HOSTILE_LYRICS = ('<script>window.pwned=1</script> "double" \'single\' & </script>'
                  '<img src=x onerror="window.pwned=2"> la la la\u2028line two\u2029 <!-- end')
HOSTILE_ARTIST = '<b onmouseover="window.pwned=3">Artist</b>'
HOSTILE_GENRE = '</title><script>window.pwned=4</script>'


def _diagonal_alignment(n_tokens: int, n_chars: int) -> np.ndarray:
    """Attention walking through the columns 1..n_chars-1 at constant speed (column j is char j-1)."""
    a = np.zeros((n_tokens, n_chars), np.float32)
    a[np.arange(n_tokens), 1 + np.arange(n_tokens) * (n_chars - 1) // n_tokens] = 0.9
    return a


def _write_sample(logdir: Path, seconds: float = 3.0, n_tokens: int = 320) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(SR * seconds)) / SR
    x = (0.25 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :, None]
    alignment = _diagonal_alignment(n_tokens, len(HOSTILE_LYRICS))
    labels = [dict(artist=HOSTILE_ARTIST, genre=HOSTILE_GENRE, lyrics=HOSTILE_LYRICS)]
    save_html(logdir, torch.from_numpy(x), [torch.zeros(1, n_tokens * 4), torch.zeros(1, n_tokens)], labels,
              [alignment], {"sr": SR})
    return x, alignment


def _script_json_payload(page: str) -> str:
    match = re.search(r'<script type="application/json" id="jukebox-data">(.*?)</script>', page, re.S)
    assert match is not None
    return match.group(1)


def test_files_and_escaping(tmp_path):
    x, alignment = _write_sample(tmp_path)
    item = tmp_path / "item_0"
    assert {p.name for p in tmp_path.iterdir()} == {"index.html", "item_0"}
    assert {p.name for p in item.iterdir()} == {"index.html", "audio.wav", "align.json", "align.png"}

    wav, sr = soundfile.read(item / "audio.wav", dtype="float32")
    assert sr == SR and np.allclose(wav, x[0, :, 0], atol=1 / 2 ** 15)

    for page in ((item / "index.html").read_text("utf-8"), (tmp_path / "index.html").read_text("utf-8")):
        assert "<script>window" not in page and "<img src=x" not in page and "<b onmouseover" not in page
        # Only relative links into the sample directory: nothing external is loaded.
        assert re.search(r'(src|href)="(?!item_|audio\.wav|align\.png|\.\./index\.html|data:)', page) is None
    item_page = (item / "index.html").read_text("utf-8")
    assert html.escape(HOSTILE_ARTIST) in item_page and html.escape(HOSTILE_GENRE) in item_page
    assert html.escape(HOSTILE_LYRICS) in (tmp_path / "index.html").read_text("utf-8")

    # Exactly two script elements, the data block ends at its own </script>, and decodes to the inputs.
    assert item_page.count("<script") == 2 and item_page.count("</script>") == 2
    payload = _script_json_payload(item_page)
    assert not set(payload) & {"<", ">", "&", "\u2028", "\u2029"}
    data = json.loads(payload)
    assert (data["lyrics"], data["artist"], data["genre"]) == (HOSTILE_LYRICS, HOSTILE_ARTIST, HOSTILE_GENRE)
    assert len(data["sung"]) == alignment.shape[0] // 16


def test_script_json_round_trips_every_special_character():
    value = {"s": "</script><!-- \u2028\u2029 & <> \"' \\ é 𝄞", "n": [1, -1]}
    text = script_json(value)
    assert re.search(r"[<>&\u2028\u2029]", text) is None
    assert json.loads(text) == value


def test_align_json_and_png(tmp_path):
    n_frames, lyrics = 20, "one two three four five six seven eight nine ten"
    # Frame f (16 tokens) mostly attends column 1 + 2f, i.e. character 2f, with a weaker pull one ahead.
    alignment = np.zeros((16 * n_frames, len(lyrics)), np.float32)
    for f in range(n_frames):
        alignment[16 * f:16 * f + 12, 1 + 2 * f] = 0.8
        alignment[16 * f + 12:16 * (f + 1), 2 + 2 * f] = 0.6
    x = np.zeros((1, SR, 1), np.float32)
    save_html(tmp_path, x, [np.zeros((1, 16 * n_frames))], [dict(artist="a", genre="g", lyrics=lyrics)],
              [alignment], {"sr": SR})
    record = json.loads((tmp_path / "item_0" / "align.json").read_text("utf-8"))
    assert record["frames"] == n_frames and record["lyrics"] == lyrics and record["sr"] == SR
    assert record["sung"] == [2 * f for f in range(n_frames)]
    weights = np.array(record["weights"])
    n_used = 2 * n_frames  # columns 1..2*n_frames are attended; column j is character j - 1
    assert weights.shape == (n_frames, n_used)
    assert weights[0, :3].tolist() == [round(0.8 * 12 / 16 * 255), round(0.6 * 4 / 16 * 255), 0]

    image = Image.open(tmp_path / "item_0" / "align.png")
    assert image.size == (1024, 512)
    pixels = np.asarray(image).astype(np.float32)
    # Time runs left to right and the first character is at the bottom: the diagonal rises.
    assert pixels[-60:, :100].mean() > 5 * pixels[:60, :100].mean()
    assert pixels[:60, -100:].mean() > 5 * pixels[-60:, -100:].mean()


def test_alignment_frames_trims_unattended_columns_and_marks_silence():
    a = np.zeros((8, 10), np.float32)
    a[:4, 0] = 1.0  # "before the first character"
    a[4:, 3] = 0.5
    weights, sung = alignment_frames(a, 2)
    assert sung.tolist() == [-1, 2]
    assert weights.shape == (2, 3) and weights.tolist() == [[0, 0, 0], [0, 0, 128]]
    with pytest.raises(ValueError, match="n_frames"):
        alignment_frames(a, 9)


def test_original_label_format_and_items_without_alignment(tmp_path):
    x = np.zeros((2, SR, 1), np.float32)
    labels = {"info": [dict(artist="a", genre="g", lyrics="abc"), dict(artist="b", genre="h", lyrics="")]}
    save_html(tmp_path, x, None, labels, None, {"sr": SR})
    for i in range(2):
        assert {p.name for p in (tmp_path / f"item_{i}").iterdir()} == {"index.html", "audio.wav"}
        assert json.loads(_script_json_payload((tmp_path / f"item_{i}" / "index.html").read_text()))["sung"] == []
    index = (tmp_path / "index.html").read_text()
    assert 'src="item_0/audio.wav"' in index and 'href="item_1/index.html"' in index


def test_bad_inputs_are_explained(tmp_path):
    x = np.zeros((1, SR, 1), np.float32)
    label = [dict(artist="a", genre="g", lyrics="abc")]
    with pytest.raises(ValueError, match=r"len\(lyrics\)=3"):
        save_html(tmp_path, x, None, label, [np.zeros((16, 4))], {"sr": SR})
    with pytest.raises(ValueError, match="top-level codes have 32 tokens"):
        save_html(tmp_path, x, [torch.zeros(1, 32)], label, [np.zeros((16, 3))], {"sr": SR})
    with pytest.raises(ValueError, match="2 labels for 1 audio"):
        save_html(tmp_path, x, None, label * 2, None, {"sr": SR})
    with pytest.raises(ValueError, match="shape"):
        save_html(tmp_path, np.zeros((1, 2, 3, 4)), None, label, None, {"sr": SR})
    with pytest.raises(ValueError, match="hps.sr"):
        save_html(tmp_path, x, None, label, None, {})


# --- headless Chromium, driven over the DevTools protocol on a pipe (no extra Python packages) ---

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                  "--remote-debugging-pipe"]


def _high_fd(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more, so mapping onto 3 and 4 cannot clobber it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """Minimal DevTools-protocol client: Chromium reads commands from its fd 3 and answers on fd 4,
    one JSON message per NUL-terminated frame."""

    def __init__(self, user_data_dir: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = _high_fd(to_browser_r), _high_fd(from_browser_w)
        # bash (unlike dash) redirects descriptors above 9: it maps our pipe ends onto 3 and 4.
        launcher = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c", launcher, CHROMIUM, *CHROMIUM_FLAGS,
             f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.session = b"", 0, None

    def send(self, method: str, timeout_s: float = 30.0, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                    raise TimeoutError(f"no answer from Chromium to {method}")
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.proc.poll()}) during {method}")
                self._buffer += chunk
            frame, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(frame)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open_page(self) -> None:
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _serve(directory: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/index.html", timeout=1).close()
            return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("python -m http.server did not come up") from None
            time.sleep(0.1)


def _wait_for(devtools: DevTools, expression: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not (value := devtools.evaluate(expression)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s} s for {expression}")
        time.sleep(0.05)
    return value


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run scripts/install_chromium.sh)")
def test_browser_highlights_sung_character_and_shows_hostile_text_as_text(tmp_path):
    seconds = 3.0
    _write_sample(tmp_path / "sample", seconds=seconds)
    data = json.loads(_script_json_payload((tmp_path / "sample" / "item_0" / "index.html").read_text()))
    server, url = _serve(tmp_path / "sample")
    devtools = DevTools(tmp_path / "profile")
    try:
        devtools.open_page()
        devtools.send("Page.navigate", url=url + "/item_0/index.html")
        _wait_for(devtools, "document.readyState === 'complete' && document.querySelector('#lyrics span') !== null")

        assert devtools.evaluate("typeof window.pwned") == "undefined"
        text = devtools.evaluate("document.body.innerText")
        assert '<script>window.pwned=1</script>' in text and HOSTILE_ARTIST in text and HOSTILE_GENRE in text
        assert devtools.evaluate("document.getElementById('lyrics').textContent") == HOSTILE_LYRICS
        assert devtools.evaluate("document.querySelectorAll('img').length") == 1  # align.png only

        devtools.evaluate("document.getElementById('audio').play().then(() => true)")
        seen = []  # (currentTime, highlighted index, highlighted character)
        probe = ("(() => { const a = document.getElementById('audio'), s = document.querySelector('#lyrics .sung');"
                 " return [a.currentTime, a.duration, s ? Number(s.dataset.i) : -1, s ? s.textContent : null,"
                 " document.querySelectorAll('#lyrics .sung').length]; })()")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            current, duration, index, char, n_sung = devtools.evaluate(probe)
            assert n_sung <= 1
            if index >= 0:
                seen.append((current, index, char))
            if current > 0.8 * seconds:
                break
            time.sleep(0.1)
        assert abs(duration - seconds) < 0.05
        assert devtools.evaluate("typeof window.pwned") == "undefined"
    finally:
        devtools.close()
        server.terminate()
        server.wait()

    assert len(seen) >= 5, f"playback did not advance the highlight: {seen}"
    indices = [i for _, i, _ in seen]
    assert indices == sorted(indices) and indices[-1] > indices[0] + 10
    n_frames = len(data["sung"])
    for current, index, char in seen:
        assert char == HOSTILE_LYRICS[index]
        # The page updates the highlight on animation frames, so it may trail `current` a little.
        frame = min(n_frames - 1, int(current / seconds * n_frames))
        assert index in data["sung"][max(0, frame - 3):frame + 1]
