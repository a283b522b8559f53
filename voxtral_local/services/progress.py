"""How far a transcription has come: seconds of audio whose chunks have finished, as rows finish.

`ChunkProgress` listens to a backend's token and row callbacks next to `OrderedText` (`fan_out` joins them):
a row is finished when it chooses end-of-sequence or reaches its token cap."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..backends.base import Alternatives, RowsCallback, TokenCallback

# Told (seconds of audio whose chunks are done, the upload's seconds or None while it is still being decoded).
ProgressCallback = Callable[[float, float | None], None]


class ChunkProgress:
    """Reports `on_progress(done, total)` each time a row finishes. `durations(i)` gives row i's seconds of
    audio (asked once the row finishes, so rows added later are known by then); `total()` the upload's
    seconds, or None while unknown. Thread-safe: tokens come from the decoder's thread, rows from the
    request's."""

    def __init__(
        self,
        on_progress: ProgressCallback,
        *,
        eos_token_id: int,
        duration: Callable[[int], float],
        total: Callable[[], float | None],
    ) -> None:
        self.on_progress = on_progress
        self.eos_token_id = eos_token_id
        self.duration = duration
        self.total = total
        self.caps: list[int] = []
        self.counts: list[int] = []
        self.finished: list[bool] = []
        self.done = 0.0  # seconds
        self._lock = threading.Lock()

    def add_rows(self, caps: Sequence[int]) -> None:
        """Rows that follow the present ones (with their token caps)."""
        with self._lock:
            self.caps.extend(caps)
            self.counts.extend(0 for _ in caps)
            self.finished.extend(False for _ in caps)

    def on_token(self, index: int, token: int, logprob: float, top: Alternatives) -> None:
        """A token callback: counts row `index`'s tokens and reports when the row finishes."""
        with self._lock:
            if self.finished[index]:
                return
            self.counts[index] += 1
            if token != self.eos_token_id and self.counts[index] < self.caps[index]:
                return
            self.finished[index] = True
            self.done += self.duration(index)
            done = self.done
        total = self.total()
        self.on_progress(done if total is None else min(done, total), total)

    def finish(self) -> None:
        """Report the whole upload done unless that was the last report (rows may end without a last token:
        a cancelled job, a backend that streams no tokens)."""
        total = self.total()
        with self._lock:
            if total is None or self.done >= total - 1e-6:
                return
            self.done = total
        self.on_progress(total, total)


def fan_out(*callbacks: TokenCallback | None) -> TokenCallback | None:
    """One token callback calling each given one in turn (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def on_token(index: int, token: int, logprob: float, top: Alternatives) -> None:
        for callback in given:
            callback(index, token, logprob, top)

    return on_token


def fan_out_rows(*callbacks: RowsCallback | None) -> RowsCallback | None:
    """One rows callback calling each given one in turn (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def on_rows(caps: Sequence[int]) -> None:
        for callback in given:
            callback(caps)

    return on_rows
