"""Render a `TranscriptionResult` as json, text, srt, vtt or verbose_json."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..languages import language_name
from ..protocol import (
    Logprob,
    ResponseFormat,
    Transcription,
    TranscriptionSegment,
    TranscriptionVerbose,
    UsageDuration,
    UsageInputTokenDetails,
    UsageTokens,
)
from ..services.streaming import TokenBytes
from ..services.transcription import Segment, TranscriptionResult

Task = Literal["transcribe", "translate"]

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def render(
    result: TranscriptionResult,
    response_format: ResponseFormat,
    task: Task = "transcribe",
    logprobs: list[Logprob] | None = None,
) -> tuple[str | dict[str, Any], str]:
    """The body (a dict for JSON formats, else text) and its media type; `logprobs` go into `json`."""
    media_type = MEDIA_TYPES[response_format]
    if response_format == "json":
        return _json(result, logprobs), media_type
    if response_format == "verbose_json":
        return _verbose_json(result, task), media_type
    if response_format == "srt":
        return to_srt(result.segments), media_type
    if response_format == "vtt":
        return to_vtt(result.segments), media_type
    return result.text + "\n", media_type


def usage(result: TranscriptionResult) -> UsageDuration:
    """Billing-style usage: audio seconds, rounded up."""
    return UsageDuration(seconds=math.ceil(result.duration))


def _json(result: TranscriptionResult, logprobs: list[Logprob] | None) -> dict[str, Any]:
    body = Transcription(
        text=result.text,
        logprobs=logprobs,
        usage=usage(result),
        truncated_segments=result.truncated_segments or None,
    )
    return body.model_dump(exclude_none=True)


def bytes_of(pieces: Mapping[int, bytes]) -> TokenBytes:
    """A `TokenBytes` reading token bytes from `pieces` (a result's or a delta's); KeyError for one not there."""

    def token_bytes(token_ids: Sequence[int]) -> list[bytes]:
        return [pieces[token] for token in token_ids]

    return token_bytes


def token_logprobs(token_ids: Sequence[int], logprobs: Sequence[float], token_bytes: TokenBytes) -> list[Logprob]:
    """OpenAI's logprob entries of these tokens: text (undecodable bytes as U+FFFD), bytes, logprob."""
    pieces = token_bytes(token_ids)
    return [
        Logprob(token=piece.decode("utf-8", errors="replace"), bytes=list(piece), logprob=logprob)
        for piece, logprob in zip(pieces, logprobs, strict=True)
    ]


def transcript_logprobs(result: TranscriptionResult, token_bytes: TokenBytes) -> list[Logprob]:
    """Every generated token of the transcript, segment after segment."""
    ids = [token for segment in result.segments for token in segment.tokens]
    return token_logprobs(ids, [lp for segment in result.segments for lp in segment.logprobs], token_bytes)


def token_usage(result: TranscriptionResult) -> UsageTokens:
    """Token usage, as streamed transcriptions report it."""
    return UsageTokens(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
        input_token_details=UsageInputTokenDetails(
            audio_tokens=result.audio_tokens, text_tokens=result.prompt_tokens - result.audio_tokens
        ),
    )


def _verbose_json(result: TranscriptionResult, task: Task) -> dict[str, Any]:
    body = TranscriptionVerbose(
        task=task,
        language="english" if task == "translate" else language_name(result.language),
        duration=result.duration,
        text=result.text,
        segments=[
            TranscriptionSegment(
                id=s.id,
                seek=round(s.start * 100),  # Whisper's seek: offset in 10 ms mel frames
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=s.tokens if s.vocabulary_tokens else [],
                temperature=result.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
            )
            for s in result.segments
        ],
        usage=usage(result),
        truncated_segments=result.truncated_segments or None,
    )
    return body.model_dump(exclude_none=True)


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


# A run of two or more hyphens before ">": "-->" separates a cue's timings, and WebVTT forbids it in cue text.
_ARROW = re.compile(r"-{2,}>")


def cue_lines(text: str) -> list[str]:
    """A segment's text as the lines of one cue: each line stripped, blank lines dropped (a blank line ends a
    cue in SRT and WebVTT), every line break Python knows (`str.splitlines`: LF, CR, CRLF, VT, FF, U+0085,
    U+2028, ...) taken as one, NUL as U+FFFD (as WebVTT's parser reads it), and "-->" written "->". Empty
    when the text has no visible characters."""
    lines = (line.replace("\0", "\ufffd").strip() for line in text.splitlines())
    return [_ARROW.sub("->", line) for line in lines if line]


def _vtt_escape(line: str) -> str:
    """WebVTT cue text: "&", "<" and ">" as character references (W3C WebVTT, "cue text" and its escapes)."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_srt(segments: list[Segment]) -> str:
    """SubRip cues, numbered from 1; chunks with no speech are left out. Each cue's text is `cue_lines`."""
    cues = [(s, lines) for s in segments if (lines := cue_lines(s.text))]
    return "".join(
        f"{n}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n" + "\n".join(lines) + "\n\n"
        for n, (s, lines) in enumerate(cues, 1)
    )


def to_vtt(segments: list[Segment]) -> str:
    """WebVTT cues; chunks with no speech are left out. Each cue's text is `cue_lines`, with "&", "<" and ">"
    escaped (text is not markup)."""
    cues = "".join(
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n" + "\n".join(map(_vtt_escape, lines)) + "\n\n"
        for s in segments
        if (lines := cue_lines(s.text))
    )
    return "WEBVTT\n\n" + cues
