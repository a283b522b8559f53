"""Turn the tokens of a batch of chunks, as each row chooses them, into ordered text deltas.

Row 0 (the first chunk) is streamed live, token by token. A later row's text is held until every row
before it has finished and been sent, then flushed and streamed live in turn. The deltas joined are
exactly the final transcript: chunk texts stripped and joined as `joining.join_texts` joins them (a space,
or none between scripts written without spaces). Rows may be added while
the first ones stream (`add_rows`: the rest of a long upload, decoded meanwhile). Each delta also carries the
tokens (and their logprobs) whose text it is the first to show, and, when the service asks for them, the bytes
of those tokens and of their alternatives (so that logprobs can be answered after the model is let go).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from ..backends.base import Alternatives
from .joining import separator

TokenBytes = Callable[[Sequence[int]], list[bytes]]  # each token's bytes (a backend's `token_bytes`)

REPLACEMENT = "\ufffd"  # an incomplete UTF-8 sequence at the end of the decoded bytes so far


class TextDelta(str):
    """A piece of streamed text (a `str`), with the tokens first shown in it, their logprobs, (when asked
    for) each step's most likely tokens, and (when asked for) the bytes of all those tokens by id."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top: tuple[Alternatives, ...]
    pieces: Mapping[int, bytes]

    def __new__(
        cls,
        text: str,
        token_ids: Sequence[int] = (),
        logprobs: Sequence[float] = (),
        top: Sequence[Alternatives] = (),
        pieces: Mapping[int, bytes] | None = None,
    ) -> TextDelta:
        delta = super().__new__(cls, text)
        delta.token_ids, delta.logprobs, delta.top = tuple(token_ids), tuple(logprobs), tuple(top)
        delta.pieces = pieces or {}
        return delta


class RowText:
    """Incremental detokenisation of one row, emitting only text that can no longer change."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop = tuple(stop)
        # characters kept back because they could be the start of a stop string
        self.hold_back = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[Alternatives] = []
        self.reported = 0  # tokens already attached to a delta
        self.sent = ""

    def push(self, token: int, logprob: float, top: Alternatives = ()) -> str:
        """Add a token; return newly visible text."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.top.append(top)
        text = self.decode(self.tokens).lstrip()
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            text = text[: min(cuts)]
        elif self.hold_back:
            text = text[: max(0, len(text) - self.hold_back)]
        return self._advance(text.rstrip(REPLACEMENT).rstrip())

    def finish(self, final: str) -> str:
        """The rest of the row, given its final (stripped, stop-trimmed) text."""
        return self._advance(final)

    def unreported(self) -> tuple[list[int], list[float], list[Alternatives]]:
        """The tokens (logprobs, alternatives) not yet attached to a delta, now marked attached."""
        start, self.reported = self.reported, len(self.tokens)
        return self.tokens[start:], self.logprobs[start:], self.top[start:]

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta


class OrderedText:
    """Assembles the deltas of a batch of rows, in row order."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        eos_token_id: int,
        caps: Sequence[int],
        stop: Sequence[str] = (),
        language: str | None = None,
        token_bytes: TokenBytes | None = None,
    ) -> None:
        """`token_bytes`, when given, fills each delta's `pieces`."""
        self.decode = decode
        self.token_bytes = token_bytes
        self.stop = tuple(stop)
        self.language = language  # of the transcript (ISO 639-1), for the separator between rows
        self.rows: list[RowText] = []
        self.caps: list[int] = []
        self.done: list[bool] = []
        self.eos_token_id = eos_token_id
        self.current = 0
        self.emitted: list[TextDelta] = []
        self._lock = threading.Lock()  # tokens come from the decoder's thread, rows from the producer's
        self.add_rows(caps)

    def add_rows(self, caps: Sequence[int]) -> None:
        """Rows that follow the present ones (with their token caps)."""
        with self._lock:
            self.rows.extend(RowText(self.decode, self.stop) for _ in caps)
            self.caps.extend(caps)
            self.done.extend(False for _ in caps)

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self.emitted)

    def push(self, index: int, token: int, logprob: float, top: Alternatives = ()) -> list[TextDelta]:
        """Row `index` chose `token`; returns the deltas to send now (none for a row already done)."""
        with self._lock:
            return self._push(index, token, logprob, top)

    def _push(self, index: int, token: int, logprob: float, top: Alternatives) -> list[TextDelta]:
        out: list[TextDelta] = []
        if self.done[index]:
            return out
        row = self.rows[index]
        if token == self.eos_token_id:
            self.done[index] = True
        else:
            delta = row.push(token, logprob, top)
            if index == self.current:
                self._emit(out, delta)
            if len(row.tokens) >= self.caps[index]:
                self.done[index] = True
        self._advance(out, final_texts=None)
        return out

    def forward_to(self, on_delta: Callable[[str], None]) -> Callable[[int, int, float, Alternatives], None]:
        """A token callback (row, token, logprob, alternatives) that passes each new delta (a `TextDelta`) to
        `on_delta`."""

        def on_token(index: int, token: int, logprob: float, top: Alternatives) -> None:
            for delta in self.push(index, token, logprob, top):
                on_delta(delta)

        return on_token

    def finish(self, final_texts: Sequence[str]) -> list[TextDelta]:
        """Flush every row with its final text; returns the remaining deltas."""
        out: list[TextDelta] = []
        with self._lock:
            self.done = [True] * len(self.rows)
            self._advance(out, final_texts)
        return out

    def _advance(self, out: list[TextDelta], final_texts: Sequence[str] | None) -> None:
        while self.current < len(self.rows) and self.done[self.current]:
            row = self.rows[self.current]
            if final_texts is not None:
                self._emit(out, row.finish(final_texts[self.current]))
            elif row.stop:
                return  # where a stop string cuts the text is known only from the final texts
            else:
                self._emit(out, row.finish(row.decode(row.tokens).strip()))
            self.current += 1
            if self.current < len(self.rows):
                self._emit(out, self.rows[self.current].sent, fresh=True)

    def _emit(self, out: list[TextDelta], text: str, fresh: bool = False) -> None:
        if not text:
            return
        row = self.rows[self.current]
        starts_row = fresh or len(row.sent) == len(text)
        if starts_row and self.emitted:
            text = separator(self.emitted[-1][-1], text[0], self.language) + text
        token_ids, logprobs, top = row.unreported()
        pieces = None if self.token_bytes is None else token_pieces(self.token_bytes, token_ids, top)
        delta = TextDelta(text, token_ids, logprobs, top, pieces)
        self.emitted.append(delta)
        out.append(delta)


def token_pieces(token_bytes: TokenBytes, token_ids: Sequence[int], top: Sequence[Alternatives]) -> dict[int, bytes]:
    """The bytes of these tokens and of their steps' alternatives, by token id."""
    everything = list(dict.fromkeys([*token_ids, *(alt for step in top for alt, _ in step)]))
    return dict(zip(everything, token_bytes(everything), strict=True))
