"""What an upload's headers state, checked before any decoding: sane stream parameters, and the lengths a
container states exactly (the only ones a truncation check may trust).

A file is truncated only when its container states its length exactly and the bytes end early. Exact
statements: a WAV's `data` chunk size (RIFF, Microsoft/IBM 1991; RF64's `ds64` chunk, EBU Tech 3306), an
MP3's Xing/Info or VBRI frame count, a FLAC STREAMINFO block's total samples (RFC 9639 8.2), an MP4/MOV's
sample tables (ISO/IEC 14496-12 `stts`/`stsz`: FFmpeg's stream duration when it counted the samples), an
AIFF's COMM frame count. FFmpeg's durations of other files are estimates (from a first frame's bit rate, the
last Ogg page, the file size) and never count.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AudioDecodeError
from .containers import id3v2_end, mpeg_audio_header

# 1 kHz: below every rate a recorder or codec uses (telephony's 8 kHz is the lowest common one; 4 kHz
# exists in some old formats), while 1 Hz makes each byte of a small file seconds of audio to decode.
# 768 kHz: the highest rate audio interfaces and DXD/DSD-to-PCM conversions produce.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
# 64: seventh-order ambisonics; WAVE_FORMAT_EXTENSIBLE names 18 speaker positions, Opus families up to 255.
MAX_CHANNELS = 64
# A data size this large is a streaming writer's placeholder, not a length: writers that cannot seek back
# put 0xFFFFFFFF (FFmpeg), 0x7FFFF000 (SoX), 0x7FFFFFFF or 0x80000000 there; a real 2 GiB WAV is far past
# any upload limit.
_WAV_OPEN_SIZE = 0x7F000000


def check_stream(sample_rate: int, channels: int) -> None:
    """Refuse a stream whose header states a sample rate (Hz) or channel count outside the sane bounds
    (MIN_SAMPLE_RATE..MAX_SAMPLE_RATE, 1..MAX_CHANNELS), before a sample is decoded. Raises
    AudioDecodeError naming the value."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"The uploaded file's header states a sample rate of {sample_rate} Hz; accepted rates are "
            f"{MIN_SAMPLE_RATE:,} to {MAX_SAMPLE_RATE:,} Hz."
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioDecodeError(
            f"The uploaded file's header states {channels} channels; accepted are 1 to {MAX_CHANNELS}."
        )


def check_header_bounds(data: bytes) -> None:
    """`check_stream` on what a WAV `fmt ` chunk, an AIFF `COMM` chunk or a FLAC STREAMINFO block states, read
    here so that even a header the decoders would refuse as malformed is refused with the value named.
    Other containers are checked once opened."""
    if data[8:12] == b"WAVE" and data[:4] in (b"RIFF", b"RF64", b"BW64"):
        fmt = _chunk(data, b"fmt ", little=True)
        if fmt is not None and len(fmt) >= 8:
            check_stream(int.from_bytes(fmt[4:8], "little"), int.from_bytes(fmt[2:4], "little"))
    elif data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        comm = _chunk(data, b"COMM", little=False)
        if comm is not None and len(comm) >= 18:
            check_stream(_extended_to_int(comm[8:18]), int.from_bytes(comm[0:2], "big"))
    else:
        start = id3v2_end(data)
        info = data[start + 8 : start + 8 + 34]
        if data[start : start + 4] == b"fLaC" and len(info) >= 13:
            check_stream(int.from_bytes(info[10:13], "big") >> 4, ((info[12] >> 1) & 7) + 1)


def _chunk(data: bytes, wanted: bytes, *, little: bool) -> bytes | None:
    """The body of the first chunk `wanted` of a RIFF (little-endian sizes) or IFF (big-endian) file, walked
    chunk by chunk from byte 12; None if the walk does not reach it."""
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little" if little else "big")
        if data[pos : pos + 4] == wanted:
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return None


def _extended_to_int(ten: bytes) -> int:
    """An IEEE 754 80-bit extended float (AIFF's sample rate), rounded down to an integer; 0 if below 1."""
    exponent = int.from_bytes(ten[0:2], "big") & 0x7FFF
    mantissa = int.from_bytes(ten[2:10], "big")
    shift = exponent - 16383 - 63
    if exponent == 0 or shift < -64:
        return 0
    return mantissa << shift if shift >= 0 else mantissa >> -shift


@dataclass(frozen=True)
class DeclaredLength:
    """A length a container states exactly: `what` states it (for messages), in seconds."""

    what: str
    seconds: float


def check_wav_data(data: bytes) -> None:
    """Refuse a RIFF/RF64 WAVE file whose `data` chunk declares more bytes than follow it.

    The chunks are walked from the first (each: 4-byte id, 4-byte little-endian size, body padded to an even
    length); an open size (see _WAV_OPEN_SIZE) declares nothing. A file whose chunks cannot be walked to a
    `data` chunk is left to the decoders. Both libsndfile and FFmpeg quietly shorten a truncated WAV.
    """
    if len(data) < 12 or data[8:12] != b"WAVE" or data[:4] not in (b"RIFF", b"RF64", b"BW64"):
        return
    pos, byte_rate, ds64_size = 12, 0, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = data[pos + 8 : pos + 8 + size]
        if chunk == b"ds64" and len(body) >= 16:
            ds64_size = int.from_bytes(body[8:16], "little")
        elif chunk == b"fmt " and len(body) >= 12:
            byte_rate = int.from_bytes(body[8:12], "little")
        elif chunk == b"data":
            if size == 0xFFFFFFFF and ds64_size is not None:
                size = ds64_size
            elif size == 0 or size >= _WAV_OPEN_SIZE:
                return
            present = len(data) - (pos + 8)
            if present < size:
                raise AudioDecodeError(_truncated("the WAV data chunk", size, present, byte_rate))
            return
        pos += 8 + size + (size & 1)


def _truncated(what: str, declared: int, present: int, byte_rate: int) -> str:
    if byte_rate > 0:
        declared_s, present_s = f"{declared / byte_rate:.1f} s of audio", f"{present / byte_rate:.1f} s"
    else:
        declared_s, present_s = f"{declared} bytes of audio", f"{present} bytes"
    return f"The uploaded file is truncated: {what} declares {declared_s} but only {present_s} are present."


def mp3_declared(data: bytes) -> tuple[DeclaredLength, int | None] | None:
    """The length an MP3's Xing/Info or VBRI header states (frames times samples per frame), and the bytes of
    audio it states (None if it does not); None when the first frame has neither header.

    `data` is the file without trailing tags (see audio_containers.without_trailing_tags).
    """
    start = id3v2_end(data)
    header = mpeg_audio_header(data[start : start + 4])
    if header is None:
        return None
    xing = start + 4 + header.side_info_bytes
    if data[xing : xing + 4] in (b"Xing", b"Info") and len(data) >= xing + 16:
        flags = int.from_bytes(data[xing + 4 : xing + 8], "big")
        if not flags & 1:
            return None
        frames = int.from_bytes(data[xing + 8 : xing + 12], "big")
        stream_bytes = int.from_bytes(data[xing + 12 : xing + 16], "big") if flags & 2 else None
        what = "the MP3 Xing/Info header"
    elif data[start + 36 : start + 40] == b"VBRI" and len(data) >= start + 54:
        stream_bytes = int.from_bytes(data[start + 46 : start + 50], "big")
        frames = int.from_bytes(data[start + 50 : start + 54], "big")
        what = "the MP3 VBRI header"
    else:
        return None
    return DeclaredLength(what, frames * header.samples_per_frame / header.sample_rate), stream_bytes


def flac_declared(data: bytes) -> DeclaredLength | None:
    """The length a FLAC STREAMINFO block states (total samples over the sample rate; RFC 9639 8.2), None
    when it states 0 (unknown)."""
    start = id3v2_end(data)
    info = data[start + 8 : start + 8 + 34]  # "fLaC", the block header, then STREAMINFO
    if len(info) < 18 or data[start : start + 4] != b"fLaC" or data[start + 4] & 0x7F != 0:
        return None
    sample_rate = int.from_bytes(info[10:13], "big") >> 4
    total = int.from_bytes(info[13:18], "big") & 0xFFFFFFFFF
    if total == 0 or sample_rate == 0:
        return None
    return DeclaredLength("the FLAC STREAMINFO block", total / sample_rate)
