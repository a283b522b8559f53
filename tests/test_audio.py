"""Decoding real files of every supported kind, and rejecting bad ones before they reach the model."""

from __future__ import annotations

import numpy as np
import pytest

from voxtral_local.audio.decode import SAMPLE_RATE, decode_audio
from voxtral_local.errors import AudioDecodeError, AudioTooLongError
from voxtral_local.testing.audio_files import encode, opus_duration_bomb, silence

from .conftest import FIXTURES, FORMATS


@pytest.mark.parametrize("extension", FORMATS)
def test_every_format_decodes_to_mono_16k_of_the_right_length(extension: str, speech: np.ndarray) -> None:
    samples = decode_audio((FIXTURES / f"speech.{extension}").read_bytes(), max_seconds=60)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.shape[0] - speech.shape[0]) / SAMPLE_RATE < 0.1  # codec delay/padding only
    assert np.sqrt(np.mean(samples**2)) > 0.01  # speech, not silence


def test_decoded_speech_matches_the_original_waveform(speech: np.ndarray) -> None:
    flac = decode_audio((FIXTURES / "speech.flac").read_bytes(), max_seconds=60)
    n = min(flac.shape[0], speech.shape[0])
    assert np.corrcoef(flac[:n], speech[:n])[0, 1] > 0.99


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not audio at all" * 100, "not a decodable audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a decodable audio file"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(AudioDecodeError, match=message):
        decode_audio(data, max_seconds=60)


@pytest.mark.parametrize("extension", ["wav", "flac", "m4a", "mp3", "webm", "mp4"])
def test_truncated_files_are_rejected(extension: str) -> None:
    data = (FIXTURES / f"speech.{extension}").read_bytes()
    with pytest.raises(AudioDecodeError, match=r"truncated|not a decodable"):
        decode_audio(data[: len(data) // 2], max_seconds=60)


def test_a_video_without_audio_is_rejected() -> None:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 16, 16, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(buffer.getvalue(), max_seconds=60)


def test_duration_limit_stops_decoding_early_on_a_small_opus_bomb() -> None:
    bomb = opus_duration_bomb(hours=4)
    assert len(bomb) < 4 * 1024 * 1024  # small upload, hours of audio
    with pytest.raises(AudioTooLongError) as info:
        decode_audio(bomb, max_seconds=120)
    # decoding stopped just past the limit, not after four hours
    assert 120 < info.value.decoded_seconds < 125


def test_duration_limit_applies_to_the_soundfile_fast_path_before_reading() -> None:
    wav = encode(silence(10), "wav")
    with pytest.raises(AudioTooLongError) as info:
        decode_audio(wav, max_seconds=5)
    assert info.value.decoded_seconds == 0.0


def test_audio_exactly_at_the_limit_is_accepted() -> None:
    samples = decode_audio(encode(silence(5), "flac"), max_seconds=5)
    assert samples.shape[0] == 5 * SAMPLE_RATE


def test_block_resampler_survives_a_format_change_mid_stream() -> None:
    import av

    from voxtral_local.audio.pyav import BlockResampler

    blocks = BlockResampler()
    formats = [(22050, "mono", 1, 12.5), (44100, "stereo", 2, 3.0), (8000, "mono", 1, 1.0)]
    for rate, layout, channels, seconds in formats:
        tone = np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 440 / rate).astype(np.float32) * 0.5
        for piece in np.array_split(tone, max(1, int(seconds * 10))):  # 100 ms frames
            planes = np.repeat(piece.reshape(1, -1), channels, axis=0)
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            frame.sample_rate = rate
            blocks.write(frame)
    samples = blocks.finish()
    assert abs(samples.shape[0] / SAMPLE_RATE - 16.5) < 0.05
    # the tone survives; FFmpeg downmixes two identical 0.5 channels at -3 dB each, to 0.707
    assert 0.45 < np.abs(samples).max() < 0.75


@pytest.mark.parametrize(("rate", "seconds"), [(22050, 150.3), (44100, 61.7), (48000, 200.0), (8000, 130.1)])
def test_resampling_in_parallel_parts_equals_one_pass(rate: int, seconds: float) -> None:
    import soxr

    from voxtral_local.audio.resampling import resample

    rng = np.random.default_rng(rate)
    samples = (rng.standard_normal(int(rate * seconds)) * 0.2).astype(np.float32)
    one_pass = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    parts = resample(samples, rate, SAMPLE_RATE, parts=3)
    assert parts.dtype == np.float32 and parts.shape == one_pass.shape
    assert np.abs(parts - one_pass).max() < 1e-5  # the joins are seamless, not just close on average


def long_speech(speech: np.ndarray, seconds: int) -> np.ndarray:
    unit = np.concatenate([speech, silence(0.4)])
    return np.tile(unit, seconds * SAMPLE_RATE // unit.shape[0] + 1)[: seconds * SAMPLE_RATE]


def stereo_wav_44k(samples: np.ndarray) -> bytes:
    """A 44.1 kHz stereo WAV whose channels differ (left: the speech, right: half of it, delayed)."""
    import io

    import soundfile as sf
    import soxr

    left = soxr.resample(samples, SAMPLE_RATE, 44100)
    right = np.concatenate([np.zeros(441, np.float32), left[:-441] * 0.5])
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([left, right], axis=1), 44100, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["mp3", "flac", "stereo 44.1 kHz wav"])
def test_a_long_file_read_in_parallel_parts_equals_one_pass(
    kind: str, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What mistral-common does (libsndfile read, channel mean, soxr HQ), whatever the number of parts."""
    import io

    import soundfile as sf
    import soxr

    import voxtral_local.audio.decode

    audio = long_speech(speech, 190)
    data = stereo_wav_44k(audio) if kind.endswith("wav") else encode(audio, kind)
    block, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    one_pass = soxr.resample(block.mean(axis=1), rate, SAMPLE_RATE, quality="HQ")

    def no_pyav(*args: object) -> tuple[np.ndarray, bool]:
        raise AssertionError("the libsndfile path gave up and handed the file to PyAV")

    monkeypatch.setattr(voxtral_local.audio.decode, "decode_with_pyav", no_pyav)
    for parts in (1, 3):
        monkeypatch.setattr(voxtral_local.audio.decode, "workers", lambda parts=parts: parts)
        samples = decode_audio(data, max_seconds=600)
        assert samples.shape == one_pass.shape
        assert np.abs(samples - one_pass).max() < 1e-5


def test_a_truncated_long_mp3_read_in_parts_is_rejected(speech: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    import voxtral_local.audio.decode

    monkeypatch.setattr(voxtral_local.audio.decode, "workers", lambda: 3)
    data = encode(long_speech(speech, 190), "mp3")
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(data[: len(data) * 2 // 3], max_seconds=600)


def test_two_mp3_files_joined_end_to_end_are_not_cut_to_the_first(speech: np.ndarray) -> None:
    """libsndfile would read only the frames the first file's header declares; such a file goes to PyAV."""
    first, second = encode(long_speech(speech, 70), "mp3"), encode(long_speech(speech, 70), "mp3")
    with pytest.raises(AudioDecodeError, match="corrupt"):  # FFmpeg stops at the second file's header
        decode_audio(first + second, max_seconds=600)


def test_an_mp3_without_a_length_header_is_decoded_to_its_end(speech: np.ndarray) -> None:
    import io

    import av

    data = encode(long_speech(speech, 65), "mp3")
    with av.open(io.BytesIO(data), mode="r") as container:  # the MPEG frames alone: no ID3, no Xing/Info
        bare = b"".join(bytes(p) for p in container.demux(audio=0) if p.size)
    assert b"Info" not in bare[:4096] and b"Xing" not in bare[:4096] and len(bare) < len(data)
    samples = decode_audio(bare, max_seconds=600)
    assert abs(samples.shape[0] / SAMPLE_RATE - 65) < 0.2


def test_a_long_file_still_decodes_when_no_scratch_copy_can_be_written(
    speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (or a container's small /dev/shm) costs the parallel read, not the request."""
    import errno
    import tempfile

    import voxtral_local.audio.decode

    data = encode(long_speech(speech, 130), "flac")
    expected = decode_audio(data, max_seconds=600)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(voxtral_local.audio.decode, "workers", lambda: 2)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", disk_full)
    samples = decode_audio(data, max_seconds=600)
    assert samples.shape == expected.shape and np.abs(samples - expected).max() < 1e-5
