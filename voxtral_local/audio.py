"""Decode uploaded bytes to mono 16 kHz float32, stopping as soon as the duration limit is passed.

libsndfile (soundfile) reads WAV, FLAC and MP3 and soxr resamples them, as mistral-common's own audio path
does; long files are read and resampled in parallel parts. PyAV (FFmpeg bundled in its wheel) decodes every
other container and codec. Nothing here shells out to an ffmpeg binary.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import av
import numpy as np
import soundfile as sf

from .errors import AudioDecodeError, AudioTooLongError
from .resampling import part_count, resample, workers

SAMPLE_RATE = 16_000
# libsndfile formats read at any rate (exact seeking, so long files are read in parallel parts), and Ogg,
# read only at 16 kHz (Opus' duration is a claim of its last page: PyAV checks it while decoding).
_SOUNDFILE_ANY_RATE = frozenset({"WAV", "FLAC", "MP3"})
_SOUNDFILE_16K = frozenset({"OGG"})
_ID3V1_BYTES = 128
# Audio this much shorter than its container claims is reported as truncated.
_TRUNCATION_TOLERANCE_S = 1.0

logger = logging.getLogger(__name__)


def decode_audio(data: bytes, *, max_seconds: float) -> np.ndarray:
    """Decode a whole audio (or video) file to mono float32 samples at 16 kHz.

    Raises AudioDecodeError for empty, truncated or undecodable input and AudioTooLongError as soon as
    more than `max_seconds` have been decoded.
    """
    samples, _ = _decode(data, max_seconds, until=None)
    return samples


def decode_head(data: bytes, *, seconds: float, max_seconds: float) -> tuple[np.ndarray, bool]:
    """The first `seconds` of a file, decoded as `decode_audio` decodes them, and whether that is all of it.

    Only the head is decoded, so only what shows there is checked: an empty or undecodable file, and a
    header that declares more than `max_seconds`. A file no longer than `seconds`, or one whose header does
    not declare its length, is decoded (and checked) whole, as `decode_audio` does; of a longer one, decode
    the whole with `decode_audio` to check the rest.
    """
    return _decode(data, max_seconds, until=seconds)


def _decode(data: bytes, max_seconds: float, until: float | None) -> tuple[np.ndarray, bool]:
    """Samples (the first `until` seconds, if given) and whether they are the whole file: libsndfile's path
    where it applies (see `_soundfile_info`), else PyAV's."""
    if not data:
        raise AudioDecodeError("The uploaded file is empty (0 bytes).")
    _check_wav_complete(data)
    info = _soundfile_info(data)
    read = None if info is None else _decode_with_soundfile(data, info, max_seconds, until)
    samples, complete = read if read is not None else _decode_with_pyav(data, max_seconds, until)
    return _checked(samples), complete


def duration_seconds(samples: np.ndarray) -> float:
    """Length of 16 kHz samples in seconds."""
    return float(samples.shape[0]) / SAMPLE_RATE


def _checked(samples: np.ndarray) -> np.ndarray:
    if samples.size == 0:
        raise AudioDecodeError("The uploaded file contains no audio samples.")
    if not np.isfinite(samples).all():
        raise AudioDecodeError("The uploaded file decodes to invalid (non-finite) samples.")
    return samples


def _soundfile_info(data: bytes) -> Any | None:
    """libsndfile's description of a file it reads the way mistral-common does: WAV, FLAC and MP3 at any
    rate, Ogg at 16 kHz (an MP3 only with its length declared); None when the file needs PyAV."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.frames <= 0 or not (
        info.format in _SOUNDFILE_ANY_RATE or (info.format in _SOUNDFILE_16K and info.samplerate == SAMPLE_RATE)
    ):
        return None
    if info.format == "MP3" and not _mp3_length_is_declared(data):
        return None
    return info


def _decode_with_soundfile(
    data: bytes, info: Any, max_seconds: float, until: float | None
) -> tuple[np.ndarray, bool] | None:
    """libsndfile's path: read (the first `until` seconds, if the file is longer), average the channels,
    resample with soxr, as mistral-common reads audio; and whether that is the whole file. None when the file
    needs PyAV (fewer samples than the header declares, which PyAV then reports)."""
    if info.frames / info.samplerate > max_seconds:
        raise AudioTooLongError(max_seconds, 0.0)
    frames = int(info.frames) if until is None else min(int(info.frames), math.ceil(until * info.samplerate))
    complete = frames == info.frames
    try:
        samples = _read_soundfile(data, info) if complete else _read_soundfile_at_once(data, frames, head_only=True)
    except (sf.LibsndfileError, RuntimeError):
        return None
    return None if samples is None else (resample(samples, info.samplerate, SAMPLE_RATE), complete)


def _read_soundfile(data: bytes, info: Any) -> np.ndarray | None:
    """Mono float32 samples at the file's rate; a long file is read in parts by threads at once (libsndfile
    releases the GIL and seeks exactly in these formats). None if fewer frames than declared are present."""
    frames, channels = int(info.frames), int(info.channels)
    parts = part_count(frames, info.samplerate, workers())
    if parts < 2:
        return _read_soundfile_at_once(data, frames)
    bounds = [frames * i // parts for i in range(parts + 1)]
    out = np.empty(frames, dtype=np.float32)
    try:
        with tempfile.NamedTemporaryFile(suffix="." + info.format.lower(), dir=_scratch_dir(len(data))) as scratch:
            scratch.write(data)  # a real file: libsndfile reads it without calling back into Python
            scratch.flush()

            def read(i: int) -> bool:
                with sf.SoundFile(scratch.name) as f:
                    f.seek(bounds[i])
                    wanted = bounds[i + 1] - bounds[i]
                    if channels == 1:
                        got = f.read(wanted, dtype="float32", out=out[bounds[i] : bounds[i + 1], None]).shape[0]
                    else:
                        block = f.read(wanted, dtype="float32", always_2d=True)
                        got = block.shape[0]
                        out[bounds[i] : bounds[i] + got] = _mono(block)
                    return bool(got == wanted)

            with ThreadPoolExecutor(parts, thread_name_prefix="decode") as pool:
                complete = all(pool.map(read, range(parts)))
    except OSError:  # no room for the scratch copy: read it in one pass from memory
        logger.warning("no room for a scratch copy of the upload; decoding it in one pass")
        return _read_soundfile_at_once(data, frames)
    return out if complete else None


def _read_soundfile_at_once(data: bytes, frames: int, *, head_only: bool = False) -> np.ndarray | None:
    """Mono samples in one pass from memory (only the first `frames` if `head_only`); None if fewer than
    `frames` are present."""
    block, _ = sf.read(io.BytesIO(data), frames=frames if head_only else -1, dtype="float32", always_2d=True)
    return _mono(block) if block.shape[0] >= frames else None


def _mp3_length_is_declared(data: bytes) -> bool:
    """Whether an MP3's Xing/Info header states its frames and bytes, and the bytes reach the end of the file
    (an ID3v1 tag aside). libsndfile reads exactly the frames the header states, or estimates them from the
    first frame's bit rate: two files joined end to end, or a VBR file without the header, would be cut short
    without a word. Such files go to PyAV, which decodes to the last byte."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        start = 10 + (data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]) + (10 if data[5] & 0x10 else 0)
    for tag in (b"Xing", b"Info"):
        at = data.find(tag, start, start + 4096)
        if at >= 0 and len(data) >= at + 16:
            flags = int.from_bytes(data[at + 4 : at + 8], "big")
            stream_bytes = int.from_bytes(data[at + 12 : at + 16], "big")
            return flags & 3 == 3 and 0 <= len(data) - start - stream_bytes <= _ID3V1_BYTES
    return False


def _mono(block: np.ndarray) -> np.ndarray:
    """(frames, channels) to mono by averaging, as mistral-common does."""
    if block.shape[1] == 1:
        return np.ascontiguousarray(block[:, 0])
    return np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))


def _scratch_dir(size: int) -> str | None:
    """Memory-backed /dev/shm where there is one with room for `size` bytes twice over (containers often
    give it 64 MB), else the default temporary directory."""
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return None
    return shm if shutil.disk_usage(shm).free > 2 * size else None


def _check_wav_complete(data: bytes) -> None:
    """Reject a RIFF/WAVE file whose data chunk is shorter than its header declares.

    Both libsndfile and FFmpeg quietly shorten such a file to what is there.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    fmt = data.find(b"fmt ", 12, 4096)
    marker = data.find(b"data", 12, 4096)
    if fmt < 0 or marker < 0 or marker + 8 > len(data) or fmt + 20 > len(data):
        return
    declared = int.from_bytes(data[marker + 4 : marker + 8], "little")
    present = len(data) - (marker + 8)
    byte_rate = int.from_bytes(data[fmt + 16 : fmt + 20], "little")
    if declared in (0, 0xFFFFFFFF) or byte_rate <= 0:  # streaming writers leave the size open
        return
    if present < declared:
        raise AudioDecodeError(
            f"The uploaded file is truncated: its header declares {declared / byte_rate:.1f} s of audio "
            f"but only {present / byte_rate:.1f} s are present."
        )


def _decode_with_pyav(data: bytes, max_seconds: float, until: float | None = None) -> tuple[np.ndarray, bool]:
    """Samples, and whether they are the whole file: decoding stops once `until` seconds are in, if given
    and the header declares the file's duration (the truncation check then waits for the whole decode).
    A file whose length no header states (Ogg, ADTS) is decoded whole: it may be a duration bomb."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise AudioDecodeError(f"The uploaded file is not a decodable audio file ({_ffmpeg_reason(exc)}).") from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("The uploaded file contains no audio stream.")
        stream = container.streams.audio[0]
        expected = _declared_duration(container, stream)
        tolerance = _truncation_tolerance(container, expected) if expected is not None else 0.0
        if expected is None:
            until = None
        elif until is not None and expected - tolerance > max_seconds:
            raise AudioTooLongError(max_seconds, 0.0)  # told by the header, before decoding the whole
        blocks = _BlockResampler()
        decoded = 0.0  # seconds, counted on the decoder's own sample rate as frames arrive
        complete = True
        try:
            for frame in container.decode(stream):
                decoded += frame.samples / frame.sample_rate
                if decoded > max_seconds:
                    raise AudioTooLongError(max_seconds, decoded)
                blocks.write(frame)
                if until is not None and decoded >= until:
                    complete = False
                    break
            samples = blocks.finish()
        except (av.FFmpegError, ValueError) as exc:
            where = f"after {decoded:.1f} s" if decoded else "at the start"
            raise AudioDecodeError(
                f"The uploaded file is truncated or corrupt: decoding failed {where} ({_ffmpeg_reason(exc)})."
            ) from exc
    seconds = samples.shape[0] / SAMPLE_RATE
    if complete and expected is not None and samples.size and seconds < expected - tolerance:
        raise AudioDecodeError(
            f"The uploaded file is truncated: its header declares {expected:.1f} s of audio "
            f"but only {seconds:.1f} s could be decoded."
        )
    return samples, complete


class _BlockResampler:
    """Collects decoded frames in a FIFO, converts them to mono float32 in blocks of ~10 s, and resamples
    each run of one format to 16 kHz with soxr.

    Converting every 1,152-sample MP3 frame on its own costs more than decoding it. A change of format
    mid-stream ends a run and starts a new one.
    """

    BLOCK_SECONDS = 10

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.run: list[np.ndarray] = []
        self.fifo: av.AudioFifo | None = None
        self.converter: av.AudioResampler | None = None
        self.layout: tuple[str, str, int] | None = None

    def write(self, frame: av.AudioFrame) -> None:
        layout = (frame.format.name, frame.layout.name, frame.sample_rate)
        if layout != self.layout:
            self._flush()
            self.fifo = av.AudioFifo()
            self.converter = av.AudioResampler(format="flt", layout="mono", rate=frame.sample_rate)
            self.layout = layout
        assert self.fifo is not None
        frame.pts = None  # the FIFO checks timestamps for gaps; decoders' timestamps may jump
        self.fifo.write(frame)
        block = self.BLOCK_SECONDS * frame.sample_rate
        if self.fifo.samples >= block:
            self._convert(self.fifo.read(block))

    def finish(self) -> np.ndarray:
        self._flush()
        return np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=np.float32)

    def _flush(self) -> None:
        if self.fifo is None or self.converter is None or self.layout is None:
            return
        rest = self.fifo.read()
        if rest is not None:
            self._convert(rest)
        self._convert(None)
        if self.run:
            self.pieces.append(resample(np.concatenate(self.run), self.layout[2], SAMPLE_RATE))
        self.run, self.fifo, self.converter = [], None, None

    def _convert(self, frame: av.AudioFrame | None) -> None:
        assert self.converter is not None
        for out in self.converter.resample(frame):
            self.run.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The duration the file's header states, or None where FFmpeg derives it from the bytes present."""
    if container.format.name in {"ogg", "aac", "wav"}:
        return None  # Ogg's comes from the last page, ADTS's from the bit rate, WAV is checked separately
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    return None


def _truncation_tolerance(container: av.container.InputContainer, declared: float) -> float:
    """How much shorter than declared the audio may be; MP3 durations without a Xing header are estimates."""
    if container.format.name == "mp3":
        return max(_TRUNCATION_TOLERANCE_S, 0.1 * declared)
    return _TRUNCATION_TOLERANCE_S


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().rstrip(".")
