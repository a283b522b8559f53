"""What any model server must do for the services: the `ModelBackend` interface.

Two implementations: `backends.transformers.TransformersBackend` (Voxtral in this process, with its own batched
decode loop) and `backends.vllm.VllmBackend` (a client of upstream vLLM servers, one request per row). So the
interface speaks of rows (one prompt each: a chunk of audio, or a chat conversation) and of what each row
generated, not of KV caches or schedulers. A backend that gives text rather than token ids (vLLM streams text)
reports pseudo-ids of its own, one per piece of text, that its `decode` and `token_bytes` understand, and sets
`ChunkOutput.completion_tokens` to the model's own count (the pseudo-ids are then never shown to clients).

Nothing here imports FastAPI, the services or the model store: a backend is handed a checkpoint directory
(`models.store` resolves hub ids to one) and gives tokens; the services own text.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

FinishReason = Literal["stop", "length"]
# One step's most likely tokens with their logprobs (empty unless the sampling asked for them).
Alternatives = tuple[tuple[int, float], ...]
# Told (row index, token id, its logprob, the step's alternatives) as each row chooses a token.
TokenCallback = Callable[[int, int, float, Alternatives], None]
# Told the token caps of a job's rows before they decode (the first ones, then each part added).
RowsCallback = Callable[[Sequence[int]], None]
# A chat conversation in transformers' `apply_chat_template` shape; audio parts are `audio_part(samples)`.
Conversation = list[dict[str, Any]]

AUDIO_TOKENS_PER_SECOND = 12.5  # Voxtral's audio encoder: 375 tokens per 30 s window
CAP_MARGIN_TOKENS = 32  # added to every chunk's token cap (a short chunk may still say a few words)


def chunk_token_cap(duration_s: float, tokens_per_second: float, max_tokens: int | None = None) -> int:
    """New-token cap for a chunk of `duration_s` seconds of audio: `tokens_per_second` of it (generous enough
    for very fast speech; VOXTRAL_MAX_TOKENS_PER_AUDIO_SECOND) plus a margin, at most `max_tokens`."""
    cap = math.ceil(duration_s * tokens_per_second) + CAP_MARGIN_TOKENS
    return cap if max_tokens is None else min(cap, max_tokens)


def audio_part(samples: np.ndarray) -> dict[str, Any]:
    """A conversation's content part holding audio: float32 mono 16 kHz samples, shape (n,). Each backend
    turns it into what its model takes (the transformers backend: a base64 WAV part)."""
    return {"type": "audio", "samples": np.asarray(samples, dtype=np.float32)}


@dataclass(frozen=True)
class Sampling:
    """How a row chooses its tokens: greedy at temperature 0, else seeded or unseeded sampling; `stop`
    strings end it; `top_logprobs` alternatives are reported per step when > 0."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0  # end-of-sequence is suppressed until then (benchmarks force equal work)
    top_logprobs: int = 0  # alternatives recorded at each step (chat's `top_logprobs`)
    logprobs: bool = False  # the caller reports each token's logprob (a backend that must ask for them does)


@dataclass(frozen=True)
class ChunkOutput:
    """What one row (a chunk of audio, or a chat conversation) generated."""

    text: str
    token_ids: list[int]
    logprobs: list[float]  # of each of `token_ids`
    top: list[Alternatives]  # for each of `token_ids` (empty unless the sampling asked for them)
    avg_logprob: float
    no_speech_prob: float
    finish_reason: FinishReason
    prompt_tokens: int
    audio_tokens: int
    completion_tokens: int | None = None  # the model's count when `token_ids` are a text backend's pseudo-ids

    @property
    def hit_cap(self) -> bool:
        return self.finish_reason == "length"

    @property
    def generated_tokens(self) -> int:
        """Tokens the model generated for this row."""
        return len(self.token_ids) if self.completion_tokens is None else self.completion_tokens


@dataclass(frozen=True)
class BackendStatus:
    """What a backend reports about itself: where it runs and the memory it holds (bytes; 0 when unloaded)."""

    loaded: bool
    device: str
    dtype: str | None
    memory_bytes: int
    busy: bool
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ModelBackend(Protocol):
    """One served model, loaded on demand. Thread-safe: many request threads call it at once.

    Errors: `ModelUnavailableError` when the model cannot be loaded; `InvalidRequestError` for inputs the
    model refuses (a chat the template rejects); `GenerationCancelledError` when `cancel` is set;
    `UndecodableOutputError` when its output cannot be turned into text.
    """

    model_id: str

    @property
    def loaded(self) -> bool: ...

    @property
    def busy(self) -> bool:
        """True while any request's rows wait or decode."""
        ...

    def load(self) -> None:
        """Load if not loaded (once, also when many threads ask at once)."""
        ...

    def unload(self) -> None:
        """Free the model's memory; the next request loads it again. The caller makes sure no work runs."""
        ...

    def close(self, timeout: float) -> bool:
        """Stop for good (at process exit): work still queued is abandoned. Whether it stopped within
        `timeout` seconds."""
        ...

    def status(self) -> BackendStatus: ...

    @property
    def eos_token_id(self) -> int: ...

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated token ids, special tokens left out."""
        ...

    def token_bytes(self, token_ids: Sequence[int]) -> list[bytes]:
        """Each token's own bytes (empty for a special token)."""
        ...

    def token_cap(self, duration_s: float, max_tokens: int | None = None) -> int:
        """New-token cap for a chunk of `duration_s` seconds of audio, at most `max_tokens`."""
        ...

    def check_ready(self) -> None:
        """Raise ModelUnavailableError (503) when the model cannot take a request now (no upstream serves it),
        so that a streamed request fails with a status before its stream starts."""
        ...

    def check_transcription(self, sampling: Sampling) -> None:
        """Raise InvalidRequestError when a transcription with this sampling cannot be served (a vLLM upstream
        gives no logprobs for transcriptions), before any work starts."""
        ...

    def row_capacity(self) -> int | None:
        """Rows of full-length chunks it decodes at once (None until loaded, or unknown)."""
        ...

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        *,
        language: str | None,
        sampling: Sampling = ...,
        max_tokens: int | None = None,
        on_token: TokenCallback | None = None,
        on_rows: RowsCallback | None = None,
        cancel: threading.Event | None = None,
        more: Iterable[Sequence[np.ndarray]] | None = None,
    ) -> list[ChunkOutput]:
        """Transcribe chunks (float32 mono 16 kHz samples, shape (n,)) with the official transcription
        prompt; outputs in chunk order. `more` yields further chunks (produced on the calling thread while the
        first ones decode); an error it raises ends the request with that error."""
        ...

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        caps: Sequence[int],
        sampling: Sampling = ...,
        on_token: TokenCallback | None = None,
        on_rows: RowsCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ChunkOutput]:
        """A reply to each conversation, at most `caps[i]` new tokens each; outputs in conversation order."""
        ...

    def prompt_tokens(self, conversation: Conversation) -> int:
        """Tokens the conversation's prompt takes (for the context-window check); InvalidRequestError for a
        conversation the model refuses."""
        ...

    @property
    def context_tokens(self) -> int:
        """The context window: prompt plus reply tokens of one row."""
        ...
