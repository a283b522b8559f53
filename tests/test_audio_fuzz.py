"""Property-based tests: the decoder on mangled real files only ever refuses them cleanly, and quickly."""

from __future__ import annotations

import contextlib
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxtral_local.audio.decode import decode_audio, decode_head
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


def wav_with_fmt(tag: int, channels: int, rate: int, byte_rate: int, block_align: int, bits: int) -> bytes:
    """A RIFF/WAVE file whose 16-byte fmt chunk states exactly these fields, with 32,000 zero bytes of data."""
    data = bytes(32_000)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate, block_align, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


@pytest.mark.parametrize(
    ("tag", "bits"),
    [(1, 0), (1, 65535), (0xFFFE, 16), (3, 16), (3, 0), (0x1234, 16), (0, 16)],
)
def test_wav_encodings_no_decoder_reads_are_refused_cleanly(tag: int, bits: int) -> None:
    """A WAV whose format tag or sample size FFmpeg has no decoder for (PyAV then gives a stream without a
    codec context): a 400 `invalid_audio`, never another exception."""
    with pytest.raises(AudioDecodeError):
        decode_audio(wav_with_fmt(tag, 1, 16_000, 32_000, 2, bits), max_seconds=120)


FIELD_16 = st.one_of(st.sampled_from([0, 1, 2, 3, 6, 7, 8, 16, 24, 32, 64, 0xFFFE, 0xFFFF]), st.integers(0, 0xFFFF))
FIELD_32 = st.one_of(st.sampled_from([0, 1, 8_000, 16_000, 44_100, 48_000, 0x7FFFFFFF]), st.integers(0, 0xFFFFFFFF))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(tag=FIELD_16, channels=FIELD_16, rate=FIELD_32, byte_rate=FIELD_32, block_align=FIELD_16, bits=FIELD_16)
def test_any_wav_fmt_chunk_is_decoded_or_refused_cleanly(
    tag: int, channels: int, rate: int, byte_rate: int, block_align: int, bits: int
) -> None:
    """Every field of a WAV's fmt chunk, whatever its value: decoded, or refused with the decoder's own errors,
    within the per-case bound."""
    started = time.monotonic()
    with contextlib.suppress(AudioDecodeError, AudioTooLongError):
        decode_audio(wav_with_fmt(tag, channels, rate, byte_rate, block_align, bits), max_seconds=120)
    assert time.monotonic() - started < CASE_BOUND_S
