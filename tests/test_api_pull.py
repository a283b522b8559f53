"""`POST /v1/models/pull` on a real server process that pulls from a hub mirror on a loopback port.

The server runs as users run it (`python -m voxtral_local`), with `HF_ENDPOINT` naming the mirror and its own
Hugging Face cache; the mirror serves the tiny checkpoint under the id lotti pulls. Tests that need an empty
cache delete it, as a user clearing their cache would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from .conftest import FIXTURES, free_port, running_server
from .hub_mirror import HubMirror, Repo, serve_mirror
from .server_process import wait_until_serving

REPO = "mistralai/Voxtral-Mini-3B-2507"  # what lotti's download button pulls
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def repo_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint plus the Mistral-format files Voxtral's repositories also hold."""
    root = tmp_path_factory.mktemp("hub") / "repo"
    shutil.copytree(tiny_model_dir, root)
    (root / "consolidated.safetensors").write_bytes(b"\0" * 4096)
    (root / "params.json").write_text("{}")
    (root / "README.md").write_text("# tiny Voxtral\n")
    return root


@pytest.fixture(scope="module")
def mirror(repo_dir: Path) -> Iterator[HubMirror]:
    with serve_mirror(HubMirror(repos={REPO: Repo(repo_dir)})) as served:
        yield served


@contextmanager
def server_process(mirror: HubMirror, home: Path, offline: bool = False) -> Iterator[str]:
    """`python -m voxtral_local` serving the hub id, pulling from `mirror` into the cache under `home`."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": mirror.url,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "VOXTRAL_MODEL": REPO,
        "VOXTRAL_PORT": str(port),
        "VOXTRAL_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "voxtral_local"], env=env, cwd=home)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(mirror: HubMirror, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server process with an empty cache of its own: (base URL, HF_HOME)."""
    home = tmp_path_factory.mktemp("hf-home")
    with server_process(mirror, home) as url:
        yield url, home


@pytest.fixture
def fresh(server: tuple[str, Path], mirror: HubMirror) -> str:
    """The server with its cache emptied and the mirror reset; its base URL."""
    url, home = server
    shutil.rmtree(home / "hub", ignore_errors=True)
    mirror.requests.clear()
    mirror.bytes_per_second = mirror.fail_after_bytes = None
    mirror.hold = False
    mirror.release.clear()
    return url


def pulled_files(repo_dir: Path) -> dict[str, int]:
    """The files a pull fetches (the Mistral-format copies left out), with their sizes."""
    skipped = {"consolidated.safetensors", "params.json"}
    return {p.name: p.stat().st_size for p in repo_dir.iterdir() if p.is_file() and p.name not in skipped}


def file_gets(mirror: HubMirror) -> list[str]:
    return [path.rsplit("/", 1)[1] for method, path in mirror.requests if method == "GET" and "/resolve/" in path]


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_lottis_download_request_pulls_the_model_which_then_transcribes(
    fresh: str, mirror: HubMirror, repo_dir: Path
) -> None:
    assert httpx.get(f"{fresh}/health").json()["model_available"] is False

    # lotti's VoxtralInferenceRepository.downloadModel, as it sends it
    response = httpx.post(
        f"{fresh}/v1/models/pull",
        headers={"Content-Type": "application/json"},
        content=json.dumps({"model_name": REPO, "stream": False}),
        timeout=120,
    )

    assert response.status_code == 200
    expected = pulled_files(repo_dir)
    assert response.json() == {
        "status": "success",
        "model": REPO,
        "completed": sum(expected.values()),
        "total": sum(expected.values()),
        "files_completed": len(expected),
        "files_total": len(expected),
    }
    assert sorted(file_gets(mirror)) == sorted(expected)  # each once; no Mistral-format weights
    health = httpx.get(f"{fresh}/health").json()
    assert health["model_available"] is True and health["model_loaded"] is False
    assert httpx.get(f"{fresh}/v1/models").json()["data"][0]["downloaded"] is True

    client = OpenAI(base_url=f"{fresh}/v1", api_key="not-needed", max_retries=0, timeout=120)
    with open(FIXTURES / "speech.wav", "rb") as f:
        transcript = client.audio.transcriptions.create(model=REPO, file=f)
    assert isinstance(transcript.text, str)

    # pulling a complete model again downloads nothing
    mirror.requests.clear()
    again = httpx.post(f"{fresh}/v1/models/pull", json={"model": REPO, "stream": False}, timeout=60)
    assert again.status_code == 200
    assert again.json()["status"] == "success" and again.json()["completed"] == 0
    assert file_gets(mirror) == []


def test_streamed_pull_reports_progress_until_success(fresh: str, mirror: HubMirror, repo_dir: Path) -> None:
    mirror.bytes_per_second = 2_000_000  # the 3.3 MB weights take well over a second

    with httpx.stream("POST", f"{fresh}/v1/models/pull", timeout=120) as response:  # no body: the served model
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)

    assert events[-1] == "[DONE]"
    statuses = [json.loads(e) for e in events[:-1]]
    assert statuses[0]["status"] == "pulling"
    assert statuses[-1]["status"] == "success"
    progress = [s for s in statuses if s["status"] == "downloading"]
    assert len(progress) >= 3
    done = [s["completed"] for s in statuses]
    assert done == sorted(done), "completed bytes never go back"
    assert any(0 < s["completed"] < s["total"] for s in progress), "progress shows a download in flight"
    expected = pulled_files(repo_dir)
    assert statuses[-1]["completed"] == statuses[-1]["total"] == sum(expected.values())
    assert statuses[-1]["files_completed"] == statuses[-1]["files_total"] == len(expected)


def test_pulls_at_the_same_time_share_one_download(fresh: str, mirror: HubMirror, repo_dir: Path) -> None:
    mirror.hold = True  # file bodies wait until both pulls are in
    results: list[httpx.Response] = []

    def pull() -> None:
        results.append(httpx.post(f"{fresh}/v1/models/pull", json={"stream": False}, timeout=120))

    threads = [threading.Thread(target=pull) for _ in range(2)]
    threads[0].start()
    deadline = time.monotonic() + 30
    while not file_gets(mirror) and time.monotonic() < deadline:
        time.sleep(0.02)
    threads[1].start()
    time.sleep(0.5)
    mirror.release.set()
    for thread in threads:
        thread.join(timeout=120)

    assert [r.status_code for r in results] == [200, 200]
    assert [r.json()["status"] for r in results] == ["success", "success"]
    assert sorted(file_gets(mirror)) == sorted(pulled_files(repo_dir)), "every file fetched once"
    listings = [path for method, path in mirror.requests if path.startswith(f"/api/models/{REPO}/revision/")]
    assert len(listings) == 1, "the second pull joined the first instead of starting its own"


def test_a_dropped_connection_is_a_502_and_the_next_pull_completes(fresh: str, mirror: HubMirror) -> None:
    mirror.fail_after_bytes = 1 << 20  # the weights never get past 1 MiB, retries included

    failed = httpx.post(f"{fresh}/v1/models/pull", json={"stream": False}, timeout=120)

    assert failed.status_code == 502
    error = failed.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "model_download_failed"
    assert REPO in error["message"] and mirror.url in error["message"]
    assert httpx.get(f"{fresh}/health").json()["model_available"] is False, "a partial snapshot is not available"

    mirror.fail_after_bytes = None
    retried = httpx.post(f"{fresh}/v1/models/pull", json={"stream": False}, timeout=120)
    assert retried.status_code == 200 and retried.json()["status"] == "success"
    assert httpx.get(f"{fresh}/health").json()["model_available"] is True


def test_a_repository_the_hub_does_not_have(fresh: str, mirror: HubMirror, repo_dir: Path) -> None:
    mirror.repos.clear()
    try:
        plain = httpx.post(f"{fresh}/v1/models/pull", json={"stream": False}, timeout=60)
        with httpx.stream("POST", f"{fresh}/v1/models/pull", json={"stream": True}, timeout=60) as response:
            streamed_status = response.status_code
            events = sse_events(response)
    finally:
        mirror.repos[REPO] = Repo(repo_dir)

    assert plain.status_code == 502
    assert "no such repository" in plain.json()["error"]["message"]
    assert streamed_status == 200  # the stream had started: the error is its last event
    assert json.loads(events[0])["status"] == "pulling"
    last = json.loads(events[-1])
    assert last["error"]["code"] == "model_download_failed" and "no such repository" in last["error"]["message"]
    assert httpx.get(f"{fresh}/health").json()["status"] == "healthy"


def test_offline_mode_says_so_and_touches_no_network(mirror: HubMirror, tmp_path: Path) -> None:
    mirror.requests.clear()
    with server_process(mirror, tmp_path, offline=True) as url:
        response = httpx.post(f"{url}/v1/models/pull", json={"stream": False}, timeout=60)
        healthy = httpx.get(f"{url}/health").json()
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "hub_unreachable" and "HF_HUB_OFFLINE is set" in error["message"]
    assert mirror.requests == []
    assert healthy["status"] == "healthy" and healthy["model_available"] is False


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model_name": "no-such-model"}, 404, "model_not_found", "model"),
        ({"model_name": REPO, "model": "other"}, 400, "invalid_value", "model"),
        ({"model_name": REPO, "insecure": True}, 400, "unknown_parameter", "insecure"),
        ({"model_name": ""}, 400, "invalid_value", "model_name"),
        ({"stream": "sometimes"}, 400, "invalid_value", "stream"),
    ],
)
def test_bad_pull_requests_are_refused_before_any_download(
    server: tuple[str, Path], mirror: HubMirror, body: dict[str, object], status: int, code: str, param: str
) -> None:
    url, _ = server
    mirror.requests.clear()
    response = httpx.post(f"{url}/v1/models/pull", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert mirror.requests == []


def test_malformed_json_is_a_400(server: tuple[str, Path]) -> None:
    url, _ = server
    response = httpx.post(
        f"{url}/v1/models/pull", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_local_checkpoint_has_nothing_to_pull(base_url: str, tiny_model_dir: Path) -> None:
    response = httpx.post(f"{base_url}/v1/models/pull", json={"model_name": "voxtral-tiny", "stream": False})
    assert response.status_code == 200
    files = sum(1 for p in tiny_model_dir.iterdir() if p.is_file())
    assert response.json() == {
        "status": "success",
        "model": "voxtral-tiny",
        "completed": 0,
        "total": 0,
        "files_completed": files,
        "files_total": files,
    }


def test_pull_is_post_only(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/models/pull")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json()["error"] == {
        "message": "Method Not Allowed",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
    assert httpx.get(f"{base_url}/v1/models/voxtral-tiny").status_code == 200  # the model route still answers


def test_a_missing_local_checkpoint_is_a_503_that_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    with running_server(model=str(missing)) as url:
        response = httpx.post(f"{url}/v1/models/pull", json={"stream": False})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "hf download" in error["message"] and str(missing) in error["message"]
