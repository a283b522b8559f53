"""`python -m voxtral_local` as a subprocess whose combined output (uvicorn's access log, our log) is kept in a
file, for tests of what the real server does and writes at the connection level."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_until_serving(process: subprocess.Popen[bytes], url: str, seconds: float = 60, log: str = "") -> None:
    """Return once the server at `url` answers `/health`; RuntimeError (with `log`) if `process` ends first or
    `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/health", timeout=2)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server process did not start\n{log}".rstrip()) from None
            time.sleep(0.1)


@dataclass
class ServerProcess:
    url: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        """Everything the process has written so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 15) -> str:
        """The log once it contains `text`; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert time.monotonic() < deadline, f"{text!r} not in the log:\n{self.log()}"
            time.sleep(0.05)
        return self.log()

    def connect(self) -> socket.socket:
        """A raw TCP connection to the server."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return sock


def server_env(model_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a server process on `port` serving `model_dir`; `settings` are VOXTRAL_* values
    given without the prefix (`header_timeout_s="1"`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXTRAL_") and k != "FORWARDED_ALLOW_IPS"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", VOXTRAL_MODEL=str(model_dir), VOXTRAL_PORT=str(port))
    env.update({f"VOXTRAL_{name.upper()}": value for name, value in settings.items()})
    return env


def start_process(model_dir: Path, log_path: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """Start the server (it may fail to bind); its output goes to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "voxtral_local"],
            env=server_env(model_dir, port, **settings),
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@contextmanager
def serve_process(model_dir: Path, log_path: Path, **settings: str) -> Iterator[ServerProcess]:
    """A running server process on a free loopback port; terminated (and waited for) on exit."""
    port = free_port()
    process = start_process(model_dir, log_path, port, host="127.0.0.1", **settings)
    server = ServerProcess(f"http://127.0.0.1:{port}", port, log_path, process)
    try:
        try:
            wait_until_serving(process, server.url)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{server.log()}") from None
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
