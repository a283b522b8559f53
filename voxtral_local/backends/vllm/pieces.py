"""Pseudo token ids for text that an upstream streams: one id per distinct piece (a token's bytes, or a delta's
text when the upstream reports no tokens), shared by every request of the process.

The services speak of token ids (`OrderedText` decodes a row's ids, logprobs carry each token's bytes); an
upstream speaks of text. Interning each piece gives the services ids to work with: `decode` joins the pieces'
bytes, `token_bytes` returns them. The pieces of an upstream's stream are its tokens (vLLM streams one delta
per step when its consumer keeps up, merged ones when not), so the table grows mostly with the vocabulary the
upstreams use; a bound on its size keeps any other stream (merged deltas, an odd upstream) from growing it
without end.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

MAX_PIECES = 1 << 20  # about a million pieces (tens of MB): many times a vocabulary


class PieceTable:
    """Interned pieces of generated text (bytes) and their ids (0, 1, 2, ...), at most `limit` of them: past
    it, the least recently interned piece is forgotten, so a running request loses a piece only when `limit`
    newer distinct pieces arrive while it runs (its `decode` is then an UndecodableOutputError). Thread-safe."""

    def __init__(self, limit: int = MAX_PIECES) -> None:
        self.limit = limit
        self._ids: OrderedDict[bytes, int] = OrderedDict()
        self._pieces: dict[int, bytes] = {}
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pieces)

    def intern(self, piece: bytes) -> int:
        """The id of `piece`, new if it was never seen (or was forgotten)."""
        with self._lock:
            found = self._ids.get(piece)
            if found is not None:
                self._ids.move_to_end(piece)
                return found
            found, self._next = self._next, self._next + 1
            self._ids[piece] = found
            self._pieces[found] = piece
            if len(self._ids) > self.limit:
                _, oldest = self._ids.popitem(last=False)
                del self._pieces[oldest]
            return found

    def pieces(self, ids: Sequence[int]) -> list[bytes]:
        """The bytes of each id; KeyError for an id never given out (or forgotten)."""
        pieces = self._pieces
        return [pieces[token] for token in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of these pieces joined (an incomplete UTF-8 sequence at the end shows as U+FFFD)."""
        return b"".join(self.pieces(ids)).decode("utf-8", errors="replace")
