"""Hostile and awkward uploads for the audio-input tests, made with real tools (FFmpeg, SoX) at test time."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import FIXTURES

SPEECH_WAV = (FIXTURES / "speech.wav").resolve()


def referencing_uploads() -> dict[str, bytes]:
    """Files FFmpeg would follow to media elsewhere (a file on the server's disk, a network port)."""
    existing, missing = SPEECH_WAV, SPEECH_WAV.with_name("no-such-file.wav")
    relative = "tests/fixtures/speech.wav"
    return {
        "concat, existing file": f"ffconcat version 1.0\nfile '{existing}'\n".encode(),
        "concat, relative path": f"ffconcat version 1.0\nfile '{relative}'\n".encode(),
        "concat, missing file": f"ffconcat version 1.0\nfile '{missing}'\n".encode(),
        "concat, subfile protocol": f"ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:{existing}'\n".encode(),
        "HLS playlist, existing file": (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{existing}\n#EXT-X-ENDLIST\n".encode()
        ),
        "HLS playlist, missing file": (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{missing}\n#EXT-X-ENDLIST\n".encode()
        ),
        "M3U playlist": f"#EXTM3U\n#EXTINF:7,speech\nfile://{existing}\n".encode(),
        "SDP (RTP on UDP)": (
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"
        ),
        "DASH manifest": (
            f'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet>'
            f'<Representation id="a" bandwidth="1"><BaseURL>file://{existing}</BaseURL></Representation>'
            f"</AdaptationSet></Period></MPD>".encode()
        ),
        "ffmetadata": b";FFMETADATA1\ntitle=x\n",
        "PNG image (image2pipe)": b"\x89PNG\r\n\x1a\n" + bytes(64),
        "data URL": b"data:audio/wav;base64,UklGRg==",
    }


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install -y ffmpeg sox)")
    return path


def ffmpeg(tmp: Path, *args: str, source: Path = SPEECH_WAV, out: str) -> bytes:
    """Run ffmpeg on `source` with output options `args`; the bytes written to `out` (a name, or "-" for a
    pipe, whose size fields the muxer cannot go back and fill in)."""
    command = [tool("ffmpeg"), "-v", "error", "-y", "-i", str(source), *args]
    if out == "-":
        return subprocess.run([*command, "-"], check=True, capture_output=True).stdout
    subprocess.run([*command, str(tmp / out)], check=True)
    return (tmp / out).read_bytes()


def sox_pipe_wav() -> bytes:
    """A WAV SoX writes to a pipe from input of unknown length: its data size is the placeholder 0x7FFFF000."""
    raw = subprocess.run([tool("sox"), str(SPEECH_WAV), "-t", "raw", "-"], check=True, capture_output=True).stdout
    args = [tool("sox"), "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-", "-t", "wav", "-"]
    return subprocess.run(args, input=raw, check=True, capture_output=True).stdout


def quiet_then_loud(tmp: Path, rate: int, channels: int) -> Path:
    """3 s of silence then 10 s of noise (SoX): a VBR MP3 of it starts with frames of the lowest bit rate."""
    out = tmp / f"quiet-loud-{rate}-{channels}.wav"
    sox = tool("sox")
    common = ["-r", str(rate), "-c", str(channels)]
    subprocess.run([sox, "-n", *common, str(tmp / "q.wav"), "trim", "0", "3"], check=True)
    subprocess.run([sox, "-n", *common, str(tmp / "n.wav"), "synth", "10", "whitenoise", "vol", "0.5"], check=True)
    subprocess.run([sox, str(tmp / "q.wav"), str(tmp / "n.wav"), str(out)], check=True)
    return out


def id3v24_footer_tag(title: str) -> bytes:
    """An ID3v2.4 tag with a footer, as appended after the audio (id3.org ID3v2.4 structure 3.4, 5)."""

    def syncsafe(n: int) -> bytes:
        return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])

    text = b"\x03" + title.encode()
    body = b"TIT2" + syncsafe(len(text)) + b"\x00\x00" + text
    return b"ID3\x04\x00\x10" + syncsafe(len(body)) + body + b"3DI\x04\x00\x10" + syncsafe(len(body))


def id3v1_tag(title: str) -> bytes:
    return b"TAG" + title.encode().ljust(30, b"\x00") + bytes(95)


def apev2_tag() -> bytes:
    item = struct.pack("<II", 5, 0) + b"Title\x00" + b"hello"
    footer = b"APETAGEX" + struct.pack("<IIII", 2000, len(item) + 32, 1, 0) + bytes(8)
    return item + footer


def wav_header(rate: int, channels: int) -> bytes:
    """A 21.6 kB 16-bit PCM WAV of silence declaring `rate` Hz and `channels` (at 1 Hz: 180 minutes)."""
    block = channels * 2
    data = bytes(21_600)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def extended(value: int) -> bytes:
    """`value` (> 0) as an IEEE 754 80-bit extended float, as AIFF stores its sample rate."""
    exponent = value.bit_length() - 1
    return struct.pack(">HQ", 16383 + exponent, value << (63 - exponent))


def aiff_with(aiff: bytes, *, rate: int | None = None, channels: int | None = None) -> bytes:
    """An AIFF file with its COMM chunk's sample rate or channel count replaced."""
    at = aiff.index(b"COMM") + 8
    out = bytearray(aiff)
    if channels is not None:
        out[at : at + 2] = struct.pack(">H", channels)
    if rate is not None:
        out[at + 8 : at + 18] = extended(rate)
    return bytes(out)
