"""What a row asks of generation (`Sampling`) and what it gave (`RowResult`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..base import Alternatives, FinishReason, Sampling


@dataclass(frozen=True)
class RowResult:
    """What one batch row generated (up to, not including, EOS or a stop string)."""

    token_ids: list[int]
    logprobs: list[float]
    no_speech_prob: float
    finish_reason: FinishReason
    stop_at: int | None = field(default=None)  # character offset of a stop string in the decoded text
    prompt_tokens: int = 0
    audio_tokens: int = 0
    top: list[Alternatives] = field(default_factory=list)  # per token as logprobs (empty unless `top_logprobs`)


def finish_row(
    ids: list[int],
    logprobs: Sequence[float],
    top: Sequence[Alternatives],
    no_speech_prob: float,
    cap: int,
    eos_token_id: int,
    sampling: Sampling,
    decode: Callable[[list[int]], str],
) -> RowResult:
    """A finished row: its tokens up to EOS, its cap or the first stop string, and why it ended."""
    finish: FinishReason
    if eos_token_id in ids:
        end, finish, counted = ids.index(eos_token_id), "stop", 1
    else:
        end, finish, counted = min(cap, len(ids)), "length" if len(ids) >= cap else "stop", 0
    stop_at = None
    if sampling.stop and _holds_stop(decode(ids[:end]), sampling.stop):
        lo, hi = 1, end  # binary search for the shortest prefix whose text holds a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _holds_stop(decode(ids[:mid]), sampling.stop) else (mid + 1, hi)
        text = decode(ids[:lo])
        end, finish, counted = lo, "stop", 0
        stop_at = min(text.find(s) for s in sampling.stop if s in text)
    return RowResult(
        token_ids=ids[:end],
        logprobs=list(logprobs[: end + counted]),
        no_speech_prob=no_speech_prob,
        top=list(top[: end + counted]),
        finish_reason=finish,
        stop_at=stop_at,
    )


def _holds_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s in text for s in stop)
