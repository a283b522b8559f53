"""Who may talk to the server: the `Host` it is reached by, the browser `Origin` a request comes from, and the
API key. ASGI middleware, so a refusal happens before any body is read or any work is done.

Why our own middleware: Starlette's TrustedHostMiddleware answers a plain-text 400 (clients expect OpenAI's
envelope, and 403 is the status for "not served here"), and it knows nothing of origins. Starlette's
CORSMiddleware is used as is for the CORS headers and preflights of the listed origins; it never refuses a
request, it only leaves the CORS headers off, which stops a browser from reading the answer but not the
request itself (a multipart POST or an empty POST is a "simple" request that needs no preflight).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import AuthenticationError, ForbiddenError, VoxtralError, quote
from .errors import domain_error_response

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNSPECIFIED_ADDRESSES = ("", "0.0.0.0", "::")
OPEN_PATHS = frozenset({"/health", "/"})  # answered without the API key (liveness probes, the web page)
OPEN_PREFIXES = ("/web/",)  # the web page's static files: they hold no data; the page asks for the key
# A browser cannot set Authorization on a WebSocket: it offers the key as a subprotocol (OpenAI's convention).
KEY_SUBPROTOCOL = "openai-insecure-api-key."


def is_open_path(path: str) -> bool:
    """Whether `path` is answered without the API key."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def offered_key(scope: Scope) -> bytes | None:
    """The API key a WebSocket handshake offers as an `openai-insecure-api-key.<key>` subprotocol, else None."""
    for value in Headers(scope=scope).getlist("sec-websocket-protocol"):
        for protocol in value.split(","):
            protocol = protocol.strip()
            if protocol.startswith(KEY_SUBPROTOCOL):
                return protocol[len(KEY_SUBPROTOCOL) :].encode("latin-1")
    return None


@dataclass(frozen=True)
class HostPolicy:
    """The `Host` names served: exact names, `*.suffix` patterns, or everything (`*`)."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    any_host: bool = False

    @classmethod
    def of(cls, patterns: Iterable[str]) -> HostPolicy:
        """From lower-case names and patterns as VOXTRAL_ALLOWED_HOSTS holds them."""
        names: set[str] = set()
        suffixes: list[str] = []
        any_host = False
        for pattern in patterns:
            if pattern == "*":
                any_host = True
            elif pattern.startswith("*."):
                suffixes.append(pattern[1:])  # ".example.com"
            else:
                names.add(host_name(pattern) or pattern)
        return cls(frozenset(names), tuple(suffixes), any_host)

    def allows(self, name: str) -> bool:
        return self.any_host or name in self.names or name.endswith(self.suffixes)


def served_hosts(settings: Settings) -> HostPolicy:
    """Loopback names, the bound address (unless it is 0.0.0.0 or ::), and VOXTRAL_ALLOWED_HOSTS."""
    bound = [] if settings.host in UNSPECIFIED_ADDRESSES else [settings.host.lower()]
    return HostPolicy.of([*LOOPBACK_NAMES, *bound, *settings.allowed_host_names])


def host_name(value: str) -> str | None:
    """The name in a `Host` header value (RFC 9110 §7.2: `host[:port]`, an IPv6 address in brackets),
    lower-cased, without port, brackets or a trailing dot; None when the value is not of that form."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        return name or None
    name, colon, port = value.rpartition(":")
    if not colon:
        name = value
    elif not _is_port(port) or ":" in name:
        return None
    if name.endswith("."):
        name = name[:-1]  # the fully qualified spelling of the same name
    return name or None


def _origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized origin such as `http://localhost:3000`; None for `null` or junk."""
    scheme, sep, authority = origin.partition("://")
    if not sep or "/" in authority or scheme not in ("http", "https"):
        return None
    name = host_name(authority)
    if name is None:
        return None
    port_text = authority.rpartition(":")[2] if not authority.endswith("]") else ""
    port = int(port_text) if _is_port(port_text) else (443 if scheme == "https" else 80)
    return scheme, name, port


def same_origin(origin: str, scope: Scope, host: str) -> bool:
    """Whether `origin` is the server's own origin as this request reached it (a page the server served)."""
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
    return _origin_parts(origin) is not None and _origin_parts(origin) == _origin_parts(f"{scheme}://{host}")


def _is_port(text: str) -> bool:
    """Whether `text` is a port number as RFC 3986 writes it: ASCII digits only (`str.isdigit` also takes
    characters such as '²' that `int` refuses), at most five."""
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


async def refuse(scope: Scope, receive: Receive, send: Send, error: VoxtralError, headers: dict[str, str]) -> None:
    """Answer `error` as its envelope. A WebSocket handshake gets the same HTTP answer where the server
    supports ASGI's `websocket.http.response` extension, else a close with code 1008 (policy violation),
    which servers send as a 403."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
        return
    response = domain_error_response(error)
    response.headers.update(headers)
    await response(scope, receive, send)  # Starlette prefixes the messages with "websocket." for a WebSocket


class AccessGuard:
    """403 for a request whose `Host` is not served (DNS rebinding: a page on attacker.example whose name
    now resolves to 127.0.0.1 still sends `Host: attacker.example`), whose `Origin` is neither listed in
    VOXTRAL_CORS_ORIGINS nor the server's own, or that a browser marks `Sec-Fetch-Site: cross-site` while
    sending no `Origin` (a cross-site GET such as an `<img>` or `no-cors` fetch; same-site and direct
    navigation pass). HTTP and WebSocket scopes alike; others (lifespan) pass through."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy, cors_origins: list[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is not None:
            logger.debug("refused %s %s: %s", scope.get("method", "WEBSOCKET"), scope.get("path"), problem.message)
            await refuse(scope, receive, send, problem, {"Connection": "close"})
            return
        await self.app(scope, receive, send)

    def problem(self, scope: Scope) -> ForbiddenError | None:
        """Why this request is refused, or None."""
        headers = Headers(scope=scope)
        hosts = headers.getlist("host")
        name = host_name(hosts[0]) if len(hosts) == 1 else None
        if name is None or not self.hosts.allows(name):
            shown = quote(hosts[0]) if len(hosts) == 1 else f"({len(hosts)} Host headers)"
            return ForbiddenError(
                f"Host {shown} is not served here: add the name to VOXTRAL_ALLOWED_HOSTS to allow it.",
                code="host_not_allowed",
            )
        origins = headers.getlist("origin")
        if origins:
            origin = origins[0].strip().lower()
            listed = self.any_origin or origin in self.origins
            if len(origins) == 1 and (listed or same_origin(origin, scope, hosts[0])):
                return None
            return ForbiddenError(
                f"Requests from origin {quote(origins[0]) if len(origins) == 1 else '(several)'} are not allowed: "
                "add it to VOXTRAL_CORS_ORIGINS to let that site's pages call this server.",
                code="origin_not_allowed",
            )
        if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
            return ForbiddenError(
                "Cross-site requests without an Origin are not allowed (Sec-Fetch-Site: cross-site).",
                code="origin_not_allowed",
            )
        return None


class ApiKeyAuth:
    """401 unless the request carries `Authorization: Bearer <api_key>` (compared in constant time), or, for a
    WebSocket, offers it as the `openai-insecure-api-key.<key>` subprotocol (browsers cannot set headers on a
    WebSocket); `is_open_path` paths are open. Preflights of listed origins are answered by CORSMiddleware,
    outside."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.strip().encode()  # header values carry no surrounding whitespace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        offered = offered_key(scope) if scope["type"] == "websocket" else None
        if offered is not None and hmac.compare_digest(offered, self.key):
            await self.app(scope, receive, send)
            return
        # Starlette decodes header bytes as Latin-1: encoding back gives the bytes sent (a UTF-8 key matches).
        scheme, _, token = Headers(scope=scope).get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), self.key):
            await self.app(scope, receive, send)
            return
        if offered is not None and not scheme:
            message = (
                "Incorrect API key provided in the `openai-insecure-api-key.<key>` WebSocket subprotocol: send "
                "VOXTRAL_API_KEY's value."
            )
            challenge = 'Bearer error="invalid_token"'
        elif scheme:
            message = "Incorrect API key provided: send VOXTRAL_API_KEY's value as `Authorization: Bearer <key>`."
            challenge = 'Bearer error="invalid_token"'
        else:
            message = "You didn't provide an API key: send VOXTRAL_API_KEY's value as `Authorization: Bearer <key>`."
            challenge = "Bearer"
        # Closing after the answer: the body is left unread, and a connection still sending it would otherwise
        # be held by a client that trickles it (uvicorn discards it with no timeout).
        headers = {"WWW-Authenticate": challenge, "Connection": "close"}
        await refuse(scope, receive, send, AuthenticationError(message), headers)


def install_access_control(app: FastAPI, settings: Settings) -> None:
    """Add, outermost first: AccessGuard, CORSMiddleware (only with VOXTRAL_CORS_ORIGINS), ApiKeyAuth (only
    with VOXTRAL_API_KEY). Call after the app's other middleware, so these run before it."""
    if settings.api_key is not None:
        app.add_middleware(ApiKeyAuth, api_key=settings.api_key.get_secret_value())
    origins = settings.cors_origin_list
    if origins:
        # No credentials mode: the key travels in Authorization, which "*" in allow_headers mirrors back.
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"],
            expose_headers=["*"], max_age=600,
        )  # fmt: skip
    app.add_middleware(AccessGuard, hosts=served_hosts(settings), cors_origins=origins)


def is_loopback(host: str) -> bool:
    """Whether binding `host` (VOXTRAL_HOST) keeps the server on this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings) -> None:
    """Log a WARNING at startup when VOXTRAL_HOST reaches beyond loopback without VOXTRAL_API_KEY, and when
    it is 0.0.0.0/:: while VOXTRAL_ALLOWED_HOSTS names nothing (other machines' requests would get 403)."""
    if is_loopback(settings.host):
        return
    if settings.api_key is None:
        logger.warning(
            "listening on %s, beyond this machine, without VOXTRAL_API_KEY: anyone who can reach it can "
            "transcribe and pull models; set VOXTRAL_API_KEY",
            settings.host,
        )
    if settings.host in UNSPECIFIED_ADDRESSES and not settings.allowed_host_names:
        logger.warning(
            "VOXTRAL_ALLOWED_HOSTS is empty: requests that name this machine by anything but a loopback "
            "name get 403; list the names and addresses clients use"
        )
