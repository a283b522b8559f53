"""Chat completion bodies: the `chat.completion` answer and the `chat.completion.chunk` events of a stream, built
from a `ChatResult` and the streamed `TextDelta`s; pure functions (no model, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.base import Alternatives, FinishReason
from ..protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
    TopLogprob,
)
from ..services.chat import ChatResult
from ..services.streaming import TextDelta, TokenBytes
from .transcription import bytes_of


def logprob_content(
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    top: Sequence[Alternatives],
    token_bytes: TokenBytes,
) -> list[ChatCompletionTokenLogprob]:
    """OpenAI's `logprobs.content` for these tokens: each one's text, bytes and logprob, and the step's most
    likely tokens (none where `top_logprobs` was not asked for). `top` has one entry per token."""
    everything = [*token_ids, *(alt for step in top for alt, _ in step)]
    pieces = dict(zip(everything, token_bytes(everything), strict=True))

    def text(token: int) -> str:
        return pieces[token].decode("utf-8", errors="replace")

    return [
        ChatCompletionTokenLogprob(
            token=text(token),
            bytes=list(pieces[token]),
            logprob=logprob,
            top_logprobs=[TopLogprob(token=text(alt), bytes=list(pieces[alt]), logprob=value) for alt, value in step],
        )
        for token, logprob, step in zip(token_ids, logprobs, top, strict=True)
    ]


def chat_usage(result: ChatResult) -> CompletionUsage:
    """The reply's token usage."""
    return CompletionUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )


def chat_completion(
    result: ChatResult, *, completion_id: str, created: int, model: str, logprobs: bool
) -> dict[str, Any]:
    """The `chat.completion` body; with `logprobs`, each token's (from `result.pieces`). `model` is the name
    the client sent."""
    content = None
    if logprobs:
        content = ChoiceLogprobs(
            content=logprob_content(result.token_ids, result.logprobs, result.top, bytes_of(result.pieces))
        )
    choice = Choice(
        message=ChatCompletionMessage(content=result.text), finish_reason=result.finish_reason, logprobs=content
    )
    body = ChatCompletion(id=completion_id, created=created, model=model, choices=[choice], usage=chat_usage(result))
    return body.model_dump()


@dataclass(frozen=True)
class ChunkStream:
    """What every chunk of one streamed completion shares: its id, creation time (Unix seconds), the model
    name the client sent, whether usage comes at the end (`stream_options.include_usage`), and whether
    logprobs were asked for."""

    completion_id: str
    created: int
    model: str
    include_usage: bool = False
    logprobs: bool = False

    def chunk(
        self, delta: ChoiceDelta, finish_reason: FinishReason | None = None, logprobs: ChoiceLogprobs | None = None
    ) -> dict[str, Any]:
        """One `chat.completion.chunk`: the delta without its unset fields (no `"role": null` after the
        first), and `"usage": null` on every chunk but the last when usage was asked for (as OpenAI)."""
        body = ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish_reason, logprobs=logprobs)],
        ).model_dump(mode="json")
        body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        if self.include_usage:
            body["usage"] = None
        return body

    def role(self) -> dict[str, Any]:
        """The first chunk: the assistant's role and empty content."""
        return self.chunk(ChoiceDelta(role="assistant", content=""))

    def text(self, delta: str) -> tuple[dict[str, Any], int]:
        """The chunk of a text delta, and how many tokens' logprobs it carries: with logprobs, those of the
        tokens a `TextDelta` is the first to show (bytes from its `pieces`)."""
        if not self.logprobs or not isinstance(delta, TextDelta):
            return self.chunk(ChoiceDelta(content=str(delta))), 0
        content = logprob_content(delta.token_ids, delta.logprobs, delta.top, bytes_of(delta.pieces))
        chunk = self.chunk(ChoiceDelta(content=str(delta)), logprobs=ChoiceLogprobs(content=content))
        return chunk, len(delta.token_ids)

    def end(self, result: ChatResult, streamed: int) -> list[dict[str, Any]]:
        """The last chunks: the finish reason (with the logprobs of the tokens after the first `streamed`:
        those that showed no text, a trailing space or a special token), then the usage chunk when asked
        for."""
        rest = None
        if self.logprobs and len(result.token_ids) > streamed:
            content = logprob_content(
                result.token_ids[streamed:],
                result.logprobs[streamed:],
                result.top[streamed:],
                bytes_of(result.pieces),
            )
            rest = ChoiceLogprobs(content=content)
        chunks = [self.chunk(ChoiceDelta(), result.finish_reason, rest)]
        if self.include_usage:
            usage = ChatCompletionChunk(
                id=self.completion_id, created=self.created, model=self.model, choices=[], usage=chat_usage(result)
            )
            chunks.append(usage.model_dump(mode="json"))
        return chunks
