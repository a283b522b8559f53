"""SIGTERM and SIGINT on a real server process (`python -m voxtral_local`, as users run it).

Requests in flight get VOXTRAL_SHUTDOWN_TIMEOUT seconds; then a stream ends with an error event and a plain
request gets a 503; new connections are refused from the first signal; the process exits with status 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from voxtral_local.testing.audio_files import encode

from .conftest import FIXTURES, free_port
from .server_process import wait_until_serving
from .test_admission import HeldRequest, wait_until

MODEL = "voxtral-tiny"
ROOT = Path(__file__).resolve().parent.parent
EXIT_BOUND_S = 60  # generous: the interpreter's own teardown (torch) takes seconds on a busy machine


@contextmanager
def server_process(model_dir: Path, cwd: Path, **settings: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m voxtral_local` on the tiny model, loaded at startup; yields the process and its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "VOXTRAL_MODEL": str(model_dir),
        "VOXTRAL_PORT": str(port),
        "VOXTRAL_PRELOAD": "true",
        "VOXTRAL_LOG_LEVEL": "warning",
        **{f"VOXTRAL_{name.upper()}": value for name, value in settings.items()},
    }
    process = subprocess.Popen([sys.executable, "-m", "voxtral_local"], env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, seconds=120)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def exit_code(process: subprocess.Popen[bytes], since: float) -> int:
    """The process's exit status, which must come within EXIT_BOUND_S of `since`."""
    code = process.wait(timeout=max(1.0, EXIT_BOUND_S - (time.monotonic() - since)))
    return code


def refused(url: str, seconds: float = 10) -> bool:
    """Whether new connections are refused within `seconds` (uvicorn closes its socket within 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=2)
        except httpx.ConnectError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def long_mp3(speech: np.ndarray) -> bytes:
    """About six minutes of speech (twelve chunks): far longer than any shutdown timeout here."""
    return encode(np.tile(speech, 55), "mp3")


class LongWork:
    """A long plain transcription and a long stream, in flight: the stream has sent its first event."""

    def __init__(self, url: str, audio: bytes) -> None:
        files = {"file": ("long.mp3", audio, "audio/mpeg")}
        self.plain: httpx.Response | None = None
        self.events: list[dict[str, Any]] = []
        self.first = threading.Event()

        def plain() -> None:
            self.plain = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": MODEL}, timeout=300)

        def stream() -> None:
            data = {"model": MODEL, "stream": "true"}
            with httpx.stream("POST", f"{url}/v1/audio/transcriptions", files=files, data=data, timeout=300) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[len("data: ") :]))
                        self.first.set()

        self.threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
        for thread in self.threads:  # the plain request first: it is decoding before the stream's first event
            thread.start()
        assert self.first.wait(120)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(120)

    def assert_stopped_by_shutdown(self) -> None:
        assert self.events[0]["type"] == "transcript.text.delta"
        assert "error" in self.events[-1], self.events[-1]  # the stream's last event, after its first words
        assert self.events[-1]["error"]["code"] == "server_shutting_down"
        assert not any(e.get("type") == "transcript.text.done" for e in self.events)
        assert self.plain is not None and self.plain.status_code == 503
        assert self.plain.json()["error"]["code"] == "server_shutting_down"


def test_work_still_running_at_the_deadline_is_stopped_and_the_process_exits_0(
    tiny_model_dir: Path, long_mp3: bytes, tmp_path: Path
) -> None:
    with server_process(tiny_model_dir, tmp_path, shutdown_timeout="1") as (process, url):
        work = LongWork(url, long_mp3)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        work.join()
        assert exit_code(process, signalled) == 0
    work.assert_stopped_by_shutdown()


# SIGINT takes the same path as SIGTERM (api/shutdown.py); it runs with `-m slow`.
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_a_request_in_flight_completes_and_new_connections_are_refused(
    tiny_model_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    with server_process(tiny_model_dir, tmp_path, max_queue="1") as (process, url):
        files = {"file": ("speech.mp3", (FIXTURES / "speech.mp3").read_bytes(), "audio/mpeg")}
        held = HeldRequest(f"{url}/v1/audio/transcriptions", files=files, data={"model": MODEL})
        # Until it holds the only place (an empty chat is a 400 when admitted, so probing costs nothing).
        wait_until(lambda: httpx.post(f"{url}/v1/chat/completions", json={}).status_code == 429)
        signalled = time.monotonic()
        process.send_signal(sig)
        assert refused(url)
        response = held.release()  # its body arrives after the signal: it is still served
        assert response.status_code == 200 and isinstance(response.json()["text"], str)
        assert exit_code(process, signalled) == 0


@pytest.mark.slow  # the deadline test stops work the same way
def test_a_second_sigint_stops_the_work_at_once(tiny_model_dir: Path, long_mp3: bytes, tmp_path: Path) -> None:
    with server_process(tiny_model_dir, tmp_path, shutdown_timeout="600") as (process, url):
        work = LongWork(url, long_mp3)
        signalled = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert refused(url)  # the first signal has been handled
        process.send_signal(signal.SIGINT)
        work.join()
        assert exit_code(process, signalled) == 0
    work.assert_stopped_by_shutdown()
