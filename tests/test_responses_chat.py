"""Chat completion bodies and stream chunks from `responses/chat.py`, checked against the OpenAI SDK's own
models (`openai.types.chat`); no model needed."""

from __future__ import annotations

from collections.abc import Sequence

import openai.types.chat as sdk
import pytest

from voxtral_local.backends.base import Alternatives
from voxtral_local.responses.chat import ChunkStream, chat_completion, chat_usage, logprob_content
from voxtral_local.services.chat import ChatResult
from voxtral_local.services.streaming import TextDelta

# Made-up token bytes: "Hel", "lo", " world", a special token (no bytes), and a split UTF-8 character.
PIECES = {10: b"Hel", 11: b"lo", 12: b" world", 2: b"", 13: b"\xc3", 14: b"\xa9", 20: b"Hi", 21: b"He"}
TOP: list[Alternatives] = [((10, -0.1), (20, -2.5)), ((11, -0.2), (21, -3.0)), ((12, -0.3),)]


def result(**fields: object) -> ChatResult:
    base: dict[str, object] = {
        "text": "Hello world",
        "finish_reason": "stop",
        "prompt_tokens": 400,
        "completion_tokens": 3,
        "token_ids": [10, 11, 12],
        "logprobs": [-0.1, -0.2, -0.3],
        "top": TOP,
        "pieces": PIECES,
    }
    base.update(fields)
    return ChatResult(**base)  # type: ignore[arg-type]


def token_bytes(ids: Sequence[int]) -> list[bytes]:
    return [PIECES[i] for i in ids]


def test_completion_parses_as_the_sdks_chat_completion() -> None:
    body = chat_completion(result(), completion_id="chatcmpl-1", created=1700000000, model="whisper-1", logprobs=False)
    completion = sdk.ChatCompletion.model_validate(body)
    assert completion.id == "chatcmpl-1" and completion.object == "chat.completion"
    assert completion.model == "whisper-1"  # the name the client sent, not the served id
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == "Hello world"
    assert choice.finish_reason == "stop" and choice.logprobs is None
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        400,
        3,
        403,
    )


def test_completion_logprobs_carry_each_tokens_text_bytes_and_alternatives() -> None:
    body = chat_completion(result(), completion_id="c", created=0, model="m", logprobs=True)
    choice = sdk.ChatCompletion.model_validate(body).choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert [t.token for t in content] == ["Hel", "lo", " world"]
    assert content[0].bytes == list(b"Hel") and content[0].logprob == -0.1
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [("Hel", -0.1), ("Hi", -2.5)]


def test_logprob_content_of_a_split_character_and_a_special_token() -> None:
    content = logprob_content([13, 14, 2], [-1.0, -0.5, -0.01], [(), (), ()], token_bytes)
    assert [t.token for t in content] == ["\ufffd", "\ufffd", ""]
    assert [t.bytes for t in content] == [[0xC3], [0xA9], []]
    assert all(t.top_logprobs == [] for t in content)


def test_usage_adds_prompt_and_completion() -> None:
    usage = chat_usage(result(prompt_tokens=7, completion_tokens=5))
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 5, 12)


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_parse_as_the_sdks_chunks(include_usage: bool) -> None:
    stream = ChunkStream("chatcmpl-2", 1700000000, "voxtral-mini", include_usage=include_usage)
    first = stream.role()
    middle, tokens = stream.text("Hello")
    last = stream.end(result(), streamed=0)
    chunks = [first, middle, *last]
    parsed = [sdk.ChatCompletionChunk.model_validate(c) for c in chunks]
    assert all(c.id == "chatcmpl-2" and c.model == "voxtral-mini" and c.created == 1700000000 for c in parsed)
    assert all(c.object == "chat.completion.chunk" for c in parsed)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert middle["choices"][0]["delta"] == {"content": "Hello"}  # no "role": null after the first chunk
    assert tokens == 0 and middle["choices"][0]["logprobs"] is None
    assert last[0]["choices"][0]["delta"] == {} and parsed[2].choices[0].finish_reason == "stop"
    if include_usage:
        assert all("usage" in c and c["usage"] is None for c in chunks[:3])  # null on all but the last
        assert len(last) == 2 and parsed[3].choices == []
        assert parsed[3].usage is not None and parsed[3].usage.total_tokens == 403
    else:
        assert len(last) == 1 and all(c.get("usage") is None for c in chunks)


def test_streamed_logprobs_go_with_the_delta_that_shows_them_and_the_rest_at_the_end() -> None:
    stream = ChunkStream("c", 0, "m", logprobs=True)
    delta = TextDelta("Hello", [10, 11], [-0.1, -0.2], TOP[:2], {i: PIECES[i] for i in (10, 11, 20, 21)})
    chunk, tokens = stream.text(delta)
    assert tokens == 2
    parsed = sdk.ChatCompletionChunk.model_validate(chunk).choices[0]
    assert parsed.logprobs is not None and parsed.logprobs.content is not None
    assert [t.token for t in parsed.logprobs.content] == ["Hel", "lo"]
    assert [t.token for t in parsed.logprobs.content[1].top_logprobs] == ["lo", "He"]
    (end,) = stream.end(result(finish_reason="length"), streamed=tokens)
    final = sdk.ChatCompletionChunk.model_validate(end).choices[0]
    assert final.finish_reason == "length"
    assert final.logprobs is not None and final.logprobs.content is not None
    assert [t.token for t in final.logprobs.content] == [" world"]  # the token no delta showed


def test_the_end_carries_no_logprobs_once_every_token_was_streamed() -> None:
    stream = ChunkStream("c", 0, "m", logprobs=True)
    (end,) = stream.end(result(), streamed=3)
    assert end["choices"][0]["logprobs"] is None
