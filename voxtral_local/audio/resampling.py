"""Resampling with soxr at high quality (the library and setting mistral-common's own audio path uses),
split across cores for long audio.

soxr releases the GIL, so the parts of a long recording resample in threads at once. Each part is resampled
with a margin of its neighbours' samples, which is then cut away: the filter's edge transients fall in the
margin, and parts start on input samples that map to whole output samples, so the joined result equals a
single pass to within float rounding.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soxr

MIN_PART_SECONDS = 60.0  # shorter audio is not worth a thread
MARGIN_SECONDS = 0.1  # soxr HQ's transients last well under 10 ms
MAX_WORKERS = 8
# With a cancel event, long audio is resampled in pieces of at most this many seconds, the event looked at
# before each: a request that goes away stops within a piece's work (well under a second).
MAX_PIECE_SECONDS = 600.0


def workers() -> int:
    """Threads for splitting decoding or resampling work: the cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores))


def part_count(samples: int, rate: int, parts: int | None = None) -> int:
    """Into how many parts to split `samples` at `rate` Hz: `parts` (default: the cores), but none shorter
    than `MIN_PART_SECONDS`; below 2, do it in one go."""
    return min(parts or workers(), int(samples / (MIN_PART_SECONDS * rate)))


def resample(
    samples: np.ndarray, rate: int, target: int, parts: int | None = None, cancel: threading.Event | None = None
) -> np.ndarray:
    """Mono float32 `samples` at `rate` Hz resampled to `target` Hz (`parts`: threads; default: the cores).

    With `cancel`, audio longer than MAX_PIECE_SECONDS is done in pieces of at most that length, and pieces
    not yet started once `cancel` is set are skipped: the result is then incomplete, and the caller, who set
    or watches `cancel`, must discard it."""
    if rate == target or samples.size == 0:
        return samples
    step_in, step_out = rate // math.gcd(rate, target), target // math.gcd(rate, target)
    count = samples.shape[0]
    threads = part_count(count, rate, parts)
    pieces = max(threads, math.ceil(count / (MAX_PIECE_SECONDS * rate))) if cancel is not None else threads
    if pieces < 2:
        return np.asarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)
    bounds = [round(count * i / pieces / step_in) * step_in for i in range(pieces)] + [count]
    margin = math.ceil(MARGIN_SECONDS * rate / step_in) * step_in

    def one(i: int) -> np.ndarray:
        if cancel is not None and cancel.is_set():
            return np.zeros(0, dtype=np.float32)
        start, stop = bounds[i], bounds[i + 1]
        low, high = max(0, start - margin), min(count, stop + margin)
        out = soxr.resample(samples[low:high], rate, target, quality="HQ")
        skip = (start - low) // step_in * step_out
        if stop == count:
            return np.asarray(out[skip:], dtype=np.float32)
        return np.asarray(out[skip : skip + (stop - start) // step_in * step_out], dtype=np.float32)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="resample") as pool:
        return np.concatenate(list(pool.map(one, range(pieces))))


class StreamResampler:
    """Mono float32 audio resampled piece by piece as it arrives (soxr's streaming resampler, same quality as
    `resample`): the pieces' outputs joined equal one pass over the whole, a few milliseconds of filter delay
    held back until `flush`. Not thread-safe."""

    def __init__(self, rate: int, target: int) -> None:
        self.rate, self.target = rate, target
        self._stream = None if rate == target else soxr.ResampleStream(rate, target, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """The resampled audio that `samples` (at `rate` Hz, shape (n,)) completes."""
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """What the filter still holds (the end of the audio so far); the stream starts afresh after it."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        rest = np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True), dtype=np.float32)
        self._stream.clear()
        return rest
