"""Streaming: the first chunk's words do not wait for the whole batch's encoder pass and prefill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxtral_local.api.app import model_registry
from voxtral_local.backends.transformers.scheduler import MAX_PREFILL_WINDOWS
from voxtral_local.config import Settings
from voxtral_local.services.transcription import TranscriptionService

from .conftest import loaded_backend, request_for
from .spies import spy_forward
from .test_chunking import speech_with_gaps


@pytest.mark.parametrize("minutes", [1, 6])
def test_first_delta_needs_one_encoder_window_whatever_the_length(
    service: TranscriptionService, speech: np.ndarray, minutes: int
) -> None:
    audio, _ = speech_with_gaps(speech, minutes=minutes)
    calls: list[int] = []  # 30 s windows in each pass of the real audio encoder
    seen_at_first_delta: list[list[int]] = []

    def on_delta(delta: str) -> None:
        if not seen_at_first_delta:
            seen_at_first_delta.append(list(calls))

    tower = loaded_backend(service.models).model.model.audio_tower
    with spy_forward(tower, lambda args, kwargs: calls.append(int(args[0].shape[0]))):
        result = service.transcribe(request_for(service, audio, language=None, on_delta=on_delta))
    assert seen_at_first_delta == [[1]]  # only the first chunk had been through the encoder
    assert sum(calls) == len(result.segments)  # every window through the encoder once, none twice
    assert calls[0] == 1 and max(calls) <= MAX_PREFILL_WINDOWS  # the others joined in groups


def test_streamed_and_plain_decoding_give_the_same_segments(service: TranscriptionService, speech: np.ndarray) -> None:
    audio, _ = speech_with_gaps(speech, minutes=2)
    plain = service.transcribe(request_for(service, audio, language="en"))
    deltas: list[str] = []
    streamed = service.transcribe(request_for(service, audio, language="en", on_delta=deltas.append))
    assert "".join(deltas) == streamed.text == plain.text
    for a, b in zip(plain.segments, streamed.segments, strict=True):
        assert a.tokens == b.tokens
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-3)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-3)
    assert streamed.completion_tokens == plain.completion_tokens
    assert streamed.prompt_tokens == plain.prompt_tokens


def test_a_first_chunk_that_ends_during_its_head_start(silent_model_dir: Path, speech: np.ndarray) -> None:
    settings = Settings(_env_file=None, model=str(silent_model_dir))
    service = TranscriptionService(settings, model_registry(settings))
    audio, _ = speech_with_gaps(speech, minutes=2)
    deltas: list[str] = []
    result = service.transcribe(request_for(service, audio, language=None, on_delta=deltas.append))
    assert deltas == [] and result.text == ""
    assert len(result.segments) >= 4
    assert all(s.tokens == [] and not s.truncated and s.no_speech_prob == pytest.approx(1.0) for s in result.segments)
