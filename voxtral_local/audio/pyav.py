"""PyAV's decoding path (FFmpeg bundled in its wheel): every accepted container libsndfile does not read.

The upload is opened with the demuxer its bytes were sniffed as (see audio_containers) and nothing else;
decoded frames are converted to mono float32 and resampled to 16 kHz with soxr in blocks.
"""

from __future__ import annotations

import io
import logging
import threading

import av
import numpy as np

from ..errors import AudioDecodeError, AudioTooLongError, GenerationCancelledError
from .containers import MATROSKA, MP4, Container, open_options
from .headers import DeclaredLength, check_stream
from .resampling import resample

SAMPLE_RATE = 16_000
# Audio this much shorter than its container declares is reported as truncated (codec delay and padding,
# which some headers count and decoders trim, stay well under it).
TRUNCATION_TOLERANCE_S = 1.0

logger = logging.getLogger(__name__)


def stop_if_cancelled(cancel: threading.Event | None, decoded_seconds: float) -> None:
    """Raise GenerationCancelledError if `cancel` is set: the request went away, so decoding stops."""
    if cancel is not None and cancel.is_set():
        logger.info("decoding stopped after %.1f s of audio: the request was cancelled", decoded_seconds)
        raise GenerationCancelledError("The client went away; decoding the upload was stopped.")


def decode_with_pyav(
    data: bytes,
    container: Container,
    max_seconds: float,
    until: float | None = None,
    declared: DeclaredLength | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, bool]:
    """Mono 16 kHz float32 samples of `data`, opened as `container` only, and whether they are the whole
    file: decoding stops once `until` seconds are in, if given and the container states the file's length
    exactly (`declared`, or read here for MP4/MOV, AIFF and Matroska); the truncation check then waits for
    the whole decode. A file whose length nothing states exactly is decoded whole: it may be a duration bomb.

    Raises AudioDecodeError (not openable, no audio stream, out-of-bounds rate or channels, corrupt or
    shorter than declared), AudioTooLongError past `max_seconds`, GenerationCancelledError once `cancel` is
    set (checked between frames).
    """
    try:
        opened = av.open(
            io.BytesIO(data), mode="r", format=container.demuxer, container_options=open_options(container)
        )
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise AudioDecodeError(f"The uploaded file is not a decodable audio file ({ffmpeg_reason(exc)}).") from exc
    with opened:
        if not opened.streams.audio:
            raise AudioDecodeError("The uploaded file contains no audio stream.")
        stream = opened.streams.audio[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for it (a WAV with 0 or 65535 bits a sample...)
            raise AudioDecodeError("The uploaded file's audio is in an encoding that cannot be decoded.")
        check_stream(stream.sample_rate or 0, stream.channels or 0)
        declared = declared or _declared_by_container(container, opened, stream)
        expected = None if declared is None else declared.seconds
        if expected is None:
            until = None
        elif until is not None and expected - TRUNCATION_TOLERANCE_S > max_seconds:
            raise AudioTooLongError(max_seconds, 0.0)  # told by the header, before decoding the whole
        blocks = BlockResampler(cancel)
        decoded = 0.0  # seconds, counted on the decoder's own sample rate as frames arrive
        complete = True
        try:
            for frame in opened.decode(stream):
                stop_if_cancelled(cancel, decoded)
                check_stream(frame.sample_rate, frame.layout.nb_channels)  # a stream may change mid-way
                decoded += frame.samples / frame.sample_rate
                if decoded > max_seconds:
                    raise AudioTooLongError(max_seconds, decoded)
                blocks.write(frame)
                if until is not None and decoded >= until:
                    complete = False
                    break
            samples = blocks.finish()
            stop_if_cancelled(cancel, decoded)  # a cut-short resampling is never used
        except (av.FFmpegError, ValueError) as exc:
            where = f"after {decoded:.1f} s" if decoded else "at the start"
            raise AudioDecodeError(
                f"The uploaded file is truncated or corrupt: decoding failed {where} ({ffmpeg_reason(exc)})."
            ) from exc
    seconds = samples.shape[0] / SAMPLE_RATE
    if complete and declared is not None and samples.size and seconds < declared.seconds - TRUNCATION_TOLERANCE_S:
        raise AudioDecodeError(
            f"The uploaded file is truncated: {declared.what} declares {declared.seconds:.1f} s of audio "
            f"but only {seconds:.1f} s could be decoded."
        )
    return samples, complete


def _declared_by_container(
    container: Container, opened: av.container.InputContainer, stream: av.AudioStream
) -> DeclaredLength | None:
    """The length FFmpeg read from a header that states it exactly: an MP4/MOV's sample tables (a fragmented
    file, whose tables are empty, states none), an AIFF's COMM chunk, a Matroska Segment's Duration."""
    if container is MP4 and stream.frames > 0 and stream.duration and stream.time_base is not None:
        return DeclaredLength("the MP4/MOV sample table", float(stream.duration * stream.time_base))
    if container.demuxer == "aiff" and stream.duration and stream.time_base is not None:
        return DeclaredLength("the AIFF COMM chunk", float(stream.duration * stream.time_base))
    if container is MATROSKA and opened.duration is not None and opened.duration > 0:
        return DeclaredLength("the WebM/Matroska segment info", opened.duration / 1_000_000)
    return None


class BlockResampler:
    """Collects decoded frames in a FIFO, converts them to mono float32 in blocks of ~10 s, and resamples
    each run of one format to 16 kHz with soxr.

    Converting every 1,152-sample MP3 frame on its own costs more than decoding it. A change of format
    mid-stream ends a run and starts a new one.
    """

    BLOCK_SECONDS = 10

    def __init__(self, cancel: threading.Event | None = None) -> None:
        self.cancel = cancel  # handed to the resampler: once set, the result is incomplete (discard it)
        self.pieces: list[np.ndarray] = []
        self.run: list[np.ndarray] = []
        self.fifo: av.AudioFifo | None = None
        self.converter: av.AudioResampler | None = None
        self.layout: tuple[str, str, int] | None = None

    def write(self, frame: av.AudioFrame) -> None:
        """Add one decoded frame (any sample format, layout and rate)."""
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
        """All samples written, mono float32 at 16 kHz."""
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
            self.pieces.append(resample(np.concatenate(self.run), self.layout[2], SAMPLE_RATE, cancel=self.cancel))
        self.run, self.fifo, self.converter = [], None, None

    def _convert(self, frame: av.AudioFrame | None) -> None:
        assert self.converter is not None
        for out in self.converter.resample(frame):
            self.run.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's reason for `exc`, without a trailing full stop."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().rstrip(".")
