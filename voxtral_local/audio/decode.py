"""Decode uploaded bytes to mono 16 kHz float32, stopping as soon as the duration limit is passed.

The container is first told from the upload's own bytes against an allow-list (audio_containers), and what
its headers state is checked before decoding (audio_headers). libsndfile (soundfile) then reads WAV, FLAC and
MP3 and soxr resamples them, as mistral-common's own audio path does; long files are read and resampled in
parallel parts. PyAV (FFmpeg bundled in its wheel, audio_pyav) decodes every other accepted container and
codec, with only the sniffed demuxer allowed. Nothing here shells out to an ffmpeg binary.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import soundfile as sf

from ..errors import AudioDecodeError, AudioTooLongError
from .containers import ADTS, FLAC, MP3, Container, id3v2_end, sniff, without_trailing_tags
from .headers import (
    DeclaredLength,
    check_header_bounds,
    check_stream,
    check_wav_data,
    flac_declared,
    mp3_declared,
)
from .pyav import SAMPLE_RATE, decode_with_pyav, stop_if_cancelled
from .resampling import part_count, resample, workers

__all__ = ["SAMPLE_RATE", "decode_audio", "decode_head", "duration_seconds"]
# libsndfile reads WAV, FLAC and MP3 at any rate (exact seeking, so long files are read in parallel parts),
# and Ogg only at 16 kHz (Opus' duration is a claim of its last page: PyAV checks it while decoding).
_SOUNDFILE_16K_ONLY = frozenset({"OGG"})
# Frames libsndfile reads between two looks at the cancel event (about 20 s at 48 kHz).
_READ_BLOCK_FRAMES = 1 << 20
# Bytes after the stream an MP3's Xing/Info header counts that may remain once tags are stripped (padding).
_MP3_SLACK_BYTES = 128

logger = logging.getLogger(__name__)


def decode_audio(data: bytes, *, max_seconds: float, cancel: threading.Event | None = None) -> np.ndarray:
    """Decode a whole audio (or video) file to mono float32 samples at 16 kHz.

    Raises AudioDecodeError for empty, unaccepted, truncated or undecodable input, or a stream outside the
    sane bounds (audio_headers.check_stream); AudioTooLongError as soon as more than `max_seconds` have been
    decoded; GenerationCancelledError once `cancel` is set (checked between frames and blocks).
    """
    samples, _ = _decode(data, max_seconds, until=None, cancel=cancel)
    return samples


def decode_head(
    data: bytes, *, seconds: float, max_seconds: float, cancel: threading.Event | None = None
) -> tuple[np.ndarray, bool]:
    """The first `seconds` of a file, decoded as `decode_audio` decodes them, and whether that is all of it.

    Only the head is decoded, so only what shows there is checked: an empty, unaccepted or undecodable file,
    out-of-bounds stream parameters, and a header that declares more than `max_seconds`. A file no longer than
    `seconds`, or one whose header does not state its length exactly, is decoded (and checked) whole, as
    `decode_audio` does; of a longer one, decode the whole with `decode_audio` to check the rest.
    """
    return _decode(data, max_seconds, until=seconds, cancel=cancel)


def _decode(
    data: bytes, max_seconds: float, until: float | None, cancel: threading.Event | None
) -> tuple[np.ndarray, bool]:
    """Samples (the first `until` seconds, if given) and whether they are the whole file: the container is
    sniffed (anything not accepted is refused here), then libsndfile's path where it applies (see
    `_soundfile_info`), else PyAV's with the sniffed demuxer only."""
    if not data:
        raise AudioDecodeError("The uploaded file is empty (0 bytes).")
    container = sniff(data)
    declared: DeclaredLength | None = None
    if container in (MP3, ADTS):
        data = without_trailing_tags(data)
    if container is MP3:
        mp3 = mp3_declared(data)
        declared = None if mp3 is None else mp3[0]
    elif container is FLAC:
        declared = flac_declared(data)
    check_header_bounds(data)
    check_wav_data(data)
    info = _soundfile_info(data, container)
    read = None if info is None else _decode_with_soundfile(data, info, max_seconds, until, cancel)
    if read is None:
        read = decode_with_pyav(data, container, max_seconds, until, declared, cancel)
    samples, complete = read
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


def _soundfile_info(data: bytes, container: Container) -> Any | None:
    """libsndfile's description of a file it reads the way mistral-common does: WAV, FLAC and MP3 at any
    rate, Ogg at 16 kHz (an MP3 only with its length declared), each only when libsndfile reads it as the
    container its bytes were sniffed as; None when the file needs PyAV. Raises AudioDecodeError for a sample
    rate or channel count out of bounds."""
    if container.soundfile is None:
        return None
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.format != container.soundfile or info.frames <= 0:
        return None
    check_stream(info.samplerate, info.channels)
    if info.format in _SOUNDFILE_16K_ONLY and info.samplerate != SAMPLE_RATE:
        return None
    if container is MP3 and not _mp3_length_is_declared(data):
        return None
    return info


def _decode_with_soundfile(
    data: bytes, info: Any, max_seconds: float, until: float | None, cancel: threading.Event | None
) -> tuple[np.ndarray, bool] | None:
    """libsndfile's path: read (the first `until` seconds, if the file is longer), average the channels,
    resample with soxr, as mistral-common reads audio; and whether that is the whole file. None when the file
    needs PyAV (fewer samples than the header declares, which PyAV then reports)."""
    if info.frames / info.samplerate > max_seconds:
        raise AudioTooLongError(max_seconds, 0.0)
    frames = int(info.frames) if until is None else min(int(info.frames), math.ceil(until * info.samplerate))
    complete = frames == info.frames
    try:
        if complete:
            samples = _read_soundfile(data, info, cancel)
        else:
            samples = _read_soundfile_at_once(data, info, frames, cancel)
    except (sf.LibsndfileError, RuntimeError):
        return None
    if samples is None:
        return None
    stop_if_cancelled(cancel, frames / info.samplerate)
    resampled = resample(samples, info.samplerate, SAMPLE_RATE, cancel=cancel)
    stop_if_cancelled(cancel, frames / info.samplerate)  # a cut-short resampling is never used
    return resampled, complete


def _read_soundfile(data: bytes, info: Any, cancel: threading.Event | None) -> np.ndarray | None:
    """Mono float32 samples at the file's rate; a long file is read in parts by threads at once (libsndfile
    releases the GIL and seeks exactly in these formats). None if fewer frames than declared are present."""
    frames = int(info.frames)
    parts = part_count(frames, info.samplerate, workers())
    if parts < 2:
        return _read_soundfile_at_once(data, info, frames, cancel)
    bounds = [frames * i // parts for i in range(parts + 1)]
    out = np.empty(frames, dtype=np.float32)
    try:
        with tempfile.NamedTemporaryFile(suffix="." + info.format.lower(), dir=_scratch_dir(len(data))) as scratch:
            scratch.write(data)  # a real file: libsndfile reads it without calling back into Python
            scratch.flush()

            def read(i: int) -> int:
                with sf.SoundFile(scratch.name) as f:
                    f.seek(bounds[i])
                    return _read_into(f, out, bounds[i], bounds[i + 1], cancel)

            with ThreadPoolExecutor(parts, thread_name_prefix="decode") as pool:
                got = list(pool.map(read, range(parts)))
    except OSError:  # no room for the scratch copy: read it in one pass from memory
        logger.warning("no room for a scratch copy of the upload; decoding it in one pass")
        return _read_soundfile_at_once(data, info, frames, cancel)
    stop_if_cancelled(cancel, sum(got) / info.samplerate)
    return out if got == [bounds[i + 1] - bounds[i] for i in range(parts)] else None


def _read_soundfile_at_once(data: bytes, info: Any, frames: int, cancel: threading.Event | None) -> np.ndarray | None:
    """The first `frames` mono samples in one pass from memory; None if fewer are present."""
    out = np.empty(frames, dtype=np.float32)
    with sf.SoundFile(io.BytesIO(data)) as f:
        got = _read_into(f, out, 0, frames, cancel)
    stop_if_cancelled(cancel, got / info.samplerate)
    return out if got == frames else None


def _read_into(f: sf.SoundFile, out: np.ndarray, begin: int, end: int, cancel: threading.Event | None) -> int:
    """Read frames `begin` to `end` of `f` (positioned at `begin`) as mono into `out[begin:end]`, in blocks,
    stopping early if the file ends or `cancel` is set; the number of frames read."""
    pos = begin
    while pos < end and not (cancel is not None and cancel.is_set()):
        wanted = min(_READ_BLOCK_FRAMES, end - pos)
        if f.channels == 1:
            got = f.read(wanted, dtype="float32", out=out[pos : pos + wanted, None]).shape[0]
        else:
            block = f.read(wanted, dtype="float32", always_2d=True)
            got = block.shape[0]
            out[pos : pos + got] = _mono(block)
        pos += got
        if got < wanted:
            break
    return pos - begin


def _mp3_length_is_declared(data: bytes) -> bool:
    """Whether an MP3's Xing/Info or VBRI header states its frames and bytes, and the bytes reach the end of
    the file (`data` is without trailing tags). libsndfile reads exactly the frames the header states, or
    estimates them from the first frame's bit rate: two files joined end to end, or a VBR file without the
    header, would be cut short without a word. Such files go to PyAV, which decodes to the last byte."""
    declared = mp3_declared(data)
    if declared is None or declared[1] is None:
        return False
    return 0 <= len(data) - id3v2_end(data) - declared[1] <= _MP3_SLACK_BYTES


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
