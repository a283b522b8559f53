"""Model inputs for transcription, built with the official request format.

`VoxtralProcessor.apply_transcription_request` wraps mistral-common's `encode_transcription`:
`[BOS][INST][BEGIN_AUDIO]` + `[AUDIO]`×N + `[/INST]` (+ `lang:xx`) + `[TRANSCRIBE]`, with N = 375 audio
tokens per 30 s window (mel frames / 8). Chunks of different lengths are left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE


def transcription_inputs(processor: Any, chunks: Sequence[np.ndarray], *, language: str | None, model_id: str) -> Any:
    """A BatchFeature with `input_ids`, `attention_mask` and `input_features` for these chunks."""
    return processor.apply_transcription_request(
        audio=[np.asarray(chunk, dtype=np.float32) for chunk in chunks],
        model_id=model_id,
        language=language,
        sampling_rate=SAMPLE_RATE,
        format=["wav"] * len(chunks),
    )
