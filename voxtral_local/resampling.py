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
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soxr

MIN_PART_SECONDS = 60.0  # shorter audio is not worth a thread
MARGIN_SECONDS = 0.1  # soxr HQ's transients last well under 10 ms
MAX_WORKERS = 8


def workers() -> int:
    """Threads for splitting decoding or resampling work: the cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores))


def part_count(samples: int, rate: int, parts: int | None = None) -> int:
    """Into how many parts to split `samples` at `rate` Hz: `parts` (default: the cores), but none shorter
    than `MIN_PART_SECONDS`; below 2, do it in one go."""
    return min(parts or workers(), int(samples / (MIN_PART_SECONDS * rate)))


def resample(samples: np.ndarray, rate: int, target: int, parts: int | None = None) -> np.ndarray:
    """Mono float32 `samples` at `rate` Hz resampled to `target` Hz (`parts`: threads; default: the cores)."""
    if rate == target or samples.size == 0:
        return samples
    step_in, step_out = rate // math.gcd(rate, target), target // math.gcd(rate, target)
    count = samples.shape[0]
    parts = part_count(count, rate, parts)
    if parts < 2:
        return np.asarray(soxr.resample(samples, rate, target, quality="HQ"), dtype=np.float32)
    bounds = [round(count * i / parts / step_in) * step_in for i in range(parts)] + [count]
    margin = math.ceil(MARGIN_SECONDS * rate / step_in) * step_in

    def one(i: int) -> np.ndarray:
        start, stop = bounds[i], bounds[i + 1]
        low, high = max(0, start - margin), min(count, stop + margin)
        out = soxr.resample(samples[low:high], rate, target, quality="HQ")
        skip = (start - low) // step_in * step_out
        if stop == count:
            return np.asarray(out[skip:], dtype=np.float32)
        return np.asarray(out[skip : skip + (stop - start) // step_in * step_out], dtype=np.float32)

    with ThreadPoolExecutor(parts, thread_name_prefix="resample") as pool:
        return np.concatenate(list(pool.map(one, range(parts))))
