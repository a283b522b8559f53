"""`VllmBackend`: a served model whose rows run on the upstream vLLM servers, one streamed request per row.

The rows of a job (the chunks of an upload, or chat conversations) are sent at once, each to the upstream with
the fewest requests in flight (`UpstreamPool.acquire`), and their tokens are told to the services as they stream
in, so that row 0 streams live exactly as with the transformers backend. A row whose upstream refuses, breaks
off or stays silent is retried once on another upstream (that one marked down); tokens of the failed attempt
that were already told are not told again, as long as the retry says the same. `cancel` cancels the rows'
requests, which closes their connections: vLLM then stops generating them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...audio.decode import SAMPLE_RATE
from ...config import Settings
from ...errors import (
    GenerationCancelledError,
    InvalidRequestError,
    UndecodableOutputError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from ..base import (
    AUDIO_TOKENS_PER_SECOND,
    Alternatives,
    BackendStatus,
    ChunkOutput,
    Conversation,
    FinishReason,
    RowsCallback,
    Sampling,
    TokenCallback,
    chunk_token_cap,
)
from .exchanges import Event, Finished, Token, UpstreamFault, UpstreamRejected, stream_chat, stream_transcription
from .pieces import PieceTable
from .upstreams import Upstream, UpstreamPool

WINDOW_SECONDS = 30.0  # Voxtral's audio windows: each takes AUDIO_TOKENS_PER_SECOND * 30 prompt tokens
TEXT_BYTES_PER_TOKEN = 4  # an estimate of a text part's tokens, for the context check (the upstream has the last word)
PIECES = PieceTable()  # shared by every model and request: pieces are the upstreams' tokens
WAIT_STEP_S = 0.05  # how often a waiting job looks at its `cancel`

Stream = Callable[[Upstream], AsyncGenerator[Event, None]]
Row = tuple[int, Callable[[], Coroutine[Any, Any, ChunkOutput]]]  # a row's token cap, and what starts it


@dataclass
class RowState:
    """What one row's current attempt has generated (pseudo-ids), and the tokens told to the services so far
    (by any attempt)."""

    index: int
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[Alternatives] = field(default_factory=list)
    told: bytes = b""  # the text's bytes told to the services (through `on_token`), by any attempt


class VllmBackend:
    """A served model on the upstreams (`pool`): `upstream_model` is the id they list it by."""

    def __init__(self, model_id: str, upstream_model: str, pool: UpstreamPool, settings: Settings) -> None:
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.pool = pool
        self.settings = settings
        self._loaded = False
        self._jobs = 0
        self._lock = threading.Lock()

    # ---- lifecycle and state ----------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def busy(self) -> bool:
        return self._jobs > 0

    def load(self) -> None:
        """Nothing to load here (the upstreams hold the weights); starts the pool if the app has not."""
        self.pool.start()
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    def close(self, timeout: float) -> bool:
        """The pool is the app's to close; nothing of this model's outlives its requests."""
        self._loaded = False
        return True

    def status(self) -> BackendStatus:
        return BackendStatus(
            loaded=self._loaded,
            device="vllm",
            dtype=None,
            memory_bytes=0,
            busy=self.busy,
            details={"upstreams": self.pool.serving(self.upstream_model)},
        )

    # ---- tokens -----------------------------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int:
        return -1  # never a piece's id: the end of a row is the end of its stream

    def decode(self, token_ids: list[int]) -> str:
        """The text of these pieces; UndecodableOutputError for an id no upstream piece has."""
        try:
            return PIECES.decode(token_ids)
        except KeyError as exc:
            raise UndecodableOutputError(len(PIECES)) from exc

    def token_bytes(self, token_ids: Sequence[int]) -> list[bytes]:
        """Each piece's bytes; UndecodableOutputError for an unknown id."""
        try:
            return PIECES.pieces(token_ids)
        except KeyError as exc:
            raise UndecodableOutputError(len(PIECES)) from exc

    def token_cap(self, duration_s: float, max_tokens: int | None = None) -> int:
        return chunk_token_cap(duration_s, self.settings.max_tokens_per_audio_second, max_tokens)

    def check_ready(self) -> None:
        """UpstreamUnavailableError (503) when no upstream that is up lists the model now."""
        problem = self.pool.problem(self.upstream_model)
        if problem is not None:
            raise UpstreamUnavailableError(problem)

    def check_transcription(self, sampling: Sampling) -> None:
        """InvalidRequestError for `include[]=logprobs` (`sampling.logprobs`) when every upstream serving the
        model is vLLM, whose transcriptions carry no logprobs."""
        if not sampling.logprobs:
            return
        if {u.flavor for u in self.pool.listing(self.upstream_model)} == {"vllm"}:
            raise _no_logprobs(self.model_id)

    def row_capacity(self) -> int | None:
        return None  # the upstreams batch as they see fit

    @property
    def context_tokens(self) -> int:
        """The context length the upstreams report for the model (vLLM's `max_model_len`), else
        VOXTRAL_MAX_CONTEXT_TOKENS."""
        return self.pool.context_tokens(self.upstream_model) or self.settings.max_context_tokens

    def prompt_tokens(self, conversation: Conversation) -> int:
        """An estimate of the prompt's tokens (375 per started 30 s of audio, one per 4 bytes of text): the
        upstream counts exactly, and refuses a prompt too long for it (a 400 passed on to the client)."""
        total = conversation_audio_tokens(conversation)
        for message in conversation:
            content = message.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
            for part in parts:
                if "samples" not in part:
                    total += math.ceil(len(str(part.get("text", "")).encode("utf-8")) / TEXT_BYTES_PER_TOKEN)
        return total

    # ---- work -------------------------------------------------------------------------------------------

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        *,
        language: str | None,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass: shared safely
        max_tokens: int | None = None,
        on_token: TokenCallback | None = None,
        on_rows: RowsCallback | None = None,
        cancel: threading.Event | None = None,
        more: Iterable[Sequence[np.ndarray]] | None = None,
    ) -> list[ChunkOutput]:
        """Each chunk as one streamed upstream transcription request, all at once; outputs in chunk order.
        `include[]=logprobs` (`sampling.logprobs`) needs upstreams that return them (this server's kind does,
        vLLM does not: InvalidRequestError)."""

        def row(index: int, samples: np.ndarray) -> Row:
            duration = len(samples) / SAMPLE_RATE
            cap = self.token_cap(duration, max_tokens)

            def stream(upstream: Upstream) -> AsyncGenerator[Event, None]:
                if sampling.logprobs and upstream.flavor == "vllm":
                    raise _no_logprobs(self.model_id)
                return stream_transcription(
                    self.pool.client,
                    upstream,
                    model=self.upstream_model,
                    samples=samples,
                    language=language,
                    sampling=sampling,
                    cap=cap,
                )

            return cap, lambda: self._row(index, stream, on_token, audio_tokens(duration), cap)

        return self._run([row(i, c) for i, c in enumerate(chunks)], on_rows, cancel, more, row)

    def chat(
        self,
        conversations: Sequence[Conversation],
        *,
        caps: Sequence[int],
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass: shared safely
        on_token: TokenCallback | None = None,
        on_rows: RowsCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ChunkOutput]:
        """Each conversation as one streamed upstream chat completion, all at once; outputs in order."""

        def row(index: int, conversation: Conversation, cap: int) -> Row:
            def stream(upstream: Upstream) -> AsyncGenerator[Event, None]:
                return stream_chat(
                    self.pool.client,
                    upstream,
                    model=self.upstream_model,
                    conversation=conversation,
                    sampling=sampling,
                    cap=cap,
                )

            audio = conversation_audio_tokens(conversation)
            return cap, lambda: self._row(index, stream, on_token, audio, cap)

        rows = [row(i, c, cap) for i, (c, cap) in enumerate(zip(conversations, caps, strict=True))]
        return self._run(rows, on_rows, cancel)

    def _run(
        self,
        rows: list[Row],
        on_rows: RowsCallback | None,
        cancel: threading.Event | None,
        more: Iterable[Sequence[np.ndarray]] | None = None,
        make_row: Callable[[int, np.ndarray], Row] | None = None,
    ) -> list[ChunkOutput]:
        """Send every row (and the rows `make_row` makes of the chunks `more` yields, as it yields them, numbered
        after those sent); wait for all, or for `cancel`."""
        with self._lock:
            self._jobs += 1
        futures: list[concurrent.futures.Future[ChunkOutput]] = []

        def send(part: list[Row]) -> None:
            if on_rows is not None and part:
                on_rows([cap for cap, _ in part])
            futures.extend(self.pool.submit(start()) for _, start in part)

        try:
            send(rows)
            for chunks in more or ():
                self._check(futures, cancel)
                assert make_row is not None
                send([make_row(len(futures) + i, chunk) for i, chunk in enumerate(chunks)])
            while not all(f.done() for f in futures):
                self._check(futures, cancel)
                concurrent.futures.wait(futures, timeout=WAIT_STEP_S, return_when=concurrent.futures.FIRST_EXCEPTION)
            self._check(futures, cancel)
            return [f.result() for f in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            with self._lock:
                self._jobs -= 1

    @staticmethod
    def _check(futures: list[concurrent.futures.Future[ChunkOutput]], cancel: threading.Event | None) -> None:
        """Raise the first row's failure, or GenerationCancelledError once `cancel` is set."""
        if cancel is not None and cancel.is_set():
            raise GenerationCancelledError("The request was cancelled; its upstream requests were cancelled too.")
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                future.result()

    async def _row(
        self, index: int, stream: Stream, on_token: TokenCallback | None, audio: int, cap: int
    ) -> ChunkOutput:
        """One row on the upstreams: the best upstream, then (after a fault) one other."""
        state = RowState(index)
        tried: list[Upstream] = []
        fault: UpstreamFault | None = None
        for _ in range(2):
            try:
                upstream = await self.pool.acquire(self.upstream_model, exclude=tried)
            except UpstreamUnavailableError:
                if fault is None:
                    raise
                break
            tried.append(upstream)
            try:
                async with contextlib.aclosing(stream(upstream)) as events:
                    return await self._attempt(state, events, on_token, audio, cap)
            except UpstreamFault as exc:
                fault = exc
                if exc.down:
                    await self.pool.mark_down(upstream, exc.message)
            except UpstreamRejected as exc:
                raise InvalidRequestError(
                    f"The upstream refused the request: {exc.message}", param=exc.param, code=exc.code
                ) from exc
            finally:
                await self.pool.release(upstream)
        assert fault is not None
        where = ", ".join(u.url for u in tried)
        message = f"The upstream model servers failed the request ({where}): {fault.message.rstrip('.')}."
        raise UpstreamTimeoutError(message) if fault.timeout else UpstreamError(message)

    async def _attempt(
        self, state: RowState, events: AsyncGenerator[Event, None], on_token: TokenCallback | None, audio: int, cap: int
    ) -> ChunkOutput:
        """Read one upstream answer into the row, at most `cap` pieces (an upstream that goes on past the cap is
        cut off there), waiting at most VOXTRAL_VLLM_TIMEOUT_S for each (comments do not count). Text a failed
        attempt told already is not told again; a retry that says otherwise fails the row (what the client has
        seen cannot be taken back). The end of the row is told as `eos_token_id`."""
        state.ids, state.logprobs, state.top = [], [], []
        text, seen = [], b""  # this attempt's text, and the bytes of its pieces
        final = Finished(None, None)
        patience = self.settings.vllm_timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(patience) as deadline:
                async for event in events:
                    if isinstance(event, Finished):
                        final = _merge(final, event)
                        continue
                    deadline.reschedule(loop.time() + patience)
                    text.append(event.text)
                    for token in event.tokens:
                        self._add(state, token)
                        before, seen = seen, seen + token.piece
                        if on_token is not None:
                            self._tell(state, on_token, before, seen)
                    if len(state.ids) > cap:
                        final = Finished(None, "length")
                        break
        except TimeoutError as exc:
            raise UpstreamFault(
                f"timeout: no token within VOXTRAL_VLLM_TIMEOUT_S={patience:g} s", timeout=True
            ) from exc
        if on_token is not None:
            on_token(state.index, self.eos_token_id, 0.0, ())
        answer = final.text if final.text is not None else "".join(text)
        logprobs = state.logprobs
        finish: FinishReason = "length" if final.finish_reason == "length" else "stop"
        return ChunkOutput(
            text=answer.strip(),
            token_ids=state.ids,
            logprobs=logprobs,
            top=state.top,
            avg_logprob=sum(logprobs) / len(logprobs) if logprobs else 0.0,
            no_speech_prob=0.0,
            finish_reason=finish,
            prompt_tokens=max(final.prompt_tokens or 0, audio),
            audio_tokens=final.audio_tokens if final.audio_tokens is not None else audio,
            completion_tokens=final.completion_tokens if final.completion_tokens is not None else len(state.ids),
        )

    @staticmethod
    def _tell(state: RowState, on_token: TokenCallback, before: bytes, seen: bytes) -> None:
        """Tell the services the newest piece, or the part of it past what an earlier attempt told."""
        told = state.told
        if len(seen) <= len(told):
            if not told.startswith(seen):
                raise UpstreamFault("the retry's answer differs from what was streamed already", down=False)
            return
        if len(before) < len(told):
            if not seen.startswith(told):
                raise UpstreamFault("the retry's answer differs from what was streamed already", down=False)
            rest = seen[len(told) :]  # the part of this piece the client has not seen
            on_token(state.index, PIECES.intern(rest), state.logprobs[-1], ())
        else:
            on_token(state.index, state.ids[-1], state.logprobs[-1], state.top[-1])
        state.told = seen

    def _add(self, state: RowState, token: Token) -> None:
        state.ids.append(PIECES.intern(token.piece))
        state.logprobs.append(token.logprob)
        state.top.append(tuple((PIECES.intern(piece), logprob) for piece, logprob in token.top))


def _no_logprobs(model_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The model '{model_id}' runs on vLLM, whose transcriptions carry no logprobs: leave out "
        "include[]=logprobs, or use the chat completions API with logprobs.",
        param="include",
    )


def conversation_audio_tokens(conversation: Conversation) -> int:
    """Voxtral's audio tokens for the audio parts (`base.audio_part`) of a conversation."""
    return sum(
        audio_tokens(len(part["samples"]) / SAMPLE_RATE)
        for message in conversation
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if "samples" in part
    )


def audio_tokens(seconds: float) -> int:
    """Voxtral's audio tokens for `seconds` of audio: 375 per started 30 s window."""
    windows = max(1, math.ceil(seconds / WINDOW_SECONDS))
    return int(windows * WINDOW_SECONDS * AUDIO_TOKENS_PER_SECOND)


def _merge(first: Finished, later: Finished) -> Finished:
    """Two end events of one answer (vLLM sends the finish reason, then the usage) as one."""
    return Finished(
        text=later.text if later.text is not None else first.text,
        finish_reason=later.finish_reason or first.finish_reason,
        prompt_tokens=later.prompt_tokens if later.prompt_tokens is not None else first.prompt_tokens,
        completion_tokens=later.completion_tokens if later.completion_tokens is not None else first.completion_tokens,
        audio_tokens=later.audio_tokens if later.audio_tokens is not None else first.audio_tokens,
    )
