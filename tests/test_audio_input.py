"""The decoder's own guards: only accepted containers, read from their own bytes; truncation only where a
length is stated exactly; sane stream parameters; cancellable; and no other exception on mangled files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voxtral_local.audio.containers import NOT_ACCEPTED
from voxtral_local.audio.decode import SAMPLE_RATE, decode_audio, decode_head
from voxtral_local.errors import AudioDecodeError, GenerationCancelledError
from voxtral_local.testing.audio_files import encode

from .audio_cases import (
    aiff_with,
    apev2_tag,
    ffmpeg,
    id3v1_tag,
    id3v24_footer_tag,
    quiet_then_loud,
    referencing_uploads,
    sox_pipe_wav,
    wav_header,
)
from .conftest import FIXTURES

SPEECH_SECONDS = 6.587


@pytest.mark.parametrize("name", list(referencing_uploads()))
def test_files_that_reference_other_media_are_refused_with_one_message(name: str) -> None:
    started = time.monotonic()
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(referencing_uploads()[name], max_seconds=60)
    assert info.value.message == NOT_ACCEPTED  # the same words whatever path the file names
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("title", "codec"),
    [("Sensor data log", "pcm_s16le"), ("data", "pcm_s16le"), ("raw data", "pcm_s24le"), ("metadata", "pcm_u8")],
)
def test_a_wav_with_a_list_chunk_mentioning_data_is_read_whole(tmp_path: Path, title: str, codec: str) -> None:
    data = ffmpeg(tmp_path, "-metadata", f"title={title}", "-c:a", codec, out="titled.wav")
    assert data.index(b"LIST") < data.index(title.encode()) < data.rindex(b"data")  # the title precedes `data`
    samples = decode_audio(data, max_seconds=60)
    assert abs(samples.shape[0] / SAMPLE_RATE - SPEECH_SECONDS) < 0.05
    with pytest.raises(AudioDecodeError, match=r"the WAV data chunk declares 6\.6 s of audio but only 3\.\d s"):
        decode_audio(data[: len(data) // 2], max_seconds=60)


@pytest.mark.parametrize("placeholder", [None, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0])
def test_a_wav_written_to_a_pipe_is_read_to_its_end(placeholder: int | None) -> None:
    data = sox_pipe_wav()
    at = data.index(b"data") + 4
    if placeholder is None:
        assert data[at : at + 4] == (0x7FFFF000).to_bytes(4, "little")  # what SoX writes
    else:
        data = data[:at] + placeholder.to_bytes(4, "little") + data[at + 4 :]
    samples = decode_audio(data, max_seconds=60)
    assert abs(samples.shape[0] / SAMPLE_RATE - SPEECH_SECONDS) < 0.05


def test_an_ffmpeg_wav_written_to_a_pipe_is_read_to_its_end(tmp_path: Path) -> None:
    data = ffmpeg(tmp_path, "-f", "wav", out="-")
    samples = decode_audio(data, max_seconds=60)
    assert abs(samples.shape[0] / SAMPLE_RATE - SPEECH_SECONDS) < 0.05


@pytest.mark.parametrize(("rate", "channels", "quality"), [(22050, 1, "0"), (44100, 2, "2"), (16000, 1, "5")])
def test_a_vbr_mp3_without_a_xing_header_is_not_called_truncated(
    tmp_path: Path, rate: int, channels: int, quality: str
) -> None:
    source = quiet_then_loud(tmp_path, rate, channels)
    data = ffmpeg(tmp_path, "-c:a", "libmp3lame", "-q:a", quality, "-write_xing", "0", source=source, out="v.mp3")
    assert b"Xing" not in data[:4096] and b"Info" not in data[:4096]
    samples = decode_audio(data, max_seconds=600)
    assert abs(samples.shape[0] / SAMPLE_RATE - 13.0) < 0.2


@pytest.mark.parametrize("xing", [True, False])
@pytest.mark.parametrize("tags", ["id3v2.4 footer", "id3v1", "apev2", "apev2 + id3v1", "id3v2.4 + id3v1"])
def test_an_mp3_with_tags_appended_after_the_audio_is_read_whole(tmp_path: Path, xing: bool, tags: str) -> None:
    args = ["-c:a", "libmp3lame", "-q:a", "4"] + ([] if xing else ["-write_xing", "0"])
    data = ffmpeg(tmp_path, *args, out="t.mp3")
    appended = {
        "id3v2.4 footer": id3v24_footer_tag("Appended"),
        "id3v1": id3v1_tag("Old"),
        "apev2": apev2_tag(),
        "apev2 + id3v1": apev2_tag() + id3v1_tag("Old"),
        "id3v2.4 + id3v1": id3v24_footer_tag("Appended") + id3v1_tag("Old"),
    }[tags]
    samples = decode_audio(data + appended, max_seconds=60)
    assert abs(samples.shape[0] / SAMPLE_RATE - SPEECH_SECONDS) < 0.1


@pytest.mark.parametrize(
    ("kind", "declarer"),
    [
        ("wav", "the WAV data chunk"),
        ("flac", "truncated or corrupt|the FLAC STREAMINFO block"),
        ("mp3", "the MP3 Xing/Info header"),
        ("webm", "the WebM/Matroska segment info"),
        ("aiff", "the AIFF COMM chunk"),
    ],
)
@pytest.mark.parametrize("kept", [0.3, 0.5, 0.8])
def test_real_truncation_is_refused_naming_what_declared_the_length(
    tmp_path: Path, kind: str, declarer: str, kept: float
) -> None:
    if kind == "aiff":
        data = ffmpeg(tmp_path, "-c:a", "pcm_s16be", out="s.aiff")
    else:
        data = (FIXTURES / f"speech.{kind}").read_bytes()
    with pytest.raises(AudioDecodeError, match=declarer):
        decode_audio(data[: int(len(data) * kept)], max_seconds=60)


def test_a_cut_mp4_is_refused(tmp_path: Path) -> None:
    for kind in ("mp4", "m4a", "mov"):
        data = (FIXTURES / f"speech.{kind}").read_bytes()
        with pytest.raises(AudioDecodeError, match=r"truncated|not a decodable"):
            decode_audio(data[: len(data) // 2], max_seconds=60)


@pytest.mark.parametrize(
    ("rate", "channels", "named"),
    [(1, 1, "1 Hz"), (999, 1, "999 Hz"), (4_000_000_000, 1, "4000000000 Hz"), (800_000, 1, "800000 Hz"),
     (16000, 0, "0 channels"), (16000, 1000, "1000 channels"), (16000, 65, "65 channels")],
)  # fmt: skip
def test_wav_headers_out_of_bounds_are_refused_before_decoding(rate: int, channels: int, named: str) -> None:
    started = time.monotonic()
    with pytest.raises(AudioDecodeError, match=named):
        decode_audio(wav_header(rate, channels), max_seconds=4 * 3600)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("rate", "channels", "named"),
    [(1, None, "1 Hz"), (900_000, None, "900000 Hz"), (None, 0, "0 channels"), (None, 1000, "1000 channels")],
)
def test_aiff_headers_out_of_bounds_are_refused_before_decoding(
    tmp_path: Path, rate: int | None, channels: int | None, named: str
) -> None:
    aiff = ffmpeg(tmp_path, "-c:a", "pcm_s16be", out="s.aiff")
    with pytest.raises(AudioDecodeError, match=named):
        decode_audio(aiff_with(aiff, rate=rate, channels=channels), max_seconds=4 * 3600)


def test_a_flac_stating_1_hz_is_refused() -> None:
    data = bytearray((FIXTURES / "speech.flac").read_bytes())
    info = data.index(b"fLaC") + 8
    data[info + 10 : info + 13] = ((1 << 4) | (data[info + 12] & 0x0F)).to_bytes(3, "big")  # 20-bit rate := 1
    with pytest.raises(AudioDecodeError, match="1 Hz"):
        decode_audio(bytes(data), max_seconds=4 * 3600)


@pytest.mark.parametrize("kind", ["wav", "mp3", "flac", "m4a", "ogg"])
def test_rates_and_channels_at_the_bounds_are_accepted(kind: str) -> None:
    tone = (np.sin(np.arange(SAMPLE_RATE) * 0.05) * 0.3).astype(np.float32)
    assert decode_audio(encode(tone, kind), max_seconds=60).shape[0] > 0.9 * SAMPLE_RATE


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "m4a"])
def test_decoding_stops_once_cancelled(kind: str) -> None:
    """A set cancel event stops the libsndfile and PyAV paths alike, whole or head."""
    data = (FIXTURES / f"speech.{kind}").read_bytes()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelledError):
        decode_audio(data, max_seconds=60, cancel=cancel)
    with pytest.raises(GenerationCancelledError):
        decode_head(data, seconds=1.0, max_seconds=60, cancel=cancel)


@pytest.mark.parametrize("lead", [b"\x00" * 1000, bytes(range(256)) * 3, b"\xff\xfb" + bytes(300)])
def test_an_mp3_starting_with_junk_or_a_partial_frame_is_still_an_mp3(lead: bytes) -> None:
    """FFmpeg's MP3 demuxer skips to the first frame; so does the sniffing (two frames in a row)."""
    from voxtral_local.audio.containers import id3v2_end

    data = (FIXTURES / "speech.mp3").read_bytes()
    frames = data[id3v2_end(data) :]
    samples = decode_audio(lead + frames[417:], max_seconds=60)  # cut inside the first frames
    assert abs(samples.shape[0] / SAMPLE_RATE - SPEECH_SECONDS) < 0.2


@pytest.mark.parametrize("size", [0, 1, 31])
def test_a_degenerate_ape_footer_is_not_stripped_forever(size: int) -> None:
    import struct

    data = (FIXTURES / "speech.mp3").read_bytes()
    footer = b"APETAGEX" + struct.pack("<IIII", 2000, size, 0, 0) + bytes(8)
    started = time.monotonic()
    samples = decode_audio(data + footer, max_seconds=60)
    assert samples.shape[0] > 0 and time.monotonic() - started < 5


def test_the_open_options_alone_stop_a_demuxer_that_reads_elsewhere() -> None:
    """Defence in depth: were a referencing demuxer ever chosen, the whitelists PyAV passes stop it."""
    import io
    import os

    import av

    from voxtral_local.audio.containers import Container, open_options

    # concat's default `safe` mode refuses absolute paths, not relative ones
    script = f"ffconcat version 1.0\nfile '{os.path.relpath(FIXTURES / 'speech.wav')}'\n".encode()
    with av.open(io.BytesIO(script), mode="r", format="concat") as container:  # unguarded, it reads the file
        assert container.streams.audio[0].sample_rate == 16000
    options = open_options(Container("test", "concat"))
    with pytest.raises(av.FFmpegError), av.open(io.BytesIO(script), format="concat", container_options=options):
        pass
