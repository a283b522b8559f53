"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright, against a real uvicorn on
a loopback port with the tiny model. The "microphone" is Chromium's fake capture device playing a WAV file of
espeak-ng speech. With VOXTRAL_SCREENSHOTS=<dir> (e.g. `docs`) each flow leaves a screenshot there.

Skipped, saying why, only where Chromium cannot be found or launched."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from voxtral_local.testing.audio_files import encode, silence
from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model

from .conftest import FIXTURES, running_server
from .hub_mirror import HubMirror, Repo, serve_mirror
from .test_api_pull import REPO, server_process

MODEL = "voxtral-tiny"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
TIMEOUT_MS = 60_000  # generous: the tiny model on a loaded 2-core CI machine


def screenshot(page: Page, name: str) -> None:
    """Keep a screenshot of the page as <VOXTRAL_SCREENSHOTS>/<name>.png when that variable is set."""
    folder = os.environ.get("VOXTRAL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def microphone_wav(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone says, over and over: the fixture sentence, then a second of silence (a pause
    the voice activity detection cuts at). Chromium reads only WAV for this."""
    path = tmp_path_factory.mktemp("microphone") / "speech.wav"
    path.write_bytes(encode(np.concatenate([speech, silence(1.0)]), "wav"))
    return path


@pytest.fixture(scope="module")
def browser(microphone_wav: Path) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium fonts-dejavu-core)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={microphone_wav}",
                    "--autoplay-policy=no-user-gesture-required",
                ],
            )
        except PlaywrightError as exc:
            pytest.skip(f"Chromium at {CHROMIUM} could not be launched: {exc}")
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    context.grant_permissions(["microphone", "clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    yield page
    context.close()


def download_text(page: Page, button: str) -> str:
    with page.expect_download() as info:
        page.click(button)
    path = info.value.path()
    return Path(path).read_text(encoding="utf-8")


def test_upload_streams_the_transcript_and_downloads_the_formats(page: Page, base_url: str, client: OpenAI) -> None:
    """Upload a file: the upload bar reaches 100%, the transcript streams in and ends as the server's own
    transcript, and .txt/.srt/.vtt downloads and the clipboard hold what the server's formats give."""
    page.goto(base_url)
    expect(page.locator("#model-state")).to_contain_text("downloaded")
    expect(page.locator("#model")).to_have_value(MODEL)
    page.set_input_files("#file", str(FIXTURES / "speech.wav"))
    expect(page.locator("#drop-text")).to_contain_text("speech.wav")
    page.click("#transcribe")
    expect(page.locator("#work-text")).to_have_text("done")
    assert page.locator("#upload-progress").evaluate("bar => bar.value") == 100
    assert page.locator("#work-progress").evaluate("bar => bar.value") == 100
    expect(page.locator("#error")).to_be_hidden()

    def expected(response_format: Literal["srt", "vtt"]) -> str:
        with open(FIXTURES / "speech.wav", "rb") as f:
            return str(client.audio.transcriptions.create(model=MODEL, file=f, response_format=response_format))

    with open(FIXTURES / "speech.wav", "rb") as f:
        text = client.audio.transcriptions.create(model=MODEL, file=f).text
    assert text
    expect(page.locator("#transcript")).to_have_text(text)
    assert download_text(page, "#download-txt") == text + "\n"
    srt = download_text(page, "#download-srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and srt == expected("srt")
    vtt = download_text(page, "#download-vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ") and vtt == expected("vtt")
    page.click("#copy")
    expect(page.locator("#copy-text")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == text
    screenshot(page, "web-upload")


def record_until_an_utterance_completes(page: Page) -> None:
    """Start recording on the Microphone tab and wait until the fake microphone's sentence has come back as
    one completed utterance (the server's voice activity detection ends it at the pause)."""
    page.click("#tab-mic")
    page.click("#record")
    expect(page.locator("#record")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#mic-state")).not_to_have_text("Connecting…")
    expect(page.locator("#utterances li.done").first).not_to_be_empty()
    expect(page.locator("#error")).to_be_hidden()


@pytest.mark.slow  # the page's microphone runs in the default loop with the key and with a realtime model
def test_microphone_shows_the_live_transcript(page: Page, base_url: str) -> None:
    """Record from the (fake) microphone: the audio goes over /v1/realtime, each utterance's text appears as
    it is transcribed; stopping ends the session and the text can be copied."""
    page.goto(base_url)
    expect(page.locator("#model")).to_have_value(MODEL)
    record_until_an_utterance_completes(page)
    screenshot(page, "web-microphone")
    page.click("#record")
    expect(page.locator("#mic-state")).to_have_text("Not recording")
    expect(page.locator("#record")).to_have_text("Start recording")
    text = page.locator("#utterances li.done").first.inner_text()
    assert text.strip()
    page.click("#copy-live")
    assert text in page.evaluate("navigator.clipboard.readText()")


def test_the_microphone_takes_the_realtime_model_and_its_text_streams_in(
    page: Page, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With a realtime model served next to the default one, /v1/models marks it `realtime`, the Microphone tab
    selects it, and the fake microphone's words come back through it (deltas while speaking, then the
    completed utterance)."""
    realtime_dir = build_tiny_realtime_model(tmp_path / "voxtral-realtime-tiny")
    with running_server(model=str(tiny_model_dir), models=str(realtime_dir)) as url:
        listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert listed["voxtral-realtime-tiny"]["realtime"] is True and listed[MODEL]["realtime"] is False
        page.goto(url)
        expect(page.locator("#model")).to_have_value(MODEL)  # the default model, for files
        expect(page.locator("#model-state")).to_contain_text("downloaded")
        record_until_an_utterance_completes(page)
        expect(page.locator("#model")).to_have_value("voxtral-realtime-tiny")
        expect(page.locator("#model-state")).to_contain_text("live")
        assert page.locator("#utterances li.done").first.inner_text().strip()
        page.click("#record")
        expect(page.locator("#mic-state")).to_have_text("Not recording")


def test_a_server_error_is_shown_with_its_message(page: Page, base_url: str) -> None:
    """A file that is not audio: the server's 400 message is on the page; nothing to download."""
    page.goto(base_url)
    expect(page.locator("#model")).to_have_value(MODEL)
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not audio at all"})
    page.click("#transcribe")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("audio")
    expect(page.locator("#work-text")).to_have_text("failed")
    expect(page.locator("#download-srt")).to_be_disabled()


def test_the_api_key_is_asked_for_and_then_sent(page: Page, tiny_model_dir: Path) -> None:
    """With VOXTRAL_API_KEY set the page itself loads, the model list shows the server's 401 message until
    the key is entered, and with the key (kept in localStorage) the models load (the key goes as
    `Authorization`, as on every HTTP request the page makes) and the microphone works (the key goes as the
    WebSocket subprotocol)."""
    with running_server(model=str(tiny_model_dir), api_key="page-secret") as url:
        page.goto(url)
        expect(page.locator("#error-text")).to_contain_text("You didn't provide an API key")
        screenshot(page, "web-api-key")
        page.fill("#api-key", "wrong")
        page.click("#key-form button")
        expect(page.locator("#error-text")).to_contain_text("Incorrect API key")
        expect(page.locator("#error-text")).to_contain_text("Enter the server's API key")
        page.click("#tab-mic")
        page.click("#record")  # the WebSocket handshake is refused too
        expect(page.locator("#error-text")).to_contain_text("connection was refused")
        expect(page.locator("#record")).to_have_text("Start recording")
        page.fill("#api-key", "page-secret")
        page.click("#key-form button")
        expect(page.locator("#model")).to_have_value(MODEL)
        expect(page.locator("#error")).to_be_hidden()
        page.reload()  # the key is remembered
        expect(page.locator("#api-key")).to_have_value("page-secret")
        expect(page.locator("#model")).to_have_value(MODEL)
        record_until_an_utterance_completes(page)  # the key goes as the WebSocket subprotocol


@pytest.mark.slow  # a server process of its own (tens of seconds); the pull itself is tests/test_api_pull.py's
def test_a_model_not_downloaded_is_pulled_with_a_progress_bar(page: Page, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A served hub model not in the cache says so; its download button pulls it from a hub mirror on a
    loopback port, the bar shows the bytes as they come, and the model is then listed as downloaded."""
    with serve_mirror(HubMirror(repos={REPO: Repo(tiny_model_dir)})) as mirror, server_process(mirror, tmp_path) as url:
        mirror.bytes_per_second = 1_000_000  # the 3.3 MB weights take a few seconds
        page.goto(url)
        expect(page.locator("#model")).to_have_value(REPO)
        expect(page.locator("#model-state")).to_contain_text("not downloaded")
        page.click("#pull")
        expect(page.locator("#pull-text")).to_contain_text(" of ")  # "1.2 MB of 3.6 MB (2/6 files)"
        screenshot(page, "web-pull")
        expect(page.locator("#pull-text")).to_have_text("Downloaded.")
        expect(page.locator("#model-state")).to_contain_text(f"{REPO}: downloaded")
        assert page.locator("#pull-progress").evaluate("bar => bar.value === bar.max")
        expect(page.locator("#pull")).to_be_hidden()  # nothing left to download
        expect(page.locator("#error")).to_be_hidden()


def test_page_and_assets_are_served_open_and_outside_the_api_schema(tiny_model_dir: Path) -> None:
    """GET / is the HTML page (with a same-origin-only content security policy), /web/ its files, both
    without the API key; a missing file is a 404 envelope; the page is not in the OpenAPI schema."""
    with running_server(model=str(tiny_model_dir), api_key="k") as url:
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<script type="module" src="/web/app.js">' in page.text
        for name, media_type in [("app.js", "javascript"), ("mic-worklet.js", "javascript"), ("style.css", "css")]:
            asset = httpx.get(f"{url}/web/{name}")
            assert asset.status_code == 200 and media_type in asset.headers["content-type"]
            assert asset.headers["x-content-type-options"] == "nosniff"
        missing = httpx.get(f"{url}/web/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["message"]
        assert httpx.get(f"{url}/v1/models").status_code == 401
        paths = httpx.get(f"{url}/openapi.json", headers={"Authorization": "Bearer k"}).json()["paths"]
        assert "/" not in paths and not any(path.startswith("/web") for path in paths)
