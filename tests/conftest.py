"""Shared fixtures: tiny real Voxtral checkpoints and real uvicorn servers on loopback ports."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from openai import OpenAI

from voxtral_local.api import create_app
from voxtral_local.api.app import model_registry
from voxtral_local.audio.decode import decode_audio
from voxtral_local.backends.transformers import TransformersBackend
from voxtral_local.config import Settings
from voxtral_local.models.registry import ModelRegistry
from voxtral_local.services.transcription import TranscriptionRequest, TranscriptionService
from voxtral_local.testing.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FIXTURES = Path(__file__).parent / "fixtures"
FORMATS = ["wav", "mp3", "m4a", "flac", "ogg", "opus", "webm", "mp4", "mov"]
# The app behind each running server's URL, for tests that inspect or inject faults into its backend.
APPS: dict[str, FastAPI] = {}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "voxtral-tiny")


@pytest.fixture(scope="session")
def silent_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "voxtral-silent", silent=True)


def make_backend(model_dir: Path, **overrides: Any) -> TransformersBackend:
    """A backend (not loaded) for the checkpoint in `model_dir`, served as the directory's name, with
    `overrides` as its settings."""
    return TransformersBackend(model_dir.name, model_dir, Settings(_env_file=None, model=str(model_dir), **overrides))


def loaded_backend(models: ModelRegistry, name: str | None = None) -> TransformersBackend:
    """The backend of the model `name` means (default: the default model), loaded."""
    with models.use(name or models.catalog.default.id) as backend:
        assert isinstance(backend, TransformersBackend)
        return backend


def backend_of(url: str) -> TransformersBackend:
    """The default model's backend of the server at `url` (loaded), for tests that inspect or inject faults."""
    return loaded_backend(APPS[url].state.models)


def request_for(service: TranscriptionService, audio: Any, **fields: Any) -> TranscriptionRequest:
    """A request for `audio` to the service's default model; `fields` are the request's other fields."""
    return TranscriptionRequest(model=service.models.catalog.default.id, audio=audio, **fields)


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> TranscriptionService:
    """A transcription service on the tiny model (served as `voxtral-tiny`), loaded, without a server."""
    settings = Settings(_env_file=None, model=str(tiny_model_dir))
    service = TranscriptionService(settings, model_registry(settings))
    loaded_backend(service.models)
    return service


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """The fixture sentence, decoded to mono 16 kHz."""
    return decode_audio((FIXTURES / "speech.wav").read_bytes(), max_seconds=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(**overrides: Any) -> Iterator[str]:
    """Serve `create_app(Settings(**overrides))` with uvicorn on a loopback port; yield its base URL. Models
    stay loaded (`model_ttl=-1`) unless `overrides` say otherwise, so that no test loses a backend it patched to
    an idle unload."""
    settings = Settings(_env_file=None, host="127.0.0.1", port=free_port(), **{"model_ttl": -1, **overrides})
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{settings.port}"
    APPS[url] = app
    try:
        yield url
    finally:
        APPS.pop(url, None)
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def base_url(tiny_model_dir: Path) -> Iterator[str]:
    """The default server: the tiny model, default limits, served as `voxtral-tiny` and `whisper-1`."""
    with running_server(model=str(tiny_model_dir), model_aliases="whisper-1") as url:
        yield url


@pytest.fixture(scope="session")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)
