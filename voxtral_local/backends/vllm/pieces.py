"""Pseudo token ids for text that an upstream streams: one id per distinct piece (a token's bytes, or a delta's
text when the upstream reports no tokens), shared by every request of the process.

The services speak of token ids (`OrderedText` decodes a row's ids, logprobs carry each token's bytes); an
upstream speaks of text. Interning each piece gives the services ids to work with: `decode` joins the pieces'
bytes, `token_bytes` returns them. The pieces of an upstream's stream are its tokens (vLLM streams one delta
per step), so the table grows with the vocabulary the upstreams use, not with the requests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence


class PieceTable:
    """Interned pieces of generated text (bytes) and their ids (0, 1, 2, ...). Thread-safe."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}
        self._pieces: list[bytes] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pieces)

    def intern(self, piece: bytes) -> int:
        """The id of `piece`, new if it was never seen."""
        found = self._ids.get(piece)
        if found is not None:
            return found
        with self._lock:
            found = self._ids.get(piece)
            if found is None:
                found = len(self._pieces)
                self._pieces.append(piece)
                self._ids[piece] = found
            return found

    def pieces(self, ids: Sequence[int]) -> list[bytes]:
        """The bytes of each id; KeyError for an id never given out."""
        pieces = self._pieces
        out = []
        for token in ids:
            if not 0 <= token < len(pieces):
                raise KeyError(token)
            out.append(pieces[token])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """The text of these pieces joined (an incomplete UTF-8 sequence at the end shows as U+FFFD)."""
        return b"".join(self.pieces(ids)).decode("utf-8", errors="replace")
