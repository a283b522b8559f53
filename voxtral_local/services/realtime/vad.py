"""Server VAD: silero-vad's model (shipped in the `silero-vad` package; nothing is downloaded) driven by its
`VADIterator`, one model and state per session.

The detector takes 16 kHz audio in any pieces and cuts it into 32 ms windows; it reports, in order, where
speech starts (with the audio from `prefix_padding_ms` before the detected start), the audio inside speech, and
where it stops (after `silence_duration_ms` of silence). Blocking (a window is about a millisecond of CPU): the
session runs it on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from silero_vad import VADIterator, load_silero_vad  # type: ignore[import-untyped]

from .config import VadConfig

RATE = 16000
WINDOW = 512  # samples per silero-vad step at 16 kHz (32 ms)


@dataclass(frozen=True)
class SpeechStart:
    """Speech begins at `position` (session samples, prefix padding included); `audio` runs from there to
    the end of the window it was detected in."""

    position: int
    audio: np.ndarray


@dataclass(frozen=True)
class SpeechAudio:
    """Audio inside speech, after the start."""

    audio: np.ndarray


@dataclass(frozen=True)
class SpeechEnd:
    """Speech ended at `position` (session samples; the audio after it is trailing silence already given)."""

    position: int


VadEvent = SpeechStart | SpeechAudio | SpeechEnd


class SpeechDetector:
    """Voice activity of one session's audio. Not thread-safe: one caller at a time."""

    def __init__(self, config: VadConfig, offset: int = 0) -> None:
        """`offset`: session samples before this detector's first (positions are reported in session samples)."""
        self.config = config
        self._offset = offset
        self._model = load_silero_vad()
        self._iterator = VADIterator(
            self._model,
            threshold=config.threshold,
            sampling_rate=RATE,
            min_silence_duration_ms=config.silence_duration_ms,
            speech_pad_ms=config.prefix_padding_ms,
        )
        self._keep = int(RATE * config.prefix_padding_ms / 1000) + WINDOW  # recent audio kept for the prefix
        self._recent = np.zeros(0, dtype=np.float32)  # the last `_keep` samples, ending at `_position`
        self._rest = np.zeros(0, dtype=np.float32)  # less than a window, not yet looked at
        self._position = 0  # session samples looked at
        self.speaking = False

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Look at more audio (float32 mono 16 kHz, shape (n,)); what it shows, in order. Audio short of a
        whole window waits for the next push."""
        audio = np.concatenate([self._rest, samples]) if self._rest.size else samples
        whole = audio.shape[0] // WINDOW * WINDOW
        self._rest = audio[whole:].copy()
        events: list[VadEvent] = []
        for start in range(0, whole, WINDOW):
            window = audio[start : start + WINDOW]
            self._recent = np.concatenate([self._recent, window])[-self._keep :]
            self._position += WINDOW
            with torch.inference_mode():
                found = self._iterator(torch.from_numpy(np.ascontiguousarray(window)))
            if found and "start" in found:
                begin = max(int(found["start"]), self._position - self._recent.shape[0])
                audio_from = self._recent[begin - self._position :].copy()
                events.append(SpeechStart(self._offset + begin, audio_from))
                self.speaking = True
                continue
            if self.speaking:
                events.append(SpeechAudio(window.copy()))
            if found and "end" in found:
                events.append(SpeechEnd(self._offset + min(int(found["end"]), self._position)))
                self.speaking = False
        return events

    def reset(self) -> None:
        """Forget the speech in progress (after a commit or a clear); positions go on counting."""
        self._iterator.triggered = False
        self._iterator.temp_end = 0
        self.speaking = False

    def take_held(self) -> np.ndarray:
        """The audio short of a window that the last push left unlooked-at (float32 16 kHz), handed over and
        forgotten (when VAD is turned off inside an utterance, it belongs to that utterance)."""
        held, self._rest = self._rest, np.zeros(0, dtype=np.float32)
        return held

    @property
    def position(self) -> int:
        """Session samples looked at so far."""
        return self._offset + self._position
