"""Batched greedy/sampled generation: per-row caps, stop strings, cancellation, per-step token callbacks."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

FinishReason = Literal["stop", "length", "cancelled"]
StepCallback = Callable[[list[int]], None]


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen and when a row stops besides EOS and its cap."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0  # end-of-sequence is suppressed until then (benchmarks force equal work)


@dataclass(frozen=True)
class RowResult:
    """What one batch row generated (up to, not including, EOS or a stop string)."""

    token_ids: list[int]
    logprobs: list[float]
    no_speech_prob: float
    finish_reason: FinishReason
    stop_at: int | None = field(default=None)  # character offset of a stop string in the decoded text


class LogprobRecorder(LogitsProcessor):
    """Records the log-probability of each chosen token and P(EOS) at the first step.

    A logits processor sees the scores before a token is chosen; the choice shows up as the last id of
    the next call's `input_ids`, so each step's distribution is kept until then.
    """

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        self.steps: list[torch.Tensor] = []
        self.first_eos_prob: torch.Tensor | None = None
        self._previous: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        if self.first_eos_prob is None:
            self.first_eos_prob = logprobs[:, self.eos_token_id].exp()
        self._previous = logprobs
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs of all chosen tokens, shape (batch, steps)."""
        self._take(last_tokens)
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(last_tokens.shape[0], 0)

    def _take(self, chosen: torch.Tensor) -> None:
        if self._previous is not None:
            self.steps.append(self._previous.gather(1, chosen.view(-1, 1)).squeeze(1).cpu())
            self._previous = None


class ForcedPrefix(LogitsProcessor):
    """Makes row 0 choose given tokens at its first steps (tokens it already produced in a head start)."""

    def __init__(self, prompt_length: int, tokens: Sequence[int]) -> None:
        self.prompt_length = prompt_length
        self.tokens = list(tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if step < len(self.tokens):
            scores[0, :] = -math.inf
            scores[0, self.tokens[step]] = 0.0
        return scores


class RowTokenCap(StoppingCriteria):
    """Stops each row once it has generated its own cap of new tokens."""

    def __init__(self, prompt_length: int, caps: Sequence[int], device: torch.device) -> None:
        self.prompt_length = prompt_length
        self.caps = torch.tensor(list(caps), device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.caps  # type: ignore[return-value]


class StopStrings(StoppingCriteria):
    """Stops a row once its decoded text contains one of the stop strings."""

    def __init__(self, prompt_length: int, stop: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self.prompt_length = prompt_length
        self.stop = list(stop)
        self.decode = decode
        # A stop string of n characters spans at most ~4n byte-level tokens: only that tail is decoded.
        self.window = 4 * max(len(s) for s in self.stop) + 8

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        rows = input_ids[:, start:].tolist()
        hits = [any(s in self.decode(row) for s in self.stop) for row in rows]
        return torch.tensor(hits, device=input_ids.device)  # type: ignore[return-value]


class Cancellation(StoppingCriteria):
    """Stops every row at the next step once the event is set (the client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)  # type: ignore[return-value]


class StepStreamer(BaseStreamer):
    """Hands each step's new token of every row to a callback (the prompt, sent first, is skipped)."""

    def __init__(self, callback: StepCallback) -> None:
        self.callback = callback
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.callback(value.reshape(-1).tolist())

    def end(self) -> None:
        return None


def generate_rows(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    caps: Sequence[int],
    sampling: Sampling,
    eos_token_id: int,
    pad_token_id: int,
    decode: Callable[[list[int]], str],
    on_step: StepCallback | None = None,
    cancel: threading.Event | None = None,
    row0_prefix: Sequence[int] = (),
) -> list[RowResult]:
    """Run one `generate` over a batch; each row stops at EOS, a stop string, or its cap.

    `row0_prefix` forces row 0's first tokens (its log-probs for those steps are then meaningless).
    """
    prompt_length = int(inputs["input_ids"].shape[1])
    recorder = LogprobRecorder(eos_token_id)
    processors: list[LogitsProcessor] = [recorder]
    if row0_prefix:
        processors.insert(0, ForcedPrefix(prompt_length, row0_prefix))
    criteria: list[StoppingCriteria] = [RowTokenCap(prompt_length, caps, inputs["input_ids"].device)]
    if sampling.stop:
        criteria.append(StopStrings(prompt_length, sampling.stop, decode))
    if cancel is not None:
        criteria.append(Cancellation(cancel))
    options: dict[str, Any] = (
        {"do_sample": True, "temperature": sampling.temperature, "top_k": 0, "top_p": sampling.top_p}
        if sampling.temperature > 0
        else {"do_sample": False}
    )
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    output = model.generate(
        **inputs,
        max_new_tokens=max(caps),
        min_new_tokens=min(sampling.min_new_tokens, min(caps)),
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        logits_processor=LogitsProcessorList(processors),
        stopping_criteria=StoppingCriteriaList(criteria),
        streamer=StepStreamer(on_step) if on_step is not None else None,
        **options,
    )
    new_tokens = output[:, prompt_length:]
    logprobs = recorder.finish(new_tokens[:, -1]) if new_tokens.shape[1] else torch.zeros(len(caps), 0)
    first_eos = recorder.first_eos_prob.cpu() if recorder.first_eos_prob is not None else torch.zeros(len(caps))
    cancelled = cancel is not None and cancel.is_set()
    return [
        _row_result(new_tokens[i].tolist(), logprobs[i], float(first_eos[i]), cap, eos_token_id, sampling, decode)
        if not cancelled
        else RowResult([], [], 0.0, "cancelled")
        for i, cap in enumerate(caps)
    ]


def _row_result(
    ids: list[int],
    logprobs: torch.Tensor,
    no_speech_prob: float,
    cap: int,
    eos_token_id: int,
    sampling: Sampling,
    decode: Callable[[list[int]], str],
) -> RowResult:
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
        logprobs=logprobs[: end + counted].tolist(),
        no_speech_prob=no_speech_prob,
        finish_reason=finish,
        stop_at=stop_at,
    )


def _holds_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s in text for s in stop)
