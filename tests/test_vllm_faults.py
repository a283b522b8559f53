"""VOXTRAL_BACKEND=vllm when upstreams fail or change: a client disconnect cancels the upstream requests; one
upstream down, all down, one that hangs; an upstream that starts after the front; a model served here beside one
served by an upstream (mixed mode), and an upstream's refusal passed on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from voxtral_local.testing.tiny_model import build_tiny_model

from .conftest import free_port, running_server
from .test_chunking import speech_with_gaps
from .vllm_helpers import (
    CAP,
    MODEL,
    HangingUpstream,
    assert_envelope,
    audio_message,
    closed_port_url,
    health,
    sdk,
    serving_on,
    upstream_states,
    wait_for,
    wav,
)


@pytest.fixture(scope="module")
def upstream(tiny_model_dir: Path) -> Iterator[str]:
    """One upstream: this server with the tiny model, served as `voxtral-tiny`."""
    with running_server(model=str(tiny_model_dir), **CAP) as url:
        yield url


@pytest.fixture(scope="module")
def three_chunks(speech: np.ndarray) -> tuple[str, bytes, str]:
    """About 65 s of speech with short pauses: three chunks."""
    audio, _ = speech_with_gaps(speech, minutes=65 / 60)
    return wav(audio)


# ---- cancellation ------------------------------------------------------------------------------------------


def test_a_client_disconnect_cancels_the_upstream_requests(tiny_model_dir: Path, speech: np.ndarray) -> None:
    audio, _ = speech_with_gaps(speech, minutes=5)
    data = {"model": MODEL, "stream": "true"}
    # an upstream with the default cap: its ten chunks take several seconds
    with (
        running_server(model=str(tiny_model_dir)) as upstream,
        running_server(backend="vllm", vllm_urls=upstream, model=MODEL) as front,
    ):
        with httpx.stream(
            "POST", f"{front}/v1/audio/transcriptions", files={"file": wav(audio)}, data=data, timeout=120
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection at once
            for line in lines:
                if line.startswith("data:") and "transcript.text.delta" in line:
                    break
            assert upstream_states(front)[upstream]["in_flight"] > 0  # the other chunks are still being answered
            ps = httpx.get(f"{upstream}/api/ps", timeout=10).json()["data"]
            assert ps[0]["requests_in_flight"] > 0
        # the connection is closed: the front cancels its upstream requests, and the upstream stops them
        wait_for(lambda: upstream_states(front)[upstream]["in_flight"] == 0, 5, "the front's cancel")

        def upstream_idle() -> bool:
            ps = httpx.get(f"{upstream}/api/ps", timeout=10).json()["data"]
            return all(m["requests_in_flight"] == 0 for m in ps)

        wait_for(upstream_idle, 5, "the upstream's stop")


# ---- faults ------------------------------------------------------------------------------------------------


def test_one_upstream_down(upstream: str, three_chunks: tuple[str, bytes, str]) -> None:
    dead = closed_port_url()
    with running_server(backend="vllm", vllm_urls=f"{dead},{upstream}", model=MODEL) as url:
        for _ in range(2):
            assert sdk(url).audio.transcriptions.create(model=MODEL, file=three_chunks).text
        states = upstream_states(url)
        assert states[dead]["state"] == "down" and "connection failed" in states[dead]["last_error"]
        assert states[dead]["requests"] == 0 and states[upstream]["requests"] == 6


def test_all_down_is_a_fast_5xx(three_chunks: tuple[str, bytes, str]) -> None:
    with running_server(backend="vllm", vllm_urls=f"{closed_port_url()},{closed_port_url()}", model=MODEL) as url:
        started = time.monotonic()
        answer = httpx.post(
            f"{url}/v1/audio/transcriptions", files={"file": three_chunks}, data={"model": MODEL}, timeout=60
        )
        assert time.monotonic() - started < 10
        assert_envelope(answer, (502, 503, 504))
        chat = {"model": MODEL, "messages": [audio_message()], "max_tokens": 4}
        assert_envelope(httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60), (502, 503, 504))
        # streamed, too: a status before the stream starts, not a 200 with an error event
        streamed = {"model": MODEL, "stream": "true"}
        answer = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": three_chunks}, data=streamed, timeout=60)
        assert_envelope(answer, 503, "upstream_unavailable")
        answer = httpx.post(f"{url}/v1/chat/completions", json={**chat, "stream": True}, timeout=60)
        assert_envelope(answer, 503, "upstream_unavailable")
        assert all(u["state"] == "down" and u["last_error"] for u in upstream_states(url).values())
        health = httpx.get(f"{url}/health", timeout=10).json()  # the default model cannot be served: it says why
        assert health["model_available"] is False and "No upstream" in health["model_error"]


def test_a_hanging_upstream_times_out_and_its_chunks_go_elsewhere(
    upstream: str, three_chunks: tuple[str, bytes, str]
) -> None:
    hanging = HangingUpstream(MODEL)
    try:
        overrides = {"vllm_timeout_s": 1.5, "vllm_health_interval_s": 600}
        with running_server(backend="vllm", vllm_urls=f"{hanging.url},{upstream}", model=MODEL, **overrides) as url:
            assert upstream_states(url)[hanging.url]["state"] == "up"
            result = sdk(url).audio.transcriptions.create(
                model=MODEL, file=three_chunks, response_format="verbose_json"
            )
            assert result.text and len(result.segments or []) == 3
            assert hanging.posts >= 1  # it was given a chunk, which went to the live upstream after the timeout
            states = upstream_states(url)
            assert states[hanging.url]["state"] == "down" and "timeout" in states[hanging.url]["last_error"]
            assert states[hanging.url]["in_flight"] == 0 and states[upstream]["in_flight"] == 0
    finally:
        hanging.close()


# ---- discovery and mixed mode ------------------------------------------------------------------------------


def test_an_upstream_started_after_the_front_is_found(
    tiny_model_dir: Path, three_chunks: tuple[str, bytes, str]
) -> None:
    port = free_port()
    settings = {"vllm_health_interval_s": 0.5}
    with running_server(backend="vllm", vllm_urls=f"http://127.0.0.1:{port}", model=MODEL, **settings) as url:
        answer = httpx.post(
            f"{url}/v1/audio/transcriptions", files={"file": three_chunks}, data={"model": MODEL}, timeout=60
        )
        assert_envelope(answer, 503)
        with serving_on(port, model=str(tiny_model_dir), **CAP):

            def listed() -> bool:
                models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
                return any(m["id"] == MODEL and m["upstreams"] for m in models)

            wait_for(listed, 15, "the upstream's discovery")
            assert sdk(url).audio.transcriptions.create(model=MODEL, file=three_chunks).text


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "voxtral-other")


@pytest.fixture(scope="module")
def mixed(tiny_model_dir: Path, other_model_dir: Path) -> Iterator[str]:
    """VOXTRAL_BACKEND=transformers serving `voxtral-tiny` here, and `voxtral-other` from an upstream whose
    context is 512 tokens."""
    with (
        running_server(model=str(other_model_dir), max_context_tokens=512, **CAP) as upstream,
        running_server(model=str(tiny_model_dir), vllm_urls=upstream, **CAP) as url,
    ):
        yield url


def test_mixed_mode(mixed: str, three_chunks: tuple[str, bytes, str]) -> None:
    listed = {m["id"]: m for m in httpx.get(f"{mixed}/v1/models", timeout=10).json()["data"]}
    assert listed[MODEL]["backend"] == "transformers" and listed[MODEL]["upstreams"] is None
    assert listed["voxtral-other"]["backend"] == "vllm" and len(listed["voxtral-other"]["upstreams"]) == 1
    client = sdk(mixed)
    for model in (MODEL, "voxtral-other"):
        assert client.audio.transcriptions.create(model=model, file=three_chunks).text
        reply = client.chat.completions.create(model=model, messages=[audio_message()], max_tokens=4)
        assert reply.choices[0].message.content and reply.model == model
    assert health(mixed)["upstreams"][0]["requests"] == 4  # three chunks and one chat, all of voxtral-other


def test_an_upstream_refusal_is_passed_on_as_400(mixed: str) -> None:
    chat = {"model": "voxtral-other", "messages": [audio_message()], "max_tokens": 400}
    error = assert_envelope(httpx.post(f"{mixed}/v1/chat/completions", json=chat, timeout=60), 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "context_length_exceeded"
    assert all(u["state"] == "up" for u in health(mixed)["upstreams"])  # its refusal is not a fault
