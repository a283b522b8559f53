"""Helpers of the VOXTRAL_BACKEND=vllm tests (test_vllm_frontend.py, test_vllm_faults.py): the upstreams are
instances of this very server on loopback ports; faults come from real sockets."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import uvicorn
from openai import OpenAI

from voxtral_local.api import create_app
from voxtral_local.config import Settings
from voxtral_local.testing.audio_files import encode

from .conftest import FIXTURES, free_port

MODEL = "voxtral-tiny"
# Random weights never stop by themselves: each chunk runs to its token cap, 2 per second of audio plus 32 here
# (this server's kind of upstream applies its own cap), which keeps the tests short.
CAP = {"max_tokens_per_audio_second": 2.0}


def sdk(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def health(url: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/health", timeout=10)
    assert answer.status_code == 200
    return dict(answer.json())


def upstream_states(front: str) -> dict[str, dict[str, Any]]:
    """The front's /health `upstreams`, by URL without `/v1`."""
    return {u["url"].removesuffix("/v1"): u for u in health(front)["upstreams"]}


def wait_for(condition: Callable[[], Any], seconds: float = 10, what: str = "the condition") -> Any:
    """Poll `condition` until it is truthy; its value. AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.05)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there once the probe socket is closed


def wav(samples: np.ndarray) -> tuple[str, bytes, str]:
    return ("audio.wav", encode(samples, "wav"), "audio/wav")


def assert_envelope(answer: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert answer.status_code in statuses, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


@contextmanager
def serving_on(port: int, **overrides: Any) -> Iterator[str]:
    """`running_server` on a port chosen beforehand (for an upstream that starts after its front)."""
    settings = Settings(_env_file=None, host="127.0.0.1", port=port, model_ttl=-1, **overrides)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 30, "the server's start")
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class HangingUpstream:
    """A real HTTP server that lists `model` under GET /v1/models (so the health check sees it up) and reads
    every POST but never answers it."""

    def __init__(self, model: str) -> None:
        self.listing = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.posts = 0
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        while not self.stopped.is_set():
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                conn.close()
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, _, rest = buffer.partition(b"\r\n\r\n")
                if head.startswith(b"GET"):
                    response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    conn.sendall(response + str(len(self.listing)).encode() + b"\r\n\r\n" + self.listing)
                    buffer = rest
                else:  # a POST: read on, answer never
                    self.posts += 1
                    self.held.append(conn)
                    buffer = b""
                    while not self.stopped.is_set():
                        try:
                            if not conn.recv(65536):
                                return
                        except OSError:
                            return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.held:
            conn.close()


def audio_message(text: str = "What is said in this recording?") -> Any:
    data = base64.b64encode((FIXTURES / "speech.mp3").read_bytes()).decode()
    return {
        "role": "user",
        "content": [
            {"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}},
            {"type": "text", "text": text},
        ],
    }
