"""One INFO line per model request: what it asked of the model and how fast it went."""

from __future__ import annotations

import logging

from ..errors import VoxtralError

logger = logging.getLogger("voxtral_local.requests")


def log_request(
    kind: str,
    model_id: str,
    *,
    audio_seconds: float,
    chunks: int,
    prompt_tokens: int,
    completion_tokens: int,
    wall_seconds: float,
) -> None:
    """Log `kind` (transcription, translation, chat) on `model_id`: seconds of audio (0: none), chunks (rows),
    prompt and completion tokens, wall seconds and RTFx (audio seconds per wall second; `-` without audio)."""
    audio = f"{audio_seconds:.1f}s" if audio_seconds else "-"
    rtfx = f"{audio_seconds / wall_seconds:.1f}" if audio_seconds and wall_seconds > 0 else "-"
    logger.info(
        "%s model=%s audio=%s chunks=%d prompt_tokens=%d completion_tokens=%d wall=%.2fs rtfx=%s",
        kind,
        model_id,
        audio,
        chunks,
        prompt_tokens,
        completion_tokens,
        wall_seconds,
        rtfx,
    )


def log_failure(kind: str, model: str, error: BaseException, *, wall_seconds: float) -> None:
    """Log a model request that failed, in one line: `kind`, the model (its id, or the name asked for when no
    served model has it), the error's code (`internal_error` for anything not a VoxtralError) and the wall
    seconds until it failed."""
    code = getattr(error, "code", None) if isinstance(error, VoxtralError) else None
    logger.info("%s model=%s error=%s wall=%.2fs", kind, model, code or "internal_error", wall_seconds)
