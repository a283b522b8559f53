"""Settings, read from `VOXTRAL_*` environment variables and from `.env`."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "mistralai/Voxtral-Mini-3B-2507"


class Settings(BaseSettings):
    """Server configuration. Every field maps to `VOXTRAL_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="VOXTRAL_", env_file=".env", extra="ignore")

    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id of a Voxtral checkpoint, or a local directory saved with save_pretrained.",
    )
    served_model_name: str | None = Field(
        None,
        description="Id clients send as `model` for VOXTRAL_MODEL and that /v1/models lists. Default: the hub id, "
        "or the directory name for a local checkpoint.",
    )
    models: str = Field(
        "",
        description="Comma-separated further models to serve (hub ids or local directories), each addressed by its "
        "hub id or directory name; VOXTRAL_MODEL stays the default.",
    )
    model_aliases: str = Field(
        "",
        description="Comma-separated `alias=model` pairs adding names (or overriding the built-in ones: whisper-1, "
        "gpt-4o-transcribe, gpt-4o-mini-transcribe mean the default model; voxtral-mini, voxtral-small the hub "
        "ids); a bare name is an alias of the default model.",
    )
    auto_download: bool = Field(
        False,
        description="Download a served hub model that is not in the cache when a request needs it (the request "
        "waits for the download). Off: such a request gets a 404 `model_not_downloaded` at once, and only "
        "`POST /v1/models/pull` downloads.",
    )
    model_ttl: float = Field(
        300.0,
        ge=-1,
        description="Seconds a loaded model may stay idle (no request using it) before it is unloaded; -1: never, "
        "0: right after each request.",
    )
    models_memory_gb: float = Field(
        0.0,
        ge=0,
        description="GiB that the weights of all loaded models may take together (estimated from the safetensors "
        "headers and the dtype); idle models are unloaded, least recently used first, to make room for another, "
        "else loading it is a 503. 0: auto, the memory free on the device.",
    )
    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Where the served models run: `transformers` in this process; `vllm` on the OpenAI-compatible "
        "servers VOXTRAL_VLLM_URLS names (VOXTRAL_MODEL and VOXTRAL_MODELS then name their model ids, and every "
        "model they list is served too). With `transformers` and VOXTRAL_VLLM_URLS set, the models the upstreams "
        "list that are not served here go to them.",
    )
    vllm_urls: str = Field(
        "",
        description="Comma-separated base URLs of vLLM (or other OpenAI-compatible) servers, e.g. "
        "`http://gpu1:8000,http://gpu2:8000` (a trailing `/v1` is accepted).",
    )
    vllm_api_key: SecretStr | None = Field(None, description="Bearer token sent to every upstream; unset: none.")
    vllm_max_in_flight: int = Field(
        32, ge=1, description="Most requests in flight to one upstream; further chunks wait for a free place."
    )
    vllm_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds an upstream may stay silent while answering a chunk (before its first token, or "
        "between two) before it is marked down and the chunk is retried on another upstream.",
    )
    vllm_connect_timeout_s: float = Field(
        3.0, gt=0, description="Seconds to open a connection to an upstream before it counts as down."
    )
    vllm_health_interval_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between polls of each upstream's `GET /v1/models`: a down upstream is skipped until a "
        "poll sees it again, and models an upstream starts serving are added.",
    )
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(11344, ge=1, le=65535, description="TCP port to listen on.")
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="Where the model runs. auto picks CUDA, then MPS, then CPU."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight dtype. auto: bfloat16 on CUDA, bfloat16 or float16 on MPS, float32 on CPU."
    )
    max_upload_mb: float = Field(
        100.0, gt=0, description="Largest request body in MiB; enforced while the body streams in."
    )
    max_audio_minutes: float = Field(
        180.0, gt=0, description="Longest decoded audio in minutes; enforced while decoding."
    )
    chunk_seconds: float = Field(
        30.0,
        ge=1.0,
        le=1800.0,
        description="Longest chunk of audio per prompt; 30 s is one Voxtral encoder window.",
    )
    batch_size: int = Field(
        0,
        ge=0,
        description="Most rows (chunks or chats, from all requests) decoded together; 0: as many as the memory "
        "budget allows.",
    )
    memory_budget_gb: float = Field(
        0.0,
        ge=0,
        description="Memory in GiB for the KV cache and activations, beyond the weights; 0: auto, the smaller of "
        "16 GiB and 85% of the free memory after loading.",
    )
    max_tokens_per_audio_second: float = Field(
        10.0,
        gt=0,
        description="New-token cap per chunk, per second of its audio (plus 32). 10/s is ~450 words a minute.",
    )
    max_context_tokens: int = Field(
        32768,
        ge=512,
        description="Context window for chat prompts plus replies (375 tokens per 30 s of audio); 32768 for Voxtral.",
    )
    preload: bool = Field(False, description="Load the model at startup instead of at the first request.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Server log level.")
    # Overload and shutdown (admission, graceful stop)
    max_queue: int = Field(
        0,
        ge=0,
        description="Most model requests (transcriptions, translations, chat; streamed or not) held at once, "
        "decoding or waiting; more get 429 with Retry-After. 0: auto, twice the batch capacity (VOXTRAL_BATCH_SIZE, "
        "else the rows of full chunks the memory budget holds, at most 64).",
    )
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds that requests in flight get to finish after SIGTERM/SIGINT; then they are stopped "
        "(a stream ends with an error event, other requests get 503).",
    )
    # Access control and slow clients (api/access.py, api/timeouts.py, api/connections.py).
    api_key: SecretStr | None = Field(
        None,
        description="When set, every route but /health needs `Authorization: Bearer <key>` (401 otherwise).",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated extra `Host` names served besides loopback names and VOXTRAL_HOST "
        "(`*.example.com` matches subdomains, `*` any host); any other Host is a 403 (DNS rebinding).",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins (`https://app.example`, `null`, `*`) whose browser pages may call "
        "the server; a request from any other Origin is a 403.",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="Comma-separated proxy addresses trusted to set X-Forwarded-For/-Proto; unset: the headers "
        "are ignored.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a connection may take to send a request's headers before it is closed."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Seconds the server waits for the next piece of a request body before a 408."
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="Most open client connections; requests on connections beyond it get a 503. Keep it above "
        "the request queue, so that excess requests get its 429, and within the process's file limit (ulimit -n).",
    )

    realtime_model: str | None = Field(
        None,
        description="Model a `/v1/realtime` session uses when its `input_audio_transcription.model` names none. "
        "Default: the first served realtime model (Voxtral-Mini-4B-Realtime-2602), else VOXTRAL_MODEL.",
    )
    realtime_max_sessions: int = Field(
        8,
        ge=1,
        description="Most `/v1/realtime` sessions open at once; a further one is refused with an `error` event "
        "(code `too_many_sessions`) and closed.",
    )
    realtime_idle_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Seconds a `/v1/realtime` session may go without a message from its client before it is closed.",
    )
    realtime_max_ahead_s: float = Field(
        10.0,
        gt=0,
        description="Seconds of audio a `/v1/realtime` session may have received but not yet transcribed; beyond "
        "it the server stops reading that socket until the model catches up (a client sending faster than real "
        "time is throttled, not buffered without bound).",
    )
    realtime_max_utterance_s: float = Field(
        300.0,
        gt=0,
        description="Seconds of audio one `/v1/realtime` utterance may hold in memory before it is transcribed (a "
        "standard model transcribes an utterance when it ends): at the limit it is committed, with an "
        "`audio_too_long` error event, and the audio after it goes on in a new item. Realtime models stream and "
        "are bounded by VOXTRAL_MAX_AUDIO_MINUTES only.",
    )
    realtime_lag_s: float = Field(
        2.0,
        gt=0,
        description="Seconds of audio a live session may fall behind real time before it is told so (an `error` "
        "event with code `behind_real_time`; nothing is dropped).",
    )

    @field_validator("model")
    @classmethod
    def _strip_model(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("VOXTRAL_MODEL must not be empty")
        return value

    @field_validator("api_key", "vllm_api_key", "forwarded_allow_ips", "realtime_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vllm_urls")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        for url in _split(value, lower=False):
            parts = urlsplit(url)
            try:
                port = parts.port  # ValueError for a port that is not a number in 0-65535
            except ValueError:
                port = 0
            host = parts.hostname or ""
            if (
                parts.scheme not in ("http", "https")
                or not host
                or any(c.isspace() for c in url)
                or parts.query
                or parts.fragment
                or port == 0
            ):
                raise ValueError(f"VOXTRAL_VLLM_URLS: '{url}' is not an http(s) base URL such as http://gpu1:8000")
        return value

    @model_validator(mode="after")
    def _vllm_needs_urls(self) -> Settings:
        if self.backend == "vllm" and not self.vllm_url_list:
            raise ValueError("VOXTRAL_BACKEND=vllm needs VOXTRAL_VLLM_URLS (the base URLs of the vLLM servers)")
        return self

    @property
    def vllm_url_list(self) -> list[str]:
        """VOXTRAL_VLLM_URLS as API roots ending in `/v1`, each once, in the order given."""
        roots = []
        for url in _split(self.vllm_urls, lower=False):
            root = url.rstrip("/")
            roots.append(root if root.endswith("/v1") else root + "/v1")
        return list(dict.fromkeys(roots))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_audio_seconds(self) -> float:
        return self.max_audio_minutes * 60.0

    @property
    def allowed_host_names(self) -> list[str]:
        """VOXTRAL_ALLOWED_HOSTS as a list of lower-case names."""
        return _split(self.allowed_hosts, lower=True)

    @property
    def cors_origin_list(self) -> list[str]:
        """VOXTRAL_CORS_ORIGINS as a list, trailing slashes removed (browsers send none)."""
        return [origin.rstrip("/") for origin in _split(self.cors_origins, lower=True)]


def _split(value: str, *, lower: bool) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    return [item.lower() for item in items] if lower else items
