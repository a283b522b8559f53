"""Batched greedy/sampled generation with per-row token caps and per-token log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList


@dataclass(frozen=True)
class RowResult:
    """What one batch row generated."""

    token_ids: list[int]
    logprobs: list[float]
    no_speech_prob: float
    hit_cap: bool


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


class RowTokenCap(StoppingCriteria):
    """Stops each row once it has generated its own cap of new tokens."""

    def __init__(self, prompt_length: int, caps: Sequence[int], device: torch.device) -> None:
        self.prompt_length = prompt_length
        self.caps = torch.tensor(list(caps), device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        return generated >= self.caps  # type: ignore[return-value]


def generate_rows(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    caps: Sequence[int],
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
) -> list[RowResult]:
    """Run one `generate` over a batch; each row stops at EOS or at its cap."""
    prompt_length = int(inputs["input_ids"].shape[1])
    recorder = LogprobRecorder(eos_token_id)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    output = model.generate(
        **inputs,
        max_new_tokens=max(caps),
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        logits_processor=LogitsProcessorList([recorder]),
        stopping_criteria=StoppingCriteriaList([RowTokenCap(prompt_length, caps, inputs["input_ids"].device)]),
        **sampling,
    )
    new_tokens = output[:, prompt_length:]
    logprobs = recorder.finish(new_tokens[:, -1]) if new_tokens.shape[1] else torch.zeros(len(caps), 0)
    first_eos = recorder.first_eos_prob.cpu() if recorder.first_eos_prob is not None else torch.zeros(len(caps))
    rows: list[RowResult] = []
    for i, cap in enumerate(caps):
        ids = new_tokens[i].tolist()
        if eos_token_id in ids:
            end, hit_cap = ids.index(eos_token_id), False
        else:
            end, hit_cap = min(cap, len(ids)), len(ids) >= cap
        rows.append(
            RowResult(
                token_ids=ids[:end],
                logprobs=logprobs[i, : end + (0 if hit_cap else 1)].tolist(),
                no_speech_prob=float(first_eos[i]),
                hit_cap=hit_cap,
            )
        )
    return rows
