"""Cut long audio into chunks no longer than the model's window, at the quietest moment near the limit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .decode import SAMPLE_RATE


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the original audio and where it starts in it."""

    samples: np.ndarray
    start: int  # offset in samples of the original audio

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return (self.start + self.samples.shape[0]) / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / SAMPLE_RATE


def split_audio(
    samples: np.ndarray,
    *,
    max_chunk_s: float,
    search_s: float = 5.0,
    window_s: float = 0.1,
    hop_s: float = 0.01,
) -> list[AudioChunk]:
    """Split `samples` into consecutive chunks of at most `max_chunk_s` seconds.

    Each cut is placed at the centre of the quietest `window_s` window (lowest energy) within the last
    `search_s` seconds before the limit, so that words are not split. The chunks cover the audio
    exactly, in order, each with its start offset.
    """
    max_len = int(max_chunk_s * SAMPLE_RATE)
    if max_len <= 0:
        raise ValueError("max_chunk_s must be positive")
    chunks: list[AudioChunk] = []
    start = 0
    total = int(samples.shape[0])
    while total - start > max_len:
        cut = _quietest_cut(samples, start, start + max_len, search_s, window_s, hop_s)
        chunks.append(AudioChunk(samples[start:cut], start))
        start = cut
    chunks.append(AudioChunk(samples[start:], start))
    return chunks


def _quietest_cut(samples: np.ndarray, start: int, limit: int, search_s: float, window_s: float, hop_s: float) -> int:
    """Sample index in (start, limit] at the centre of the lowest-energy window before `limit`."""
    window = max(1, int(window_s * SAMPLE_RATE))
    hop = max(1, int(hop_s * SAMPLE_RATE))
    lo = max(start + 1, limit - int(search_s * SAMPLE_RATE))
    region = samples[lo:limit].astype(np.float64)
    if region.shape[0] < window:
        return limit
    energy = np.concatenate(([0.0], np.cumsum(region * region)))
    starts = np.arange(0, region.shape[0] - window + 1, hop)
    window_energy = energy[starts + window] - energy[starts]
    # Prefer the latest of equally quiet windows: it keeps chunks as long as allowed.
    best = starts[len(window_energy) - 1 - int(np.argmin(window_energy[::-1]))]
    return int(lo + best + window // 2)
