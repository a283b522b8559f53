"""Checkpoints that do not match their tokenizer, and model directories that cannot be read."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from voxtral_local.testing.tiny_model import build_tiny_model

from .conftest import FIXTURES, backend_of, running_server

WAV = (FIXTURES / "speech.wav").read_bytes()
DECODABLE = 1000 + 4096  # the tiny model's tokenizer: special tokens + vocabulary


@pytest.fixture(scope="module")
def mismatched_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A checkpoint whose LM head has 512 ids past its tokenizer, and prefers them by far."""
    path = build_tiny_model(tmp_path_factory.mktemp("models") / "voxtral-mismatch", extra_head_ids=512)
    with running_server(model=str(path)) as url:
        yield url


def chat(url: str, **extra: Any) -> httpx.Response:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}}
    body = {"model": "voxtral-mismatch", "messages": [{"role": "user", "content": [part]}], "max_tokens": 8, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_generation_never_chooses_an_id_the_tokenizer_lacks(mismatched_url: str) -> None:
    files = {"file": ("speech.wav", WAV, "audio/wav")}
    verbose = httpx.post(
        f"{mismatched_url}/v1/audio/transcriptions",
        files=files,
        data={"model": "voxtral-mismatch", "response_format": "verbose_json"},
        timeout=120,
    )
    assert verbose.status_code == 200, verbose.text
    tokens = [t for s in verbose.json()["segments"] for t in s["tokens"]]
    assert tokens and max(tokens) < DECODABLE
    with_logprobs = httpx.post(
        f"{mismatched_url}/v1/audio/transcriptions",
        files=files,
        data={"model": "voxtral-mismatch", "include[]": "logprobs", "stream": "true"},
        timeout=120,
    )
    assert with_logprobs.status_code == 200 and '"error"' not in with_logprobs.text
    plain = chat(mismatched_url, logprobs=True, top_logprobs=20, temperature=1.0)
    assert plain.status_code == 200, plain.text
    content = plain.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 8 and all(len(step["top_logprobs"]) == 20 for step in content)
    streamed = chat(mismatched_url, logprobs=True, top_logprobs=5, stream=True)
    assert streamed.status_code == 200 and '"error"' not in streamed.text and "[DONE]" in streamed.text


def test_an_undecodable_token_fails_its_request_cleanly(mismatched_url: str) -> None:
    """With the mask taken away (a fault injected into the running engine), the model picks ids past the
    tokenizer: that request gets a 503 envelope (or an error event), and the server goes on."""
    scheduler = backend_of(mismatched_url).scheduler
    assert scheduler is not None
    mask = scheduler.suppress
    scheduler.suppress = None
    try:
        plain = chat(mismatched_url)
        streamed = chat(mismatched_url, stream=True)
        transcript = httpx.post(
            f"{mismatched_url}/v1/audio/transcriptions",
            files={"file": ("speech.wav", WAV, "audio/wav")},
            data={"model": "voxtral-mismatch"},
            timeout=120,
        )
    finally:
        scheduler.suppress = mask
    for response in (plain, transcript):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "undecodable_model_output"
    assert streamed.status_code == 200
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "undecodable_model_output"
    assert chat(mismatched_url).status_code == 200


# ---- model directories that cannot be used -----------------------------------------------------------------


def broken_config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A copy of the tiny checkpoint whose config.json is not JSON."""
    copy = tmp_path / "broken-config"
    copy.mkdir()
    for item in tiny_model_dir.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / "config.json").unlink()
    (copy / "config.json").write_text("{not json", encoding="utf-8")
    return copy


def name_too_long(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A directory whose name the file system refuses (ENAMETOOLONG): reading it fails even as root, as a
    directory without permission does for any other user."""
    return tmp_path / ("m" * 300)


def no_config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """config.json is a directory."""
    (tmp_path / "odd" / "config.json").mkdir(parents=True)
    return tmp_path / "odd"


@pytest.mark.parametrize("make", [broken_config, name_too_long, no_config])
def test_an_unusable_model_directory_is_503_and_health_says_why(
    tmp_path: Path, tiny_model_dir: Path, make: Any
) -> None:
    model_dir = make(tmp_path, tiny_model_dir)
    with running_server(model=str(model_dir), served_model_name="m") as url:
        for attempt in range(2):  # before and after a load was tried
            health = httpx.get(f"{url}/health", timeout=30)
            assert health.status_code == 200
            state = health.json()
            assert state["status"] == "healthy" and state["model_loaded"] is False
            if make is not broken_config:
                assert state["model_available"] is False and state["model_error"]
            elif attempt:
                assert state["model_error"] and "could not be loaded" in state["model_error"]
            models = httpx.get(f"{url}/v1/models", timeout=30)
            assert models.status_code == 200 and models.json()["data"][0]["id"] == "m"
            assert httpx.get(f"{url}/v1/models/m", timeout=30).status_code == 200
            transcript = httpx.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": ("speech.wav", WAV, "audio/wav")},
                data={"model": "m"},
                timeout=120,
            )
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            completion = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
            for response in (transcript, completion):
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "model_unavailable" and error["message"]
                assert len(response.content) < 2048
