"""Models, health, model availability, and the request limits, on real uvicorn servers."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import httpx
import openai
import pytest
from openai import OpenAI

from voxtral_local.testing.audio_files import opus_duration_bomb

from .conftest import FIXTURES, running_server

MODEL = "voxtral-tiny"


def test_models_list_and_retrieve_through_the_sdk(client: OpenAI, base_url: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]
    model = models.data[0]
    assert model.object == "model" and model.owned_by == "local" and isinstance(model.created, int)
    raw = httpx.get(f"{base_url}/v1/models").json()
    assert raw["object"] == "list"
    assert raw["data"][0]["downloaded"] is True
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    assert httpx.get(f"{base_url}/v1/models/whisper-1").json()["alias_of"] == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("mistralai/Voxtral-Small-24B-2507")


def test_health_reports_model_state(base_url: str, client: OpenAI) -> None:
    with open(FIXTURES / "speech.wav", "rb") as f:
        client.audio.transcriptions.create(model=MODEL, file=f)
    health = httpx.get(f"{base_url}/health").json()
    memory = (health.pop("memory_total_bytes"), health.pop("memory_available_bytes"))
    loaded = health.pop("loaded_models")
    assert health == {
        "status": "healthy",
        "model": MODEL,
        "model_available": True,
        "model_loaded": True,
        "model_error": None,
        "device": "cpu",
        "max_audio_minutes": 180.0,
        "upstreams": None,
    }
    assert memory[0] >= memory[1] > 0
    assert [m["id"] for m in loaded] == [MODEL] and loaded[0]["device"] == "cpu" and loaded[0]["memory_bytes"] > 0
    assert httpx.get(f"{base_url}/v1/models").json()["data"][0]["loaded"] is True


def test_model_loads_lazily_or_at_startup(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir)) as url:
        assert httpx.get(f"{url}/health").json()["model_loaded"] is False
    with running_server(model=str(tiny_model_dir), preload=True) as url:
        assert httpx.get(f"{url}/health").json()["model_loaded"] is True


def test_unloadable_model_gives_503_and_the_server_stays_up(tmp_path: Path) -> None:
    missing = tmp_path / "not-downloaded"
    with running_server(model=str(missing), preload=True) as url:
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["model_available"], health["model_loaded"]) == ("healthy", False, False)
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info, open(FIXTURES / "speech.wav", "rb") as f:
            client.audio.transcriptions.create(model="not-downloaded", file=f)
        assert info.value.status_code == 503
        error = info.value.response.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "model_unavailable")
        assert "does not exist" in error["message"]
        assert "Traceback" not in info.value.response.text
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["downloaded"] is False


def test_duration_bomb_is_rejected_while_decoding(tiny_model_dir: Path) -> None:
    bomb = opus_duration_bomb(hours=2)
    with running_server(model=str(tiny_model_dir), max_audio_minutes=1) as url:
        response = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("bomb.opus", bomb, "audio/ogg")},
            data={"model": MODEL},
            timeout=60,
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("file", "audio_too_long")
        assert "limit of 1 minutes" in error["message"]
        stopped_at = float(error["message"].split("stopped decoding at ")[1].split(" s")[0])
        assert 60 < stopped_at < 65  # not two hours
        assert httpx.get(f"{url}/health").json()["model_loaded"] is False  # nothing reached the model


def raw_exchange(url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request head and then body pieces (stopping if the server closes), return the reply."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        reply = b""
        try:
            while not reply.endswith(b"}}") and (piece := sock.recv(65536)):
                reply += piece
        except ConnectionResetError:
            pass
        return reply


def test_declared_oversize_upload_is_rejected_before_the_body_is_sent(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), max_upload_mb=1) as url:
        head = (
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 209715200\r\n\r\n"
        )
        reply = raw_exchange(url, head, [])  # not one byte of the 200 MB body is sent
        assert reply.startswith(b"HTTP/1.1 413")
        assert b'"code":"request_too_large"' in reply and b"1 MiB limit" in reply
        assert httpx.get(f"{url}/health").status_code == 200


def test_chunked_oversize_upload_is_cut_off_while_streaming(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), max_upload_mb=1) as url:
        head = (
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        part = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        piece = b"\0" * 65536
        chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n%s\r\n" % (len(piece), piece)] * 48
        reply = raw_exchange(url, head, chunks)  # 3 MiB offered against a 1 MiB limit
        assert reply.startswith(b"HTTP/1.1 413")
        assert b'"code":"request_too_large"' in reply
        assert httpx.get(f"{url}/health").status_code == 200


def test_upload_under_the_limit_is_accepted(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), max_upload_mb=1) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with open(FIXTURES / "speech.mp3", "rb") as f:
            assert client.audio.transcriptions.create(model=MODEL, file=f).text
