"""Real audio for tests and benchmarks: espeak-ng speech and files encoded with PyAV (FFmpeg)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np

from ..audio.decode import SAMPLE_RATE, decode_audio

# container format, codec, sample rate, channel layout, with a video track
FORMATS: dict[str, tuple[str, str, int, str, bool]] = {
    "mp3": ("mp3", "libmp3lame", 22050, "mono", False),
    "m4a": ("ipod", "aac", 44100, "mono", False),
    "flac": ("flac", "flac", 16000, "mono", False),
    "ogg": ("ogg", "vorbis", 44100, "stereo", False),  # FFmpeg's Vorbis encoder needs two channels
    "opus": ("ogg", "libopus", 48000, "mono", False),
    "webm": ("webm", "libopus", 48000, "mono", False),
    "mp4": ("mp4", "aac", 44100, "mono", True),
    "mov": ("mov", "aac", 44100, "stereo", True),
    "wav": ("wav", "pcm_s16le", 16000, "mono", False),
}


def speak(text: str, *, voice: str = "en", words_per_minute: int = 160) -> np.ndarray:
    """Synthesise speech with espeak-ng, as mono 16 kHz float32."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text], check=True)
        return decode_audio(path.read_bytes(), max_seconds=24 * 3600)


def encode(samples: np.ndarray, extension: str) -> bytes:
    """Encode mono 16 kHz float32 samples as a file of the given kind (see FORMATS)."""
    container_format, codec, rate, layout, with_video = FORMATS[extension]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        video: av.VideoStream | None = None
        if with_video:
            video = container.add_stream("mpeg4", rate=10)
            video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        options = {"strict": "experimental"} if codec == "vorbis" else {}
        stream = cast(av.AudioStream, container.add_stream(codec, rate=rate, layout=layout, options=options))
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(format=stream.codec_context.format, layout=layout, rate=rate)
        frames = resampler.resample(frame) + resampler.resample(None)
        for piece in frames:
            container.mux(stream.encode(piece))
        container.mux(stream.encode(None))
        if video is not None:
            seconds = samples.shape[0] / SAMPLE_RATE
            for i in range(int(seconds * 10) + 1):
                image = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
                image.pts = i
                container.mux(video.encode(image))
            container.mux(video.encode(None))
    return buffer.getvalue()


def silence(seconds: float) -> np.ndarray:
    """Digital silence at 16 kHz."""
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def opus_duration_bomb(hours: float) -> bytes:
    """A small Ogg/Opus file that decodes to `hours` of silence: one encoded packet repeated."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono", options={"frame_duration": "60"})
        frame_samples = 48000 * 60 // 1000
        frame = av.AudioFrame.from_ndarray(np.zeros((1, frame_samples), np.float32), format="flt", layout="mono")
        frame.sample_rate = 48000
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=48000)
        template = None
        for piece in resampler.resample(frame):
            for packet in stream.encode(piece):
                template = bytes(packet)
        if template is None:
            for packet in stream.encode(None):
                template = bytes(packet)
                break
        assert template is not None
        count = int(hours * 3600 * 1000 / 60)
        for i in range(count):
            packet = av.Packet(template)
            packet.stream = stream
            packet.pts = packet.dts = i * frame_samples
            packet.duration = frame_samples
            packet.time_base = Fraction(1, 48000)
            container.mux(packet)
    return buffer.getvalue()
