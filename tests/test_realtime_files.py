"""The realtime model through real uvicorn and the OpenAI SDK: it serves the file endpoints (each chunk streamed
through it faster than real time) in every response format and as SSE, it is a full citizen of `/v1/models`
and `/api/ps`, and a chat with it is a clean 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from voxtral_local.config import Settings
from voxtral_local.models.catalog import VOXTRAL_REALTIME, ModelCatalog
from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model

from .conftest import FIXTURES, running_server

ALIAS = "voxtral-realtime"


@pytest.fixture(scope="module")
def realtime_url(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """The tiny realtime checkpoint served under the hub's id, with its alias, as the default model, next to the
    tiny standard one."""
    model_dir = build_tiny_realtime_model(tmp_path_factory.mktemp("models") / "realtime")
    with running_server(
        model=str(model_dir), served_model_name=VOXTRAL_REALTIME, model_aliases=ALIAS, models=str(tiny_model_dir)
    ) as url:
        yield url


@pytest.fixture(scope="module")
def client(realtime_url: str) -> OpenAI:
    return OpenAI(base_url=f"{realtime_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_voxtral_realtime_names_the_hub_model_once_it_is_served() -> None:
    served = ModelCatalog(Settings(_env_file=None, models=VOXTRAL_REALTIME))
    assert served.aliases[ALIAS] == VOXTRAL_REALTIME and served.resolve(ALIAS).id == VOXTRAL_REALTIME
    assert ALIAS not in ModelCatalog(Settings(_env_file=None)).aliases


def transcribe(client: OpenAI, **kwargs: object) -> object:
    with open(FIXTURES / "speech.mp3", "rb") as f:
        return client.audio.transcriptions.create(model=ALIAS, file=f, **kwargs)  # type: ignore[call-overload]


def test_a_file_in_every_response_format(client: OpenAI) -> None:
    result = transcribe(client)
    text = result.text  # type: ignore[attr-defined]
    assert text.strip() and text == text.strip()
    assert transcribe(client, response_format="text").strip() == text  # type: ignore[attr-defined]
    srt = transcribe(client, response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n00:00:00,000 --> ") and text[:10] in srt
    verbose = transcribe(client, response_format="verbose_json")
    assert verbose.text == text  # type: ignore[attr-defined]
    segment = verbose.segments[0]  # type: ignore[attr-defined]
    assert segment.start == 0 and segment.end == pytest.approx(verbose.duration, abs=0.01)  # type: ignore[attr-defined]
    assert segment.tokens and segment.text == text


def test_a_streamed_file_gives_deltas_that_join_to_the_text(client: OpenAI) -> None:
    events = list(transcribe(client, stream=True))  # type: ignore[call-overload]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) > 3 and all(e.type == "transcript.text.delta" and e.delta for e in deltas)
    assert done.type == "transcript.text.done"
    assert done.text == "".join(e.delta for e in deltas) == transcribe(client).text  # type: ignore[attr-defined]
    usage = done.usage
    assert usage.output_tokens > 0
    details = usage.input_token_details
    assert details.audio_tokens > 0 and details.text_tokens > 0, "the audio tokens read and the prefix's tokens"
    assert usage.input_tokens == details.audio_tokens + details.text_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_the_realtime_model_is_listed_and_loaded_like_any_other(realtime_url: str, client: OpenAI) -> None:
    transcribe(client)  # loads it
    models = {m["id"]: m for m in httpx.get(f"{realtime_url}/v1/models", timeout=30).json()["data"]}
    assert models[VOXTRAL_REALTIME]["loaded"] is True and models[VOXTRAL_REALTIME]["downloaded"] is True
    assert models[VOXTRAL_REALTIME]["size_bytes"] > 0 and models[VOXTRAL_REALTIME]["memory_bytes"] > 0
    assert models[ALIAS]["alias_of"] == VOXTRAL_REALTIME
    assert client.models.retrieve(ALIAS).id == ALIAS
    ps = httpx.get(f"{realtime_url}/api/ps", timeout=30).json()
    assert VOXTRAL_REALTIME in ps["models"]
    running = next(m for m in ps["data"] if m["id"] == VOXTRAL_REALTIME)
    assert running["memory_bytes"] > 0 and running["device"] == "cpu"
    unload = httpx.delete(f"{realtime_url}/api/ps/{ALIAS}", timeout=60)
    assert unload.status_code in (200, 204)
    assert VOXTRAL_REALTIME not in httpx.get(f"{realtime_url}/api/ps", timeout=30).json()["models"]
    assert httpx.post(f"{realtime_url}/api/ps/{ALIAS}", timeout=120).status_code == 201
    assert transcribe(client).text  # type: ignore[attr-defined]


def test_a_chat_with_the_realtime_model_is_a_clean_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hello"}])
    error = info.value.response.json()["error"]
    assert error["code"] == "model_cannot_chat" and error["type"] == "invalid_request_error"
    assert "realtime" in error["message"] and "transcription only" in error["message"] and error["param"] == "model"
