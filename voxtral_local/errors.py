"""Domain exceptions. The HTTP layer maps each `kind` to a status code in one place."""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    """What went wrong, independent of transport."""

    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_UNAVAILABLE = "model_unavailable"
    DOWNLOAD_FAILED = "download_failed"
    STORAGE_FULL = "storage_full"
    CLIENT_GONE = "client_gone"
    INTERNAL = "internal"
    # Access control and slow clients
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"


class VoxtralError(Exception):
    """Base error with an OpenAI-style `code` and the offending `param`."""

    kind = ErrorKind.INTERNAL
    code = "internal_error"

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

    def __init__(self, model: str, served: str) -> None:
        super().__init__(f"The model '{model}' does not exist on this server; it serves '{served}'.", param="model")


class ModelUnavailableError(VoxtralError):
    """The model cannot be loaded right now (missing files, no network, out of memory)."""

    kind = ErrorKind.MODEL_UNAVAILABLE
    code = "model_unavailable"


class ModelDownloadError(VoxtralError):
    """Pulling the model from the hub failed (no such repository, no network, a dropped connection)."""

    kind = ErrorKind.DOWNLOAD_FAILED
    code = "model_download_failed"


class StorageFullError(ModelDownloadError):
    """Pulling the model failed for want of disk space."""

    kind = ErrorKind.STORAGE_FULL
    code = "insufficient_storage"


class GenerationCancelledError(VoxtralError):
    """The client disconnected, so generation for it was stopped."""

    kind = ErrorKind.CLIENT_GONE
    code = "client_disconnected"


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
