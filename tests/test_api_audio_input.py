"""Hostile and awkward uploads through a real server, on all three ways audio comes in: the multipart
`file` of transcriptions and translations, chat `input_audio` parts, and lotti's top-level `audio` field."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from voxtral_local.audio.containers import NOT_ACCEPTED

from .audio_cases import ffmpeg, quiet_then_loud, referencing_uploads, sox_pipe_wav, wav_header
from .conftest import FIXTURES

MODEL = "voxtral-tiny"
Send = Callable[[str, bytes], httpx.Response]


def multipart(route: str) -> Send:
    def send(base_url: str, content: bytes) -> httpx.Response:
        return httpx.post(
            f"{base_url}/v1/audio/{route}", files={"file": ("audio.wav", content)}, data={"model": MODEL}, timeout=60
        )

    return send


def input_audio(base_url: str, content: bytes) -> httpx.Response:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(content).decode(), "format": "wav"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": [part]}], "max_tokens": 8}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)


def lotti_audio(base_url: str, content: bytes) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Transcribe this audio."}],
        "audio": base64.b64encode(content).decode(),
        "max_tokens": 8,
    }
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)


INPUTS: dict[str, Send] = {
    "transcriptions file": multipart("transcriptions"),
    "translations file": multipart("translations"),
    "chat input_audio": input_audio,
    "lotti audio": lotti_audio,
}


@pytest.mark.parametrize("way", list(INPUTS))
def test_uploads_referencing_other_media_get_one_fast_400_on_every_input(base_url: str, way: str) -> None:
    messages = set()
    for name, content in referencing_uploads().items():
        started = time.monotonic()
        response = INPUTS[way](base_url, content)
        elapsed = time.monotonic() - started
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_audio", name
        assert elapsed < 2.0, (name, elapsed)  # no port held open, no file followed
        messages.add(error["message"])
    assert messages == {NOT_ACCEPTED}  # nothing tells a file that exists from one that does not
    good = INPUTS[way](base_url, (FIXTURES / "speech.wav").read_bytes())
    assert good.status_code == 200, good.text


def test_an_sdp_upload_opens_no_udp_port(base_url: str) -> None:
    """FFmpeg's SDP demuxer binds the RTP/RTCP ports the description names (5004, 5005) and waits on them."""

    def rtp_ports_bound() -> bool:
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            if Path(table).exists():
                for line in Path(table).read_text().splitlines()[1:]:
                    if line.split()[1].rsplit(":", 1)[1] in ("138C", "138D"):  # local port 5004 or 5005
                        return True
        return False

    assert not rtp_ports_bound()
    sdp = referencing_uploads()["SDP (RTP on UDP)"]
    with ThreadPoolExecutor(1) as pool:
        for way, send in INPUTS.items():
            answer = pool.submit(send, base_url, sdp)
            deadline = time.monotonic() + 3
            while not answer.done() and time.monotonic() < deadline:
                assert not rtp_ports_bound(), way
                time.sleep(0.02)
            assert answer.done(), f"{way}: the request still hangs after 3 s"
            assert answer.result().status_code == 400, way


@pytest.fixture(scope="module")
def awkward_valid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("awkward")
    varied = quiet_then_loud(tmp, 22050, 1)
    vbr = ["-c:a", "libmp3lame", "-q:a", "0", "-write_xing", "0"]
    return {
        "WAV titled 'Sensor data log'": ffmpeg(tmp, "-metadata", "title=Sensor data log", out="t.wav"),
        "WAV from SoX on a pipe": sox_pipe_wav(),
        "VBR MP3 without Xing": ffmpeg(tmp, *vbr, source=varied, out="v.mp3"),
    }


@pytest.mark.parametrize("way", list(INPUTS))
def test_files_other_tools_play_are_accepted(base_url: str, way: str, awkward_valid_files: dict[str, bytes]) -> None:
    for name, content in awkward_valid_files.items():
        response = INPUTS[way](base_url, content)
        assert response.status_code == 200, (name, response.text)


@pytest.mark.parametrize(("rate", "channels", "named"), [(1, 1, "1 Hz"), (16000, 1000, "1000 channels")])
def test_out_of_bounds_headers_are_400_naming_the_value(base_url: str, rate: int, channels: int, named: str) -> None:
    for way, send in INPUTS.items():
        response = send(base_url, wav_header(rate, channels))
        assert response.status_code == 400, way
        error = response.json()["error"]
        assert error["code"] == "invalid_audio" and named in error["message"], way


def long_wav(hours: float) -> bytes:
    """An 8 kHz 8-bit WAV of a tone: 28.8 MB an hour, a few seconds of CPU an hour to decode."""
    rate = 8000
    tone = (np.sin(np.arange(rate * 10) * 0.3) * 0.3).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, np.tile(tone, int(hours * 360)), rate, format="WAV", subtype="PCM_U8")
    return buffer.getvalue()


def decoding_stopped(caplog: pytest.LogCaptureFixture, seconds: float = 60) -> list[str]:
    """The server's "decoding stopped after N s" log lines, once there is one (or `seconds` have passed)."""
    deadline = time.monotonic() + seconds
    stopped: list[str] = []
    while not stopped and time.monotonic() < deadline:
        stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoding stopped after")]
        time.sleep(0.1)
    return stopped


def test_a_client_leaving_stops_the_decoding_of_the_rest_of_its_upload(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The head is decoded, the first chunk streams, the rest of 2.5 hours is being decoded when the client
    goes: that decoding stops where it is (the log says how far it got), not at the end of the file."""
    caplog.set_level(logging.INFO, logger="voxtral_local")
    hours = 2.5
    data = long_wav(hours)
    with httpx.stream(
        "POST",
        f"{base_url}/v1/audio/transcriptions",
        files={"file": ("long.wav", data)},
        data={"model": MODEL, "stream": "true"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # the first words are in: the rest of the file is being decoded now; leave
    stopped = decoding_stopped(caplog)
    assert stopped, "the decoding of the rest of the upload went on after the client left"
    decoded = float(stopped[0].split()[3])
    assert decoded < hours * 3600
    assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200


@pytest.mark.parametrize("route", ["translation", "lotti's audio"])
def test_a_client_leaving_stops_the_decoding_of_its_upload_before_any_answer(
    base_url: str, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    """Translations and chat decode the whole upload before the model starts: a client that gives up while
    that runs (here: a 0.5 s read timeout) stops the decoding too, instead of leaving it to run for nobody.
    (Chat `input_audio` takes the same path, but at most 40 minutes of audio: too little to catch.)"""
    caplog.set_level(logging.INFO, logger="voxtral_local")
    hours = 2.5
    data = long_wav(hours)
    audio = base64.b64encode(data).decode()
    request: dict[str, Any]
    if route == "translation":
        request = {"url": "/v1/audio/translations", "files": {"file": ("long.wav", data)}, "data": {"model": MODEL}}
    else:
        text = [{"role": "user", "content": "Transcribe."}]
        request = {"url": "/v1/chat/completions", "json": {"model": MODEL, "messages": text, "audio": audio}}
    caplog.clear()
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(60, read=0.5)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(**request)
    assert decoding_stopped(caplog), "the decoding went on after the client left"
    assert httpx.get(f"{base_url}/health", timeout=30).status_code == 200
