"""Access control: the API key, the Host check (DNS rebinding), browser origins (CSRF, CORS), proxy headers
and the startup warning for a server reachable beyond this machine."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import Message
from starlette.websockets import WebSocket

from voxtral_local.api.access import AccessGuard, ApiKeyAuth, HostPolicy

from .conftest import FIXTURES, free_port, running_server
from .server_process import serve_process, start_process

KEY = "sk-local-test-key"
APP_ORIGIN = "https://app.example"
MULTIPART = {"files": {"file": ("speech.wav", b"RIFF", "audio/wav")}, "data": {"model": "voxtral-tiny"}}
# Every kind of route: reads, a multipart upload, a JSON body, an empty-body POST, the docs, an unknown path.
ROUTES: list[tuple[str, str, dict[str, object]]] = [
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/voxtral-tiny", {}),
    ("POST", "/v1/audio/transcriptions", MULTIPART),
    ("POST", "/v1/audio/translations", MULTIPART),
    ("POST", "/v1/chat/completions", {"json": {"model": "voxtral-tiny", "messages": []}}),
    ("POST", "/v1/models/pull", {}),
    ("GET", "/docs", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/no-such-route", {}),
]


@pytest.fixture(scope="module")
def keyed_url(tiny_model_dir: Path) -> Iterator[str]:
    """A server with an API key and one listed browser origin."""
    with running_server(model=str(tiny_model_dir), api_key=KEY, cors_origins=f"{APP_ORIGIN}/") as url:
        yield url


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    return error


def test_sdk_with_the_right_key_works(keyed_url: str) -> None:
    client = OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY, max_retries=0, timeout=120)
    assert client.models.list().data[0].id == "voxtral-tiny"
    with (FIXTURES / "speech.wav").open("rb") as audio:
        transcript = client.audio.transcriptions.create(model="voxtral-tiny", file=audio)
    assert isinstance(transcript.text, str)


@pytest.mark.parametrize("key", ["wrong", KEY[:-1], KEY + "x", KEY.upper(), "x" * 4096])
def test_sdk_with_a_wrong_key_gets_401(keyed_url: str, key: str) -> None:
    client = OpenAI(base_url=f"{keyed_url}/v1", api_key=key, max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(openai.AuthenticationError), (FIXTURES / "speech.wav").open("rb") as audio:
        client.audio.transcriptions.create(model="voxtral-tiny", file=audio)


@pytest.mark.parametrize(("method", "path", "kwargs"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Basic c2stbG9jYWw6", f"Token {KEY}", "Bearer", f"Bearer {KEY}x"])
def test_every_route_but_health_needs_the_key(
    keyed_url: str, method: str, path: str, kwargs: dict[str, object], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, keyed_url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
    error = assert_envelope(response, 401, "invalid_api_key")
    assert KEY not in str(error["message"])
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_key_opens_every_route(keyed_url: str, scheme: str) -> None:
    headers = {"Authorization": f"{scheme} {KEY}"}
    for method, path, kwargs in ROUTES:
        response = httpx.request(method, keyed_url + path, headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]
        assert response.status_code != 401, (path, response.text)


def test_a_key_with_spaces_around_or_beyond_ascii_works(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), api_key=" clé-secrète ") as url:
        right = {b"Authorization": "Bearer clé-secrète".encode()}
        assert httpx.get(f"{url}/v1/models", headers=right).status_code == 200
        wrong = {b"Authorization": "Bearer clé-secrète".encode("latin-1")}
        assert_envelope(httpx.get(f"{url}/v1/models", headers=wrong), 401, "invalid_api_key")


def test_health_is_open_without_the_key(keyed_url: str) -> None:
    response = httpx.get(f"{keyed_url}/health")
    assert response.status_code == 200 and response.json()["model"] == "voxtral-tiny"


def test_a_listed_origin_gets_preflights_and_cors_headers(keyed_url: str) -> None:
    preflight = httpx.options(
        f"{keyed_url}/v1/audio/transcriptions",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answered = httpx.get(f"{keyed_url}/v1/models", headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == APP_ORIGIN
    # The page can read why it was refused.
    refused = httpx.get(f"{keyed_url}/v1/models", headers={"Origin": APP_ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == APP_ORIGIN


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://app.example", "https://app.example:8443", "null", "file://", "*"]
)
def test_an_unlisted_origin_is_refused_before_any_work(keyed_url: str, base_url: str, origin: str) -> None:
    for url in (keyed_url, base_url):  # base_url lists no origin at all (the default)
        headers = {"Origin": origin, "Authorization": f"Bearer {KEY}"}
        for method, path, kwargs in ROUTES:
            response = httpx.request(method, url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
            assert_envelope(response, 403, "origin_not_allowed")
            assert "access-control-allow-origin" not in response.headers
        preflight = httpx.options(
            f"{url}/v1/models/pull", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert_envelope(preflight, 403, "origin_not_allowed")


def test_a_refused_origin_is_answered_before_its_body_arrives(base_url: str) -> None:
    """The 403 comes while the declared body has not been sent (the body timeout is 30 s)."""
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 50000000\r\n\r\n--x\r\n"
        )
        started = time.monotonic()
        answer = b"".join(iter(lambda: sock.recv(65536), b""))  # until the server closes
    assert answer.startswith(b"HTTP/1.1 403") and b'"origin_not_allowed"' in answer
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        (b"127.0.0.1", b"http://localhost:\xb2"),  # '\xb2' is '²': str.isdigit() says yes, int() says no
        (b"localhost:\xb2", b"https://evil.example"),
        (b"[::1]:\xb9", b"http://[::1]:\xb9"),
        (b"localhost:123456", b"http://localhost:123456"),
    ],
)
def test_odd_ports_in_host_or_origin_are_refused_not_crashed(base_url: str, host: bytes, origin: bytes) -> None:
    """Header bytes h11 lets through (Latin-1) as ports: a 403 envelope, never a 500 with a traceback."""
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\nOrigin: " + origin + b"\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))  # until the server closes
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b'"host_not_allowed"' in answer or b'"origin_not_allowed"' in answer


@pytest.mark.parametrize(
    ("which", "extra", "status"),
    [
        ("keyed", b"Authorization: Bearer wrong\r\nContent-Type: multipart/form-data; boundary=x\r\n", b"401"),
        ("keyed", b"Content-Type: multipart/form-data; boundary=x\r\n", b"401"),
        ("open", b"Content-Type: application/json\r\n", b"415"),
    ],
)
def test_an_answer_given_before_the_body_closes_the_connection(
    keyed_url: str, base_url: str, which: str, extra: bytes, status: bytes
) -> None:
    """A refusal sent while most of the declared body is still to come closes the connection, so a client
    cannot hold it by trickling the rest (the server would otherwise read and discard it with no timeout)."""
    port = int((keyed_url if which == "keyed" else base_url).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra
            + b"Content-Length: 50000000\r\n\r\n--x\r\n"
        )  # fmt: skip
        started = time.monotonic()
        answer = b"".join(iter(lambda: sock.recv(65536), b""))  # until the server closes
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - started < 5


def test_same_origin_pages_and_navigation_pass(base_url: str) -> None:
    port = base_url.rsplit(":", 1)[1]
    for headers in (
        {"Origin": f"http://127.0.0.1:{port}"},  # the server's own /docs page
        {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
        {"Sec-Fetch-Site": "same-site"},
    ):
        assert httpx.get(f"{base_url}/v1/models", headers=headers).status_code == 200, headers


def test_a_cross_site_request_without_origin_is_refused(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/models", headers={"Sec-Fetch-Site": "cross-site"})
    assert_envelope(response, 403, "origin_not_allowed")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:{port}", True),
        ("LocalHost:{port}", True),
        ("localhost.:{port}", True),
        ("127.0.0.1:{port}", True),
        ("127.0.0.1:1", True),
        ("[::1]:{port}", True),
        ("[::1]", True),
        ("evil.example", False),
        ("evil.example:{port}", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example:{port}", False),
        ("127.0.0.2:{port}", False),
        ("192.168.1.10:{port}", False),
        ("::1", False),
        ("[::1", False),
        ("localhost:port", False),
        ("", False),
    ],
)
def test_only_loopback_hosts_are_served_by_default(base_url: str, host: str, allowed: bool) -> None:
    port = base_url.rsplit(":", 1)[1]
    response = httpx.get(f"{base_url}/v1/models", headers={"Host": host.format(port=port)})
    if allowed:
        assert response.status_code == 200
    else:
        assert_envelope(response, 403, "host_not_allowed")


def test_a_request_without_host_is_refused(base_url: str) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 403") and b'"host_not_allowed"' in answer


def test_allowed_hosts_add_names_and_patterns(tiny_model_dir: Path) -> None:
    with running_server(model=str(tiny_model_dir), allowed_hosts="Box.LAN, *.example.org") as url:
        for host, status in [
            ("box.lan:11344", 200),
            ("a.example.org", 200),
            ("a.b.example.org:80", 200),
            ("example.org", 403),
            ("box.lan.evil", 403),
            ("localhost", 200),
        ]:
            assert httpx.get(f"{url}/v1/models", headers={"Host": host}).status_code == status, host
    with running_server(model=str(tiny_model_dir), allowed_hosts="*") as url:
        assert httpx.get(f"{url}/v1/models", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.slow  # a server process of its own
def test_forwarded_for_is_ignored_unless_a_proxy_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    """uvicorn's access log names the client: a forged X-Forwarded-For must not change it."""
    forged = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    with serve_process(tiny_model_dir, tmp_path / "default.log") as server:
        httpx.get(f"{server.url}/v1/models", headers=forged)
        log = server.wait_for_log('"GET /v1/models HTTP/1.1" 200')
    assert "127.0.0.1:" in log.split('"GET /v1/models')[0].rsplit("\n", 1)[1]
    assert "203.0.113.7" not in log
    assert "WARNING" not in log  # loopback (127.0.0.1) without a key is fine
    with serve_process(tiny_model_dir, tmp_path / "proxied.log", forwarded_allow_ips="127.0.0.1") as server:
        httpx.get(f"{server.url}/v1/models", headers=forged)
        log = server.wait_for_log('"GET /v1/models HTTP/1.1" 200')
    assert '203.0.113.7:0 - "GET /v1/models HTTP/1.1" 200' in log


def startup_log(model_dir: Path, log_path: Path, host: str, port: int, **settings: str) -> str:
    """The log of a server asked to bind `host`:`port`, which fails (the address is not this machine's, or
    the port is taken): startup runs up to the bind, and nothing is ever exposed."""
    process = start_process(model_dir, log_path, port, host=host, **settings)
    assert process.wait(timeout=60) != 0
    return log_path.read_text()


def test_binding_beyond_loopback_without_a_key_warns(tiny_model_dir: Path, tmp_path: Path) -> None:
    test_net = "192.0.2.1"  # RFC 5737 TEST-NET-1: never this machine's address
    log = startup_log(tiny_model_dir, tmp_path / "a.log", test_net, free_port())
    assert "WARNING" in log and f"listening on {test_net}" in log and "without VOXTRAL_API_KEY" in log
    log = startup_log(tiny_model_dir, tmp_path / "b.log", test_net, free_port(), api_key=KEY)
    assert "without VOXTRAL_API_KEY" not in log and KEY not in log
    with socket.socket() as taken:  # 0.0.0.0 on a port already bound on all interfaces
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        log = startup_log(tiny_model_dir, tmp_path / "c.log", "0.0.0.0", taken.getsockname()[1])
    assert "without VOXTRAL_API_KEY" in log and "VOXTRAL_ALLOWED_HOSTS is empty" in log


@pytest.mark.slow  # a server process of its own; the warning's positive case stays in the default loop
def test_binding_loopback_does_not_warn(tiny_model_dir: Path, tmp_path: Path) -> None:
    """127.0.0.1 is covered by the servers above; localhost and ::1 here."""
    for host in ("localhost", "::1"):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as taken:
            taken.bind((host, 0))
            taken.listen()
            log = startup_log(tiny_model_dir, tmp_path / "d.log", host, taken.getsockname()[1])
        assert "WARNING" not in log and "address already in use" in log.lower()


def test_websocket_handshakes_meet_the_same_rules() -> None:
    """Starlette's test client drives the middleware around a small echo app (/v1/realtime's own handshakes
    are in test_realtime_ws.py): refusals are the HTTP envelope (ASGI's `websocket.http.response` extension)
    or, where a server lacks it, a 1008 close. A browser's key comes as a subprotocol."""

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    inner = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app = AccessGuard(ApiKeyAuth(inner, api_key=KEY), hosts=HostPolicy.of(["testserver"]), cors_origins=[APP_ORIGIN])
    client = TestClient(app)
    with client.websocket_connect("/ws", headers={"Authorization": f"Bearer {KEY}", "Origin": APP_ORIGIN}) as ws:
        assert ws.receive_text() == "hello"
    with client.websocket_connect("/ws", subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert ws.receive_text() == "hello"
    wrong = ["realtime", "openai-insecure-api-key.wrong"]
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws", subprotocols=wrong):
        pass
    message = denied.value.json()["error"]["message"]
    assert denied.value.status_code == 401 and "Incorrect API key" in message and "subprotocol" in message
    for headers, status, code in [
        ({"Authorization": f"Bearer {KEY}", "Origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ({"Authorization": f"Bearer {KEY}", "Host": "evil.example"}, 403, "host_not_allowed"),
        ({"Origin": APP_ORIGIN}, 401, "invalid_api_key"),
    ]:
        with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws", headers=headers):
            pass
        assert denied.value.status_code == status and denied.value.json()["error"]["code"] == code

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"evil.example")], "extensions": {}}
    asyncio.run(app(scope, receive, send))
    assert [m["type"] for m in sent] == ["websocket.close"] and sent[0]["code"] == 1008
