"""Samples back to a file, for a model input that takes files: the processor's base64 WAV parts, and an
upstream's `file` upload or `input_audio` part."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from .decode import SAMPLE_RATE


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono float32 samples, shape (n,), as a 32-bit float WAV file: lossless, so whoever decodes it gets
    the very samples this server cut."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
