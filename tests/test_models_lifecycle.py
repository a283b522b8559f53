"""Two tiny checkpoints served together: listing, aliases, `/api/ps` load and unload, idle unload, memory-aware
loading, pulls of local models, and deletion refused for a directory; on real uvicorn servers."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from openai import OpenAI
from safetensors import safe_open
from safetensors.torch import save_file

from voxtral_local.cli.serve import startup_line
from voxtral_local.config import Settings
from voxtral_local.models.registry import ModelRegistry
from voxtral_local.testing.tiny_model import build_tiny_model

from .conftest import APPS, FIXTURES, running_server
from .spies import counted_builds

A, B = "voxtral-tiny", "voxtral-tiny-b"
OPENAI_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / B, seed=1)


@pytest.fixture(scope="module")
def two_models(tiny_model_dir: Path, second_model_dir: Path) -> Iterator[str]:
    """A server with both checkpoints (A the default), models never unloaded when idle."""
    with running_server(model=str(tiny_model_dir), models=str(second_model_dir)) as url:
        yield url


@pytest.fixture
def ps(two_models: str) -> Iterator[str]:
    """The two-model server with nothing loaded before and after the test (each model unloaded as a request
    would, so the registry stays usable)."""
    unload_all(two_models)
    yield two_models
    unload_all(two_models)


def unload_all(url: str) -> None:
    models = registry(url)
    for slot, _ in models.loaded():
        models.unload(slot.model.id)


def registry(url: str) -> ModelRegistry:
    models: ModelRegistry = APPS[url].state.models
    return models


def weights_float32(directory: Path) -> int:
    """Bytes of the checkpoint's weights in float32 (the CPU's load dtype), counted from the tensors."""
    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) * 4 for name in f.keys())  # noqa: SIM118 - safe_open is not iterable
    return total


def loaded(url: str) -> list[str]:
    body = httpx.get(f"{url}/api/ps", timeout=30).json()
    return list(body["models"])


def wait_until(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


def test_models_lists_both_models_and_every_alias(two_models: str, tiny_model_dir: Path) -> None:
    client = OpenAI(base_url=f"{two_models}/v1", api_key="x", max_retries=0)
    assert [m.id for m in client.models.list().data] == [A, B, *OPENAI_ALIASES]
    data = {m["id"]: m for m in httpx.get(f"{two_models}/v1/models").json()["data"]}
    files = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
    assert data[A] == {
        "id": A,
        "object": "model",
        "created": int((tiny_model_dir / "config.json").stat().st_mtime),
        "owned_by": "local",
        "alias_of": None,
        "downloaded": True,
        "loaded": False,
        "size_bytes": files,
        "memory_bytes": weights_float32(tiny_model_dir),
        "backend": "transformers",
        "realtime": False,
        "upstreams": None,
    }
    assert data[B]["alias_of"] is None and data[B]["downloaded"] is True
    for alias in OPENAI_ALIASES:
        assert data[alias]["alias_of"] == A and data[alias]["size_bytes"] == files


def test_retrieve_by_id_and_alias(two_models: str) -> None:
    client = OpenAI(base_url=f"{two_models}/v1", api_key="x", max_retries=0)
    assert client.models.retrieve(B).id == B
    whisper = httpx.get(f"{two_models}/v1/models/whisper-1").json()
    assert whisper["id"] == "whisper-1" and whisper["alias_of"] == A
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("mistralai/Voxtral-Small-24B-2507")
    assert info.value.response.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{two_models}/v1/models/pull").status_code == 405


def test_api_ps_loads_and_unloads_by_id_and_alias(ps: str) -> None:
    assert httpx.get(f"{ps}/api/ps").json() == {"models": [], "data": []}

    assert httpx.post(f"{ps}/api/ps/{B}", timeout=120).status_code == 201
    body = httpx.get(f"{ps}/api/ps").json()
    assert body["models"] == [B]
    running = body["data"][0]
    assert (running["id"], running["device"], running["dtype"]) == (B, "cpu", "float32")
    assert running["memory_bytes"] > 0 and running["requests_in_flight"] == 0 and running["expires_in"] is None
    again = httpx.post(f"{ps}/api/ps/{B}", timeout=120)
    assert again.status_code == 409 and again.json()["error"]["code"] == "model_already_loaded"

    assert httpx.post(f"{ps}/api/ps/whisper-1", timeout=120).status_code == 201  # the default model
    assert loaded(ps) == [A, B]
    models = {m["id"]: m["loaded"] for m in httpx.get(f"{ps}/v1/models").json()["data"]}
    assert models[A] and models[B] and models["whisper-1"]

    assert httpx.delete(f"{ps}/api/ps/whisper-1", timeout=60).status_code == 204
    assert loaded(ps) == [B]
    not_loaded = httpx.delete(f"{ps}/api/ps/{A}", timeout=60)
    assert not_loaded.status_code == 404 and not_loaded.json()["error"]["code"] == "model_not_loaded"
    for method in ("POST", "DELETE"):
        unknown = httpx.request(method, f"{ps}/api/ps/org/no-such-model", timeout=60)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert httpx.delete(f"{ps}/api/ps/{B}", timeout=60).status_code == 204
    assert loaded(ps) == []


def test_concurrent_first_loads_load_once(ps: str) -> None:
    with counted_builds(registry(ps)) as calls:
        with httpx.Client(timeout=120) as client:
            statuses: list[int] = []
            threads = [
                threading.Thread(target=lambda: statuses.append(client.post(f"{ps}/api/ps/{B}").status_code))
                for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        assert calls == [B]
        assert sorted(statuses) == [201] + [409] * 7


def test_unload_waits_for_the_request_using_the_model(ps: str) -> None:
    models = registry(ps)
    answers: list[int] = []
    with models.use(B):
        unloading = threading.Thread(target=lambda: answers.append(httpx.delete(f"{ps}/api/ps/{B}").status_code))
        unloading.start()
        unloading.join(timeout=0.5)
        assert answers == [] and models.slot(B).backend is not None, "unloaded under a request"
    unloading.join(timeout=60)
    assert answers == [204] and loaded(ps) == []


@pytest.mark.parametrize("ttl", [0, 2])
def test_an_idle_model_is_unloaded_after_the_ttl(tiny_model_dir: Path, ttl: int) -> None:
    with running_server(model=str(tiny_model_dir), model_ttl=ttl) as url:
        assert httpx.post(f"{url}/api/ps/{A}", timeout=120).status_code == 201
        if ttl:  # loaded until the TTL has passed
            running = httpx.get(f"{url}/api/ps", timeout=30).json()["data"]
            assert [m["id"] for m in running] == [A] and 0 < running[0]["expires_in"] <= ttl
        wait_until(lambda: loaded(url) == [])
        assert httpx.get(f"{url}/health").json()["model_loaded"] is False


def test_ttl_zero_unloads_right_after_a_transcription(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), model_ttl=0) as url:
        models = registry(url)
        with counted_builds(models) as calls:
            client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
            for _ in range(2):
                with open(FIXTURES / "speech.wav", "rb") as f:
                    assert isinstance(client.audio.transcriptions.create(model=A, file=f).text, str)
                wait_until(lambda: loaded(url) == [] and models.slot(A).users == 0)
            assert calls == [A, A], "each request loaded the model, which was unloaded after it"


def test_loading_makes_room_by_unloading_the_idle_model_and_refuses_when_it_is_in_use(
    tiny_model_dir: Path, second_model_dir: Path
) -> None:
    need = weights_float32(tiny_model_dir)
    cap_gb = 1.5 * need / 1024**3  # one model fits, two do not
    with running_server(model=str(tiny_model_dir), models=str(second_model_dir), models_memory_gb=cap_gb) as url:
        assert httpx.post(f"{url}/api/ps/{A}", timeout=120).status_code == 201
        assert httpx.post(f"{url}/api/ps/{B}", timeout=120).status_code == 201
        assert loaded(url) == [B], "the idle model made room"

        with registry(url).use(B):
            refused = httpx.post(f"{url}/api/ps/{A}", timeout=120)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "insufficient_memory")
        assert "need about" in error["message"] and "is free" in error["message"] and B in error["message"]
        assert "MiB" in error["message"] and "1 request)" in error["message"], "small sizes readable, counted right"
        assert "Try again when those requests have ended" in error["message"]
        assert loaded(url) == [B], "nothing was unloaded for a load that could not fit"
        assert httpx.get(f"{url}/health").json()["model_error"] is None, "a memory refusal is not the model's fault"

        assert httpx.post(f"{url}/api/ps/{A}", timeout=120).status_code == 201
        assert loaded(url) == [A]


def test_a_model_that_cannot_fit_at_all_is_refused_without_advice_to_wait(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), models_memory_gb=1e-6) as url:
        refused = httpx.post(f"{url}/api/ps/{A}", timeout=120)
    assert refused.status_code == 503
    message = refused.json()["error"]["message"]
    assert "waiting does not help: raise VOXTRAL_MODELS_MEMORY_GB" in message and "Try again" not in message


def test_a_failed_eviction_leaves_the_other_models_usable_and_gives_the_reservation_back(
    tiny_model_dir: Path, second_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C's weights are estimated at twice A's (a second safetensors file transformers does not load), so loading
    it unloads both idle models; unloading A, the first, fails."""
    big = build_tiny_model(tmp_path / "voxtral-tiny-c", seed=2)
    need = weights_float32(tiny_model_dir)
    save_file({"padding": torch.zeros(need // 4)}, big / "padding.safetensors")
    cap_gb = 2.5 * need / 1024**3  # A and B fit together, or C alone
    with running_server(model=str(tiny_model_dir), models=f"{second_model_dir},{big}", models_memory_gb=cap_gb) as url:
        models = registry(url)
        for model in (A, B):
            assert httpx.post(f"{url}/api/ps/{model}", timeout=120).status_code == 201

        def failing_unload() -> None:
            raise RuntimeError("the device is gone")

        monkeypatch.setattr(models.slot(A).backend, "unload", failing_unload)
        refused = httpx.post(f"{url}/api/ps/voxtral-tiny-c", timeout=120)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "model_unavailable"
        assert A in error["message"] and "the device is gone" in error["message"]
        assert loaded(url) == [B], "the eviction stopped at the failure: B stays loaded"
        assert all(models.slot(m).reserved == 0 and not models.slot(m).unloading for m in (A, B, "voxtral-tiny-c"))

        assert httpx.post(f"{url}/api/ps/{A}", timeout=120).status_code == 201, "A loads again (C holds no room)"
        assert loaded(url) == [A, B]
        for model in (A, B):
            assert httpx.delete(f"{url}/api/ps/{model}", timeout=60).status_code == 204
        assert httpx.post(f"{url}/api/ps/voxtral-tiny-c", timeout=120).status_code == 201
        assert loaded(url) == ["voxtral-tiny-c"]


def test_the_startup_line_reads_the_ttl_as_the_registry_does(tiny_model_dir: Path) -> None:
    def unload(ttl: float) -> str:
        line = startup_line(Settings(_env_file=None, model=str(tiny_model_dir), model_ttl=ttl))
        return line.split(", unload ", 1)[1].split(";", 1)[0]

    assert [unload(ttl) for ttl in (-1, -0.5, 0, 0.5, 300)] == [
        "never",
        "never",
        "after each request",
        "after 0.5 s idle",
        "after 300 s idle",
    ]


def test_health_reports_device_memory_and_loaded_models(ps: str) -> None:
    assert httpx.post(f"{ps}/api/ps/{B}", timeout=120).status_code == 201
    health = httpx.get(f"{ps}/health").json()
    assert health["model"] == A and health["model_available"] is True and health["model_loaded"] is False
    assert health["device"] == "cpu" and health["model_error"] is None
    assert health["memory_total_bytes"] >= health["memory_available_bytes"] > 0
    assert [m["id"] for m in health["loaded_models"]] == [B]


def test_pulling_a_local_model_streams_one_event_or_answers_json(two_models: str, second_model_dir: Path) -> None:
    files = sum(1 for p in second_model_dir.iterdir() if p.is_file())
    success = {"status": "success", "model": B, "completed": 0, "total": 0, "files_completed": files}
    with httpx.stream("POST", f"{two_models}/v1/models/pull", json={"model": B}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) == 2 and events[1] == "[DONE]"
    assert json.loads(events[0]) == {**success, "files_total": files}
    plain = httpx.post(f"{two_models}/v1/models/pull", json={"model": B, "stream": False}, timeout=60)
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == {**success, "files_total": files}


def test_a_local_model_is_never_deleted(two_models: str, second_model_dir: Path) -> None:
    refused = httpx.delete(f"{two_models}/v1/models/{B}", timeout=60)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "model_is_local" and str(second_model_dir) in error["message"]
    assert (second_model_dir / "config.json").is_file()
    unknown = httpx.delete(f"{two_models}/v1/models/org/no-such-model", timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
