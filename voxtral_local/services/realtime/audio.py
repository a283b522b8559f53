"""An `input_audio_buffer.append`'s audio: base64 PCM16 checked and turned into the session's 16 kHz float
samples."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from ...audio.resampling import StreamResampler
from ...errors import InvalidRequestError

WAV_MAGIC = (b"RIFF", b"RF64")


def decode_append(audio: str, resampler: StreamResampler) -> np.ndarray:
    """`audio` (base64 PCM16 mono little-endian at the session's rate) as float32 at 16 kHz, shape (n,),
    through the session's streaming `resampler` (so call it for one append at a time, in order). CPU-bound:
    run it on a worker thread. Raises InvalidRequestError: `invalid_base64`, `invalid_audio` (an odd number of
    bytes, or a WAV header: PCM is sent without one)."""
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError("`audio` is not valid base64.", param="audio", code="invalid_base64") from exc
    if data[:4] in WAV_MAGIC and data[8:12] == b"WAVE":
        raise InvalidRequestError(
            "`audio` starts with a WAV header: send raw PCM16 mono little-endian samples, without the header.",
            param="audio",
            code="invalid_audio",
        )
    if len(data) % 2:
        raise InvalidRequestError(
            f"`audio` holds {len(data)} bytes: PCM16 audio has an even number of bytes.",
            param="audio",
            code="invalid_audio",
        )
    return resampler(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)
