"""Jukebox Studio in a real headless Chromium driven by Playwright, with the demo model: create a project, generate
two continuations, play a preview, pick one and extend it, upsample the path watching its progress, download the wav.

``JUKEBOX_STUDIO_SCREENSHOT=docs/studio.png`` also saves a screenshot of the page at the end (the README's)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from helpers.studio import TOKEN, serve_in_thread
from jukebox.studio.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (run scripts/install_chromium.sh)")]
SR, HOP = 22050, 128


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    app = create_app(tmp_path / "projects", "demo", token=TOKEN)
    with serve_in_thread(app) as url, sync_api.sync_playwright() as playwright:
        # Debian's chromium, never a browser of Playwright's own (nothing is downloaded)
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--autoplay-policy=no-user-gesture-required"])
        context = browser.new_context(accept_downloads=True, viewport=dict(width=1280, height=900))
        page = context.new_page()
        page.errors = []
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(f"{url}/?token={TOKEN}")
        try:
            yield page
        finally:
            browser.close()


def _until(page, condition, timeout_s: float = 180.0, what: str = "") -> None:
    """Poll ``condition()`` (locator queries, evaluated through DevTools: the page's policy forbids eval) until true."""
    for _ in range(int(timeout_s * 10)):
        if condition():
            return
        page.wait_for_timeout(100)
    raise TimeoutError(f"waited {timeout_s} s for {what or condition}")


def _generate(page, count: int, seconds: float, seed: int) -> None:
    form = page.locator("#continue")
    form.locator("[name=count]").fill(str(count))
    form.locator("[name=seconds]").fill(str(seconds))
    form.locator("[name=seed]").fill(str(seed))
    done = page.locator("#jobs li[data-kind=continue][data-status=done]")
    before = done.count()
    form.locator("button").click()
    _until(page, lambda: done.count() > before, what="the continuations")


def test_compose_listen_extend_upsample_download(page, tmp_path):
    _until(page, lambda: "demo" in page.locator("#server-info").text_content(), 30, "the page")
    assert "token" not in page.url  # the cookie holds it now

    # 1. create a project
    form = page.locator("#new-project")
    form.locator("[name=name]").fill("Browser song")
    form.locator("[name=total_seconds]").fill("3")
    form.locator("button").click()
    page.wait_for_selector("#project:not([hidden])")
    assert page.locator("#project-name").text_content() == "Browser song"
    assert page.locator("#project-list").get_by_text("Browser song").count() == 1

    # 2. two continuations of 0.4 s from the start, one batch
    _generate(page, 2, 0.4, seed=1)
    _until(page, lambda: page.locator("#tree > li > ul > li audio").count() == 2, 30, "two previews")
    first = page.locator("#tree > li > ul > li").first

    # 3. play a preview
    audio = first.locator("audio").first
    audio.evaluate("a => a.play()")
    _until(page, lambda: audio.evaluate("a => a.currentTime > 0.05 && a.duration > 0.3"), 30, "playback")

    # 4. pick it and extend it by 0.4 s
    nid = first.get_attribute("data-node")
    first.locator("[data-action=pick]").first.click()
    _until(page, lambda: page.locator("#path-audio").get_attribute("data-node") == nid, 30, "the pick")
    _generate(page, 1, 0.4, seed=2)
    extension = page.locator(f"#tree li[data-node='{nid}'] > ul > li")
    assert extension.count() == 1
    extension.locator("[data-action=pick]").first.click()
    child = extension.get_attribute("data-node")
    _until(page, lambda: page.locator("#path-audio").get_attribute("data-node") == child, 30, "the pick")
    assert page.locator("#timeline .segment").count() == 2  # the current path: the continuation, then its extension
    tokens = 2 * (int(0.4 * SR) // HOP)

    # 5. upsample the path and watch the progress to the end
    page.locator("#upsample button").click()
    job = page.locator("#jobs li[data-kind=upsample]")
    job.wait_for()
    seen = set()
    for _ in range(3000):
        status = job.get_attribute("data-status")
        seen.add(float(job.locator("progress").get_attribute("value")))
        if status in ("done", "failed"):
            break
        page.wait_for_timeout(100)
    assert status == "done", job.text_content()
    assert len(seen - {0.0, 1.0}) >= 2, f"progress was not shown as it went: {sorted(seen)}"

    # 6. download the wav
    link = page.locator("#jobs li[data-kind=upsample] a[data-file='item_0.wav']")
    with page.expect_download() as download:
        link.click()
    path = tmp_path / "song.wav"
    download.value.save_as(path)
    audio_data, sr = sf.read(path)
    assert sr == SR and len(audio_data) == tokens * HOP
    assert not page.errors, page.errors  # no script errors, no content-security-policy violations

    screenshot = os.environ.get("JUKEBOX_STUDIO_SCREENSHOT")
    if screenshot:
        page.locator("#path-audio").evaluate("a => { a.pause(); a.currentTime = a.duration * 0.4; }")
        page.screenshot(path=str(Path(screenshot)), full_page=True)
