"""Cutting long audio at quiet points, with offsets that add up."""

from __future__ import annotations

import itertools

import numpy as np

from voxtral_local.audio.chunking import split_audio
from voxtral_local.audio.decode import SAMPLE_RATE
from voxtral_local.testing.audio_files import silence


def speech_with_gaps(
    speech: np.ndarray, minutes: float, gap_s: float = 0.4
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speech clips separated by short silences; returns the audio and the (start, end) of each gap."""
    pieces, gaps, t = [], [], 0.0
    clip_s = speech.shape[0] / SAMPLE_RATE
    while t < minutes * 60:
        pieces.append(speech)
        t += clip_s
        pieces.append(silence(gap_s))
        gaps.append((t, t + gap_s))
        t += gap_s
    return np.concatenate(pieces), gaps


def test_short_audio_is_one_chunk(speech: np.ndarray) -> None:
    chunks = split_audio(speech, max_chunk_s=30)
    assert len(chunks) == 1
    assert chunks[0].start_s == 0.0 and chunks[0].samples.shape == speech.shape


def test_long_audio_is_cut_in_quiet_windows(speech: np.ndarray) -> None:
    audio, gaps = speech_with_gaps(speech, minutes=4)
    duration = audio.shape[0] / SAMPLE_RATE
    chunks = split_audio(audio, max_chunk_s=30)

    assert len(chunks) >= int(np.ceil(duration / 30))
    assert all(c.duration_s <= 30.0 for c in chunks)
    assert chunks[0].start_s == 0.0
    for before, after in itertools.pairwise(chunks):
        assert after.start_s == before.end_s  # contiguous, nothing lost or repeated
        assert any(lo <= after.start_s <= hi for lo, hi in gaps), f"cut at {after.start_s:.2f}s is not in a gap"
    assert abs(chunks[-1].end_s - duration) < 1e-6
    assert sum(c.samples.shape[0] for c in chunks) == audio.shape[0]


def test_cut_lands_in_the_quietest_window_not_at_the_limit() -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(40 * SAMPLE_RATE) * 0.3).astype(np.float32)
    audio[int(27.0 * SAMPLE_RATE) : int(27.2 * SAMPLE_RATE)] = 0.0  # the one quiet moment
    chunks = split_audio(audio, max_chunk_s=30)
    assert len(chunks) == 2
    assert 27.0 <= chunks[1].start_s <= 27.2


def test_noise_without_a_pause_is_still_cut_within_the_limit() -> None:
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(95 * SAMPLE_RATE) * 0.3).astype(np.float32)
    chunks = split_audio(audio, max_chunk_s=30)
    assert all(c.duration_s <= 30 for c in chunks)
    assert sum(c.samples.shape[0] for c in chunks) == audio.shape[0]
    assert all(c.duration_s >= 25 for c in chunks[:-1])  # cuts fall in the last 5 s before the limit
