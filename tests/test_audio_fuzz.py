"""Property-based tests: the decoder on mangled real files only ever refuses them cleanly, and quickly."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxtral_local.audio import decode_audio, decode_head
from voxtral_local.errors import AudioDecodeError, AudioTooLongError

from .conftest import FIXTURES, FORMATS

ORIGINALS = {kind: (FIXTURES / f"speech.{kind}").read_bytes() for kind in FORMATS}
# Far above what a 7 s file costs (milliseconds), far below a hang or a duration bomb.
CASE_BOUND_S = 10.0


@st.composite
def mangled(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with some of: bits flipped, a cut, a run of bytes overwritten, another file's header
    spliced in front (or in place of its own)."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 8))):
        # favour the headers, where one flipped bit changes what the file claims
        at = draw(st.one_of(st.integers(0, min(len(data), 512) - 1), st.integers(0, len(data) - 1)))
        data[at] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + draw(st.integers(1, 16))] = draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        donor = ORIGINALS[draw(st.sampled_from(FORMATS))]
        head = draw(st.integers(4, 256))
        keep_own = draw(st.booleans())
        data = bytearray(donor[:head]) + (data if keep_own else data[head:])
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.parametrize("kind", FORMATS)
def test_mangled_files_are_decoded_or_refused_cleanly(kind: str) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(data=mangled(ORIGINALS[kind]), head=st.booleans())
    def check(data: bytes, head: bool) -> None:
        started = time.monotonic()
        try:
            if head:
                decode_head(data, seconds=2.0, max_seconds=120)
            else:
                decode_audio(data, max_seconds=120)
        except (AudioDecodeError, AudioTooLongError):
            pass
        assert time.monotonic() - started < CASE_BOUND_S

    check()
