"""Served hub models on a real server process: not downloaded (404 at once, no hub request), pulled from a hub
mirror on a loopback port, loaded without the hub, deleted from the cache, and a hub that cannot be reached
(a closed port, or a port that accepts connections and never answers)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from .conftest import FIXTURES, free_port
from .hub_mirror import HubMirror, Repo, serve_mirror
from .server_process import wait_until_serving
from .test_api_pull import pulled_files
from .test_models_lifecycle import weights_float32

MINI, SMALL = "mistralai/Voxtral-Mini-3B-2507", "mistralai/Voxtral-Small-24B-2507"
ROOT = Path(__file__).resolve().parent.parent
WAV = (FIXTURES / "speech.wav").read_bytes()


@pytest.fixture(scope="module")
def repo_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub") / "repo"
    shutil.copytree(tiny_model_dir, root)
    (root / "consolidated.safetensors").write_bytes(b"\0" * 4096)  # Mistral's format: not pulled
    return root


@pytest.fixture(scope="module")
def mirror(repo_dir: Path) -> Iterator[HubMirror]:
    with serve_mirror(HubMirror(repos={MINI: Repo(repo_dir), SMALL: Repo(repo_dir)})) as served:
        yield served


@contextmanager
def hub_server(endpoint: str, home: Path, **settings: str) -> Iterator[tuple[str, Path]]:
    """`python -m voxtral_local` with `HF_ENDPOINT=endpoint` and the cache under `home`; (URL, log file)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXTRAL_")}
    env.update(PYTHONPATH=str(ROOT), HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_OFFLINE="0")
    env.update(VOXTRAL_PORT=str(port), VOXTRAL_LOG_LEVEL="info")
    env.update({f"VOXTRAL_{name.upper()}": value for name, value in settings.items()})
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "voxtral_local"], env=env, cwd=home, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def unreachable_hub(kind: str) -> Iterator[str]:
    """The URL of a hub that cannot be reached: a closed port, or one that accepts and never answers."""
    if kind == "closed":
        yield f"http://127.0.0.1:{free_port()}"
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes the connections; nothing ever reads or answers
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def wait_for_log(log: Path, check: Callable[[str], bool], seconds: float = 30) -> None:
    """Return once the log file's text passes `check` (another process writes it); fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check(log.read_text(errors="replace")):
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


@pytest.mark.slow  # the 404 itself is in the default loop (test_model_checks)
def test_a_model_not_downloaded_is_a_404_within_a_second_and_asks_no_hub(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The default model is a directory; the hub model is served but not downloaded, and the hub is down."""
    with (
        unreachable_hub("silent") as endpoint,
        hub_server(endpoint, tmp_path, model=str(tiny_model_dir), models=SMALL) as (url, _),
    ):
        listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
        assert listed[SMALL]["downloaded"] is False and listed[SMALL]["size_bytes"] is None
        assert listed["voxtral-small"]["alias_of"] == SMALL
        # One request first, untimed: a fresh process imports what a model request needs on its first one.
        warm_up = httpx.post(
            f"{url}/v1/audio/transcriptions", data={"model": SMALL}, files={"file": ("speech.wav", WAV)}, timeout=60
        )
        assert warm_up.status_code == 404

        started = time.monotonic()
        load = httpx.post(f"{url}/api/ps/voxtral-small", timeout=30)
        assert time.monotonic() - started < 1.0
        assert load.status_code == 404
        error = load.json()["error"]
        assert error["code"] == "model_not_downloaded" and "POST /v1/models/pull" in error["message"]

        client = OpenAI(base_url=f"{url}/v1", api_key="x", timeout=30)  # the SDK's default retries
        started = time.monotonic()
        with pytest.raises(openai.NotFoundError) as info:
            client.audio.transcriptions.create(model=SMALL, file=("speech.wav", WAV))
        assert time.monotonic() - started < 1.0, "no retry, no hub request"
        assert info.value.response.json()["error"]["code"] == "model_not_downloaded"

        started = time.monotonic()
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "hi"}])
        assert time.monotonic() - started < 1.0
        assert info.value.response.json()["error"]["code"] == "model_not_downloaded"

        lotti = {
            "model": SMALL,
            "messages": [{"role": "user", "content": "Transcribe this audio."}],
            "audio": base64.b64encode(WAV).decode(),
            "stream": False,
        }
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/chat/completions", json=lotti, timeout=30)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_downloaded"


# A silent hub fails the same way as a refused connection, only later (its timeouts): it runs with `-m slow`.
@pytest.mark.parametrize("kind", ["closed", pytest.param("silent", marks=pytest.mark.slow)])
def test_an_unreachable_hub_fails_a_pull_within_seconds_in_one_log_line(
    tiny_model_dir: Path, tmp_path: Path, kind: str
) -> None:
    with (
        unreachable_hub(kind) as endpoint,
        hub_server(endpoint, tmp_path, model=str(tiny_model_dir), models=SMALL, auto_download="true") as (url, log),
    ):
        started = time.monotonic()
        pull = httpx.post(f"{url}/v1/models/pull", json={"model": SMALL, "stream": False}, timeout=60)
        assert time.monotonic() - started < 10.0
        assert pull.status_code == 502
        error = pull.json()["error"]
        assert error["code"] == "hub_unreachable"
        assert "cannot be reached" in error["message"] and endpoint in error["message"]
        assert "VOXTRAL_MODEL" in error["message"] and "tiny test model" in error["message"]

        started = time.monotonic()  # VOXTRAL_AUTO_DOWNLOAD: a request that needs the model downloads it
        load = httpx.post(f"{url}/api/ps/{SMALL}", timeout=60)
        assert time.monotonic() - started < 10.0
        assert load.status_code == 502 and load.json()["error"]["code"] == "hub_unreachable"
        wait_for_log(log, lambda text: text.count("cannot be reached") >= 2)  # written by another process
        lines = log.read_text(errors="replace").splitlines()
    reports = [line for line in lines if "cannot be reached" in line]
    assert len(reports) == 2, "one line per failed download"
    assert not any("Traceback" in line or "Retrying" in line for line in lines), "\n".join(lines)


@pytest.mark.slow  # pull, load and delete are each tested in the default loop (test_api_pull, test_cli's pull and rm)
def test_pull_a_second_hub_model_load_it_without_the_hub_and_delete_it(
    mirror: HubMirror, repo_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with hub_server(mirror.url, tmp_path, model=MINI, models=SMALL) as (url, _):
        pulled = httpx.post(f"{url}/v1/models/pull", json={"model": "voxtral-small", "stream": False}, timeout=120)
        assert pulled.status_code == 200 and pulled.json()["status"] == "success"
        assert pulled.json()["model"] == "voxtral-small"

        listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
        assert listed[MINI]["downloaded"] is False
        assert listed[SMALL]["downloaded"] is True
        assert listed[SMALL]["size_bytes"] == sum(pulled_files(repo_dir).values())
        assert listed[SMALL]["memory_bytes"] == weights_float32(tiny_model_dir)  # not Mistral's consolidated copy

        mirror.requests.clear()
        assert httpx.post(f"{url}/api/ps/{SMALL}", timeout=120).status_code == 201
        assert mirror.requests == [], "loading a downloaded model asks the hub nothing"

        by_alias = httpx.delete(f"{url}/v1/models/voxtral-small", timeout=60)  # an alias never deletes files
        assert by_alias.status_code == 400 and by_alias.json()["error"]["code"] == "model_is_alias"
        assert SMALL in by_alias.json()["error"]["message"]
        deleted = httpx.delete(f"{url}/v1/models/{SMALL}", timeout=60)
        assert deleted.status_code == 200
        assert deleted.json() == {"id": SMALL, "object": "model", "deleted": True}
        assert not (tmp_path / "hub" / "models--mistralai--Voxtral-Small-24B-2507").exists()
        assert httpx.get(f"{url}/api/ps", timeout=30).json()["models"] == []
        assert httpx.get(f"{url}/v1/models/{SMALL}", timeout=30).json()["downloaded"] is False
        again = httpx.delete(f"{url}/v1/models/{SMALL}", timeout=60)
        assert again.status_code == 404 and again.json()["error"]["code"] == "model_not_downloaded"


def test_auto_download_pulls_the_model_a_request_needs(mirror: HubMirror, tmp_path: Path) -> None:
    with hub_server(mirror.url, tmp_path, model=MINI, auto_download="true") as (url, _):
        assert httpx.get(f"{url}/health", timeout=30).json()["model_available"] is False
        mirror.requests.clear()
        assert httpx.post(f"{url}/api/ps/whisper-1", timeout=120).status_code == 201
        assert any("/resolve/" in path for _, path in mirror.requests)
        health = httpx.get(f"{url}/health", timeout=30).json()
        assert health["model_available"] is True and health["model_loaded"] is True
        again = httpx.post(f"{url}/v1/models/pull", json={"model": MINI, "stream": False}, timeout=60).json()
        assert again["status"] == "success" and again["completed"] == 0  # complete already: nothing downloaded


@pytest.mark.slow  # two pulls at once: a server process and a hub mirror of its own
def test_pulls_of_two_models_run_side_by_side(mirror: HubMirror, tmp_path: Path) -> None:
    with hub_server(mirror.url, tmp_path, model=MINI, models=SMALL) as (url, _):
        mirror.requests.clear()
        mirror.hold = True  # file bodies wait until both downloads have asked for files
        mirror.release.clear()
        results: dict[str, httpx.Response] = {}

        def pull(model: str) -> None:
            results[model] = httpx.post(f"{url}/v1/models/pull", json={"model": model, "stream": False}, timeout=120)

        threads = [threading.Thread(target=pull, args=(model,)) for model in (MINI, SMALL)]
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            while not all(any(f"/{m}/resolve/" in p for _, p in list(mirror.requests)) for m in (MINI, SMALL)):
                assert time.monotonic() < deadline, "the second download waited for the first"
                time.sleep(0.05)
        finally:
            mirror.release.set()
            for thread in threads:
                thread.join(timeout=120)
            mirror.hold = False
        assert {m: r.status_code for m, r in results.items()} == {MINI: 200, SMALL: 200}
        listed = {m["id"]: m["downloaded"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
        assert listed[MINI] and listed[SMALL]


@pytest.mark.slow  # the conflict itself is tested on the store (test_models_store)
def test_a_model_being_pulled_is_not_deleted(mirror: HubMirror, tmp_path: Path) -> None:
    with hub_server(mirror.url, tmp_path, model=MINI, models=SMALL) as (url, _):
        mirror.requests.clear()
        mirror.hold = True  # file bodies wait: the pull stays running
        mirror.release.clear()
        results: list[httpx.Response] = []
        pull = threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{url}/v1/models/pull", json={"model": SMALL, "stream": False}, timeout=120)
            )
        )
        try:
            pull.start()
            deadline = time.monotonic() + 60
            while not any(f"/{SMALL}/resolve/" in p for _, p in list(mirror.requests)):
                assert time.monotonic() < deadline, "the pull did not start"
                time.sleep(0.05)
            refused = httpx.delete(f"{url}/v1/models/{SMALL}", timeout=60)
            assert refused.status_code == 409
            error = refused.json()["error"]
            assert error["code"] == "model_download_in_progress" and "being pulled" in error["message"]
        finally:
            mirror.release.set()
            pull.join(timeout=120)
            mirror.hold = False
        assert [r.status_code for r in results] == [200]
        assert httpx.delete(f"{url}/v1/models/{SMALL}", timeout=60).status_code == 200
