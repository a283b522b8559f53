"""Slow and vanishing clients against the real server process: header and body read timeouts, the
connection cap, bounded logging, and one INFO line for a client that leaves mid-upload."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from .conftest import FIXTURES, running_server
from .server_process import ServerProcess, serve_process

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 6
WAV = (FIXTURES / "speech.wav").read_bytes()


def multipart(model: str = "voxtral-tiny") -> tuple[bytes, bytes]:
    """(content type, body) of a transcription upload of the fixture WAV."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model.encode() + b"\r\n"
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="speech.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + WAV + b"\r\n--B--\r\n"
    )
    return b"multipart/form-data; boundary=B", body


CHAT = b'{"model": "voxtral-tiny", "messages": [{"role": "user", "content": "hello"}]}'
# Every route that reads a body, as each body kind arrives: (path, content type, body, chunked).
BODY_ROUTES = [
    ("/v1/audio/transcriptions", *multipart(), False),
    ("/v1/audio/translations", *multipart(), False),
    ("/v1/audio/transcriptions", *multipart(), True),
    ("/v1/chat/completions", b"application/json", CHAT, False),
    ("/v1/models/pull", b"application/json", b'{"stream": false}', False),
]


def request_head(path: str, content_type: bytes, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\n%s\r\n\r\n" % (
        path.encode(),
        content_type,
        framing,
    )


def partial_request(path: str, content_type: bytes, body: bytes, chunked: bool) -> bytes:
    """The head and the first half of the body (a chunked body: its first chunk, no last chunk)."""
    half = body[: len(body) // 2]
    if chunked:
        return request_head(path, content_type, None) + b"%x\r\n%s\r\n" % (len(half), half)
    return request_head(path, content_type, len(body)) + half


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("slow-clients") / "server.log"
    settings = {
        "header_timeout_s": str(HEADER_TIMEOUT_S),
        "body_timeout_s": str(BODY_TIMEOUT_S),
        "max_connections": str(MAX_CONNECTIONS),
    }
    with serve_process(tiny_model_dir, log_path, **settings) as served:
        yield served


def serves(server: ServerProcess) -> bool:
    return httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(("path", "content_type", "body", "chunked"), BODY_ROUTES)
def test_a_stalled_body_gets_408(
    server: ServerProcess, path: str, content_type: bytes, body: bytes, chunked: bool
) -> None:
    with server.connect() as sock:
        sock.sendall(partial_request(path, content_type, body, chunked))
        started = time.monotonic()
        answer = read_until_closed(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"request_timeout"' in answer and b"application/json" in answer
    assert BODY_TIMEOUT_S * 0.9 < waited < BODY_TIMEOUT_S + 10
    assert serves(server)


def test_a_slow_but_steady_body_is_read_whole(server: ServerProcess) -> None:
    """The body timeout is per read: pieces that keep coming are waited for however long the whole takes."""
    content_type, body = multipart(model="no-such-model")
    pieces = [body[i : i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
    with server.connect() as sock:
        sock.sendall(request_head("/v1/audio/transcriptions", content_type, len(body)))
        for piece in pieces:  # about 3 s in all, more than the 2 s timeout
            time.sleep(BODY_TIMEOUT_S / 3)
            sock.sendall(piece)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 404") and b"model_not_found" in answer  # parsed to its end


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1",
        b"G",
    ],
)
def test_a_stalled_header_is_closed_with_408(server: ServerProcess, head: bytes) -> None:
    with server.connect() as sock:
        sock.sendall(head)
        started = time.monotonic()
        answer = read_until_closed(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer
    assert HEADER_TIMEOUT_S * 0.9 < waited < HEADER_TIMEOUT_S + 10
    assert serves(server)


def test_a_trickling_header_is_closed_too(server: ServerProcess) -> None:
    """The header timeout bounds the whole head, however steadily its bytes come."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 64
    with server.connect() as sock:
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
            pytest.fail("the server read a head that took longer than its header timeout")
        waited = time.monotonic() - started
    assert waited < HEADER_TIMEOUT_S + 10


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        b"GET /health?x=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_a_request_http_cannot_parse_gets_the_envelope(server: ServerProcess, request_bytes: bytes) -> None:
    """What h11 refuses before any app sees it is a 400 in the OpenAI envelope (uvicorn writes plain text),
    the connection closed, and nothing above WARNING in the log."""
    with server.connect() as sock:
        sock.sendall(request_bytes)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), answer[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_http_request" and error["type"] == "invalid_request_error"
    assert serves(server)
    assert "Traceback" not in server.log() and " ERROR " not in server.log()


def test_a_silent_connection_is_closed_without_an_answer(server: ServerProcess) -> None:
    for request_first in (False, True):  # a fresh connection, and a kept-alive one after a request
        with server.connect() as sock:
            if request_first:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert read_response(sock).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert read_until_closed(sock) == b""
            assert time.monotonic() - started < HEADER_TIMEOUT_S + 10


@pytest.mark.parametrize("stall", ["headers", "bodies"])
def test_beyond_the_connection_cap_requests_get_503_until_the_stalled_ones_time_out(
    server: ServerProcess, stall: str
) -> None:
    content_type, body = multipart()
    with ExitStack() as stack:
        stalled = [stack.enter_context(server.connect()) for _ in range(MAX_CONNECTIONS)]
        for sock in stalled:
            if stall == "headers":
                sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                sock.sendall(partial_request("/v1/audio/transcriptions", content_type, body, chunked=False))
        time.sleep(0.3)
        for _ in range(3):
            refused = httpx.get(f"{server.url}/v1/models", timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "too_many_connections"
            assert refused.headers["connection"] == "close" and int(refused.headers["retry-after"]) >= 1
        refused = httpx.post(f"{server.url}/v1/audio/transcriptions", content=body, timeout=10,
                             headers={"Content-Type": content_type.decode()})  # fmt: skip
        assert refused.status_code == 503  # a refused upload's 503 arrives whole (its body is drained first)
        for sock in stalled:
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408")
    deadline = time.monotonic() + 10
    while httpx.get(f"{server.url}/v1/models", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the server did not serve again after the stalled clients timed out"
        time.sleep(0.1)
    log = server.wait_for_log("back within VOXTRAL_MAX_CONNECTIONS")
    assert "Traceback" not in log


def test_log_volume_for_many_stalled_clients_is_bounded(server: ServerProcess) -> None:
    """Forty stalled clients (silent, stalled heads, stalled bodies; most beyond the cap) leave at most two
    short lines each, and no traceback."""
    before = len(server.log())
    content_type, body = multipart()
    with ExitStack() as stack:
        socks = [stack.enter_context(server.connect()) for _ in range(40)]
        for i, sock in enumerate(socks):
            if i % 3 == 1:
                sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            elif i % 3 == 2:
                sock.sendall(partial_request("/v1/audio/transcriptions", content_type, body, chunked=False))
        for sock in socks:
            read_until_closed(sock)
    assert serves(server)
    added = server.log()[before:]
    lines = added.splitlines()
    assert len(lines) <= 2 * 40 + 2, added
    assert all(len(line) < 300 for line in lines), added
    assert "Traceback" not in added and "ERROR" not in added


@pytest.mark.parametrize(("path", "content_type", "body", "chunked"), BODY_ROUTES)
def test_a_client_leaving_mid_upload_is_one_info_line(
    server: ServerProcess, path: str, content_type: bytes, body: bytes, chunked: bool
) -> None:
    before = len(server.log())
    with server.connect() as sock:
        sock.sendall(partial_request(path, content_type, body, chunked))
        time.sleep(0.3)
    line = "client disconnected during its request body"
    server.wait_for_log(line)
    time.sleep(0.5)  # anything else it would log about it
    assert serves(server)
    added = server.log()[before:]
    assert added.count(line) == 1, added
    assert "INFO voxtral_local.api.timeouts: 127.0.0.1:" in added and f"POST {path}" in added
    assert "Traceback" not in added and "ERROR" not in added
    assert [entry for entry in added.splitlines() if "/health" not in entry and line not in entry] == []


def test_streams_outlive_the_body_timeout(tiny_model_dir: Path) -> None:
    """Once the body is complete the timeout is off: a response that takes longer than it is not cut."""
    with running_server(model=str(tiny_model_dir), body_timeout_s=0.05) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)
        started = time.monotonic()
        with (FIXTURES / "speech.wav").open("rb") as audio:
            events = list(client.audio.transcriptions.create(model="voxtral-tiny", file=audio, stream=True))
        assert events[-1].type == "transcript.text.done"
        assert time.monotonic() - started > 0.05  # (loading the model alone takes longer)
        with (FIXTURES / "speech.wav").open("rb") as audio:
            assert isinstance(client.audio.transcriptions.create(model="voxtral-tiny", file=audio).text, str)
