"""Model inputs, built with the processor's official formats.

Transcription: `VoxtralProcessor.apply_transcription_request` wraps mistral-common's `encode_transcription`:
`[BOS][INST][BEGIN_AUDIO]` + `[AUDIO]`×N + `[/INST]` (+ `lang:xx`) + `[TRANSCRIBE]`, with N = 375 audio
tokens per 30 s window (mel frames / 8). Chat: `apply_chat_template` with `{"type": "audio"}` parts.
Rows of different lengths are left-padded.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...audio.decode import SAMPLE_RATE
from ...audio.encode import wav_bytes
from ..base import Conversation


def transcription_inputs(processor: Any, chunks: Sequence[np.ndarray], *, language: str | None, model_id: str) -> Any:
    """A BatchFeature with `input_ids`, `attention_mask` and `input_features` for these chunks."""
    return processor.apply_transcription_request(
        audio=[np.asarray(chunk, dtype=np.float32) for chunk in chunks],
        model_id=model_id,
        language=language,
        sampling_rate=SAMPLE_RATE,
        format=["wav"] * len(chunks),
    )


def chat_inputs(processor: Any, conversations: Sequence[Conversation]) -> Any:
    """A BatchFeature for chat conversations (OpenAI-style roles, `audio`/`text` content parts; audio parts
    as `backends.base.audio_part` makes them)."""
    return processor.apply_chat_template([_with_wav(c) for c in conversations], tokenize=True, return_dict=True)


def _with_wav(conversation: Conversation) -> Conversation:
    """The conversation with each audio part's samples as the base64 WAV the processor takes."""
    return [
        {**m, "content": [wav_part(p["samples"]) if "samples" in p else p for p in m["content"]]}
        if isinstance(m.get("content"), list)
        else m
        for m in conversation
    ]


def wav_part(samples: np.ndarray) -> dict[str, str]:
    """A chat content part carrying 16 kHz mono samples as base64 WAV, as the processor expects."""
    return {"type": "audio", "base64": base64.b64encode(wav_bytes(samples)).decode("ascii")}
