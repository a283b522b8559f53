"""The second served model does real work: two tiny checkpoints served together, transcribed by id, by a
configured alias and by `whisper-1` through the OpenAI SDK, each loading the model the name means; concurrent
first transcriptions load it once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from voxtral_local.models.registry import ModelRegistry
from voxtral_local.testing.tiny_model import build_tiny_model

from .conftest import APPS, FIXTURES, running_server
from .spies import counted_builds
from .test_model_holds import loaded

A, B = "voxtral-tiny", "voxtral-tiny-b"
WAV = (FIXTURES / "speech.wav").read_bytes()


@pytest.fixture(scope="module")
def model_b_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / B, seed=1)


@pytest.fixture(scope="module")
def two_models(tiny_model_dir: Path, model_b_dir: Path) -> Iterator[str]:
    """A the default model, B the second, `b-alias` meaning B; never unloaded when idle."""
    with running_server(
        model=str(tiny_model_dir), models=str(model_b_dir), model_aliases=f"b-alias={B}", model_ttl=-1
    ) as url:
        yield url


@pytest.fixture
def nothing_loaded(two_models: str) -> Iterator[str]:
    registry(two_models).close()
    yield two_models
    registry(two_models).close()


def registry(url: str) -> ModelRegistry:
    models: ModelRegistry = APPS[url].state.models
    return models


def sdk(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.mark.parametrize(("name", "model_id"), [(B, B), ("b-alias", B), ("whisper-1", A)])
def test_a_transcription_loads_the_model_its_name_means(nothing_loaded: str, name: str, model_id: str) -> None:
    transcript = sdk(nothing_loaded).audio.transcriptions.create(model=name, file=("speech.wav", WAV))
    assert isinstance(transcript.text, str)
    assert loaded(nothing_loaded) == [model_id]


def test_the_two_models_are_different_models_answering_side_by_side(nothing_loaded: str) -> None:
    client = sdk(nothing_loaded)
    by_id = client.audio.transcriptions.create(model=B, file=("speech.wav", WAV), response_format="verbose_json")
    by_alias = client.audio.transcriptions.create(
        model="b-alias", file=("speech.wav", WAV), response_format="verbose_json"
    )
    default = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", WAV), response_format="verbose_json"
    )
    assert loaded(nothing_loaded) == [A, B]
    tokens = [[s.tokens for s in t.segments or []] for t in (by_id, by_alias, default)]
    assert tokens[0] == tokens[1], "the alias means the same model"
    assert tokens[0] != tokens[2], "the default model is another checkpoint (other weights, other tokens)"


def test_concurrent_first_transcriptions_load_the_model_once(nothing_loaded: str) -> None:
    client = sdk(nothing_loaded)
    texts: list[str] = []
    errors: list[BaseException] = []

    def transcribe() -> None:
        try:
            texts.append(client.audio.transcriptions.create(model=B, file=("speech.wav", WAV)).text)
        except BaseException as exc:
            errors.append(exc)

    with counted_builds(registry(nothing_loaded)) as calls:
        threads = [threading.Thread(target=transcribe) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == [] and len(texts) == 4
    assert calls == [B]
    assert httpx.get(f"{nothing_loaded}/api/ps", timeout=30).json()["models"] == [B]
