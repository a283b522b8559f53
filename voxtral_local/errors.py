"""Domain exceptions. The HTTP layer maps each `kind` to a status code in one place."""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from enum import Enum

# Most characters of client input an error message quotes (a value, a field name, a content type).
QUOTE_LIMIT = 80
_REPR = reprlib.Repr()  # Python 3.11's takes no arguments
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 3, 3, 3, 3
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 40, 40, 40


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` as an error message shows client input: a string in quotes, anything else as its Python repr,
    at most about `limit` characters, the rest elided with "..." and how long it was. Cheap on huge input:
    `reprlib` looks at the first few items of a list and the first characters of a string only."""
    if isinstance(value, str):
        if len(value) <= limit:
            return f"'{value}'"
        return f"'{value[: limit - 3]}...' ({len(value)} characters)"
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer past Python's 4300-digit limit on conversion to text
        text = f"<a {type(value).__name__} too long to show>"
    extra = f" ({len(value)} items)" if isinstance(value, list | tuple | dict | set) and len(value) > 3 else ""
    return (text if len(text) <= limit else text[: limit - 3] + "...") + extra


def shorten(text: str, limit: int = 200) -> str:
    """`text` (a library's message, which may hold client input) cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ErrorKind(Enum):
    """What went wrong, independent of transport."""

    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_UNAVAILABLE = "model_unavailable"
    CONFLICT = "conflict"
    DOWNLOAD_FAILED = "download_failed"
    STORAGE_FULL = "storage_full"
    CLIENT_GONE = "client_gone"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"
    # Access control and slow clients
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    # Upstream model servers (VOXTRAL_BACKEND=vllm)
    UPSTREAM_FAILED = "upstream_failed"
    UPSTREAM_TIMEOUT = "upstream_timeout"


class VoxtralError(Exception):
    """Base error with an OpenAI-style `code` and the offending `param`."""

    kind = ErrorKind.INTERNAL
    code = "internal_error"
    retry_after: int | None = None  # seconds a client should wait before trying again, when that is known

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(VoxtralError):
    """The request itself is wrong (a bad field, an unsupported option)."""

    kind = ErrorKind.INVALID_REQUEST
    code = "invalid_value"


class UnsupportedMediaTypeError(VoxtralError):
    """The request body is not in a format the endpoint takes (JSON sent where multipart is expected)."""

    kind = ErrorKind.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class AudioDecodeError(InvalidRequestError):
    """The uploaded audio is empty, truncated or not decodable."""

    code = "invalid_audio"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="file")


class AudioTooLongError(InvalidRequestError):
    """The audio decodes to more than the configured limit."""

    code = "audio_too_long"

    def __init__(self, limit_seconds: float, decoded_seconds: float) -> None:
        super().__init__(
            f"Audio is longer than the limit of {limit_seconds / 60:g} minutes "
            f"(stopped decoding at {decoded_seconds:.1f} s).",
            param="file",
        )
        self.limit_seconds = limit_seconds
        self.decoded_seconds = decoded_seconds


class PayloadTooLargeError(VoxtralError):
    """The request body is larger than the upload limit."""

    kind = ErrorKind.PAYLOAD_TOO_LARGE
    code = "request_too_large"


class ModelNotFoundError(VoxtralError):
    """The request names a model this server does not serve."""

    kind = ErrorKind.MODEL_NOT_FOUND
    code = "model_not_found"

    def __init__(self, model: str, served: Sequence[str]) -> None:
        names = ", ".join(f"'{name}'" for name in served)
        super().__init__(
            f"The model {quote(model)} does not exist on this server; it serves {names} (GET /v1/models lists "
            "them with their aliases).",
            param="model",
        )


class ModelNotDownloadedError(VoxtralError):
    """The model is served but its checkpoint is not on this machine (and VOXTRAL_AUTO_DOWNLOAD is off).
    A 404, so that clients such as lotti offer to download it."""

    kind = ErrorKind.MODEL_NOT_FOUND
    code = "model_not_downloaded"

    def __init__(self, model: str, hint: str | None = None) -> None:
        super().__init__(
            hint
            or f"The model {quote(model)} is not downloaded. Download it with `POST /v1/models/pull` "
            f'(body {{"model": "{model}"}}) or `voxtral-local pull {model}`, then try again.',
            param="model",
        )


class ModelUnavailableError(VoxtralError):
    """The model cannot be loaded right now (missing files, no network, out of memory)."""

    kind = ErrorKind.MODEL_UNAVAILABLE
    code = "model_unavailable"


class UndecodableOutputError(ModelUnavailableError):
    """The model generated tokens its tokenizer cannot turn into text (a checkpoint whose LM head is larger
    than its tokenizer's vocabulary); that request fails with a 503, the server goes on."""

    code = "undecodable_model_output"

    def __init__(self, vocabulary: int) -> None:
        super().__init__(
            f"The model generated tokens its tokenizer cannot decode (the tokenizer has {vocabulary} ids; "
            "the checkpoint's LM head and tokenizer do not match)."
        )


class InsufficientMemoryError(ModelUnavailableError):
    """Loading the model would take more memory than is free (or than VOXTRAL_MODELS_MEMORY_GB leaves), even
    after unloading the idle models: a 503 saying how much it needs and how much is free."""

    code = "insufficient_memory"


class ModelNotLoadedError(VoxtralError):
    """`DELETE /api/ps/{id}` for a served model that is not loaded."""

    kind = ErrorKind.MODEL_NOT_FOUND
    code = "model_not_loaded"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model {quote(model)} is not loaded (GET /api/ps lists the loaded models).", param="model"
        )


class ModelConflictError(VoxtralError):
    """The model is not in a state that allows the request: already loaded (`POST /api/ps/{id}`, code
    `model_already_loaded` as speaches answers), a local directory or a pull in progress (`DELETE
    /v1/models/{id}`). A 409."""

    kind = ErrorKind.CONFLICT
    code = "conflict"


class ModelIsRemoteError(ModelConflictError):
    """The model runs on the upstream vLLM servers, so nothing of it is here to pull, delete or unload. A 409."""

    code = "model_is_remote"

    def __init__(self, model_id: str, detail: str) -> None:
        super().__init__(
            f"The model '{model_id}' runs on the upstream vLLM servers (VOXTRAL_VLLM_URLS): {detail}", param="model"
        )


class ModelDownloadError(VoxtralError):
    """Pulling the model from the hub failed (no such repository, no network, a dropped connection)."""

    kind = ErrorKind.DOWNLOAD_FAILED
    code = "model_download_failed"


class StorageFullError(ModelDownloadError):
    """Pulling the model failed for want of disk space."""

    kind = ErrorKind.STORAGE_FULL
    code = "insufficient_storage"


class HubUnreachableError(ModelDownloadError):
    """The Hugging Face Hub (or the mirror HF_ENDPOINT names) did not answer within a few seconds."""

    code = "hub_unreachable"


class GenerationCancelledError(VoxtralError):
    """The client disconnected, so generation for it was stopped."""

    kind = ErrorKind.CLIENT_GONE
    code = "client_disconnected"


class ServerOverloadedError(VoxtralError):
    """The server already holds as much model work as it admits (`VOXTRAL_MAX_QUEUE`); try again later."""

    kind = ErrorKind.OVERLOADED
    code = "rate_limit_exceeded"  # OpenAI's code for a 429 on requests

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(
            f"The server is busy: {limit} requests are already being processed or queued (VOXTRAL_MAX_QUEUE). "
            f"Please retry after {retry_after} s."
        )
        self.retry_after = retry_after


class TooManySessionsError(VoxtralError):
    """`/v1/realtime` already has VOXTRAL_REALTIME_MAX_SESSIONS sessions open."""

    kind = ErrorKind.OVERLOADED
    code = "too_many_sessions"


class SessionIdleError(VoxtralError):
    """A `/v1/realtime` session sent nothing for VOXTRAL_REALTIME_IDLE_TIMEOUT_S seconds; it is closed."""

    kind = ErrorKind.REQUEST_TIMEOUT
    code = "session_idle_timeout"


class BehindRealTimeError(VoxtralError):
    """A live session's audio waits longer than VOXTRAL_REALTIME_LAG_S to be decoded (nothing is dropped)."""

    kind = ErrorKind.OVERLOADED
    code = "behind_real_time"


class ServerShuttingDownError(VoxtralError):
    """The server is shutting down: new work is refused, and work still running at the deadline is stopped."""

    kind = ErrorKind.SHUTTING_DOWN
    code = "server_shutting_down"


class AuthenticationError(VoxtralError):
    """VOXTRAL_API_KEY is set and the request carries no `Authorization: Bearer` key, or another one."""

    kind = ErrorKind.UNAUTHENTICATED
    code = "invalid_api_key"


class ForbiddenError(VoxtralError):
    """The request comes through a `Host` or from an `Origin` this server does not serve."""

    kind = ErrorKind.FORBIDDEN
    code = "forbidden"


class RequestTimeoutError(VoxtralError):
    """The client stopped sending its request part-way."""

    kind = ErrorKind.REQUEST_TIMEOUT
    code = "request_timeout"


class TooManyConnectionsError(VoxtralError):
    """More client connections are open than VOXTRAL_MAX_CONNECTIONS."""

    kind = ErrorKind.TOO_MANY_CONNECTIONS
    code = "too_many_connections"


class UpstreamUnavailableError(ModelUnavailableError):
    """No upstream model server that serves the model is up (all marked down, or none lists it)."""

    code = "upstream_unavailable"


class UpstreamError(VoxtralError):
    """The upstream model servers failed a request: refused the connection or answered with a server error,
    also on the retry."""

    kind = ErrorKind.UPSTREAM_FAILED
    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """An upstream stayed silent longer than VOXTRAL_VLLM_TIMEOUT_S, also on the retry."""

    kind = ErrorKind.UPSTREAM_TIMEOUT
    code = "upstream_timeout"
