"""Subtitles that stay valid whatever the model writes, and chunk joins that respect the script."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from voxtral_local.responses.transcription import cue_lines, to_srt, to_vtt
from voxtral_local.services.joining import join_texts, separator
from voxtral_local.services.streaming import OrderedText
from voxtral_local.services.transcription import Segment
from voxtral_local.testing.audio_files import encode as encode_audio

from .conftest import FIXTURES, running_server
from .test_chunking import speech_with_gaps
from .test_streaming_text import EOS, run_steps, tekken  # noqa: F401 - `tekken` is a fixture

MODEL = "voxtral-tiny"
SRT_TIMING = re.compile(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}")
VTT_TIMING = re.compile(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}")
NASTY = "ab -><&\n\r\t\x00\x0b\u2028\u3000日"
VTT_ESCAPE = re.compile(r"&(?!(?:amp|lt|gt);)")

HOSTILE = [
    "first paragraph\n\nsecond paragraph",
    "\n\n",
    "   \t ",
    "2\n00:00:01,000 --> 00:00:02,000\na fake cue",
    "WEBVTT\n\nNOTE not a comment",
    "NOTE\n\nSTYLE\n::cue { color: red }",
    "x --> y",
    "--->",
    "a-->b--->c---->d",
    "a\r\n\r\nb",
    "a\rb\r\rc",
    "a\u2028\u2029b\x85c\x0b\x0cd\x1c\x1d\x1ee",
    "nul\x00byte",
    "<b>bold</b> & <i>co</i> &amp; 1 < 2 > 0",
    "日本語\n\n中文 \u3000\n\u3000",
    "trailing\n",
    "-- >",
]


def segment(i: int, text: str) -> Segment:
    return Segment(i, i * 30.0, i * 30.0 + 30, text, [], [], 0.0, 0.0, 0.0, False)


def parse_srt(body: str) -> list[tuple[str, list[str]]]:
    """A strict SubRip reader: numbered blocks from 1, a timing line, one or more non-blank text lines, each
    block ended by one blank line; LF only; no text line with '-->'. Returns (timing, lines) per cue."""
    assert "\r" not in body
    if not body:
        return []
    assert body.endswith("\n\n") and not body.endswith("\n\n\n")
    cues = []
    for n, block in enumerate(body[:-2].split("\n\n"), 1):
        number, timing, *lines = block.split("\n")
        assert number == str(n)
        assert SRT_TIMING.fullmatch(timing), timing
        assert lines and all(line.strip() == line and line for line in lines), block
        assert not any("-->" in line for line in lines)
        cues.append((timing, lines))
    return cues


def parse_vtt(body: str) -> list[tuple[str, list[str]]]:
    """A strict WebVTT reader (W3C WebVTT: header, cue blocks of a timing line and non-blank payload lines
    without '-->', each ended by a blank line; '<' and '&' only as the escapes written for text). Returns
    (timing, unescaped lines) per cue."""
    assert "\r" not in body and "\x00" not in body
    assert body.startswith("WEBVTT\n\n")
    rest = body[len("WEBVTT\n\n") :]
    if not rest:
        return []
    assert rest.endswith("\n\n") and not rest.endswith("\n\n\n")
    cues = []
    for block in rest[:-2].split("\n\n"):
        timing, *lines = block.split("\n")
        assert VTT_TIMING.fullmatch(timing), timing
        assert lines and all(line.strip() == line and line for line in lines), block
        for line in lines:
            assert "-->" not in line and "<" not in line and not VTT_ESCAPE.search(line), line
        cues.append((timing, [html.unescape(line) for line in lines]))
    return cues


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_segment_texts_keep_srt_and_vtt_valid(text: str) -> None:
    segments = [segment(0, "before"), segment(1, text), segment(2, "after")]
    expected = [["before"], *([cue_lines(text)] if cue_lines(text) else []), ["after"]]
    assert [lines for _, lines in parse_srt(to_srt(segments))] == expected
    assert [lines for _, lines in parse_vtt(to_vtt(segments))] == expected
    # what is kept is the text's visible words, in order
    visible = re.sub(r"\s+|-+>|\x00", "", text)
    kept = re.sub(r"\s+|-+>|\ufffd", "", "".join(cue_lines(text)))
    assert kept == visible.replace("\x00", "")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list(NASTY)), max_size=30), max_size=5))
def test_any_segment_texts_give_valid_subtitles(texts: list[str]) -> None:
    segments = [segment(i, text) for i, text in enumerate(texts)]
    cues = [lines for text in texts if (lines := cue_lines(text))]
    assert [lines for _, lines in parse_srt(to_srt(segments))] == cues
    assert [lines for _, lines in parse_vtt(to_vtt(segments))] == cues


@pytest.mark.parametrize("response_format", ["srt", "vtt"])
@pytest.mark.parametrize("extension", ["wav", "mp3", "ogg"])
def test_subtitles_of_real_answers_parse(base_url: str, response_format: str, extension: str) -> None:
    """The tiny model's random text holds blank lines and markup: every answer still parses."""
    parse = parse_srt if response_format == "srt" else parse_vtt
    files = {"file": (f"speech.{extension}", (FIXTURES / f"speech.{extension}").read_bytes())}
    for path in ("transcriptions", "translations"):
        response = httpx.post(
            f"{base_url}/v1/audio/{path}",
            files=files,
            data={"model": MODEL, "response_format": response_format},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        verbose = httpx.post(
            f"{base_url}/v1/audio/{path}",
            files=files,
            data={"model": MODEL, "response_format": "verbose_json"},
            timeout=120,
        ).json()
        expected = [lines for s in verbose["segments"] if (lines := cue_lines(s["text"]))]
        assert [lines for _, lines in parse(response.text)] == expected


# ---- joining chunks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "language", "joined"),
    [
        (["Hello there.", "General Kenobi."], "en", "Hello there. General Kenobi."),
        (["Hello there.", "General Kenobi."], None, "Hello there. General Kenobi."),
        (["今天天气很好", "我们去公园吧。"], "zh", "今天天气很好我们去公园吧。"),
        (["今天天气很好", "我们去公园吧。"], None, "今天天气很好我们去公园吧。"),
        (["今日は", "いい天気ですね。"], "ja", "今日はいい天気ですね。"),
        (["カタカナ", "テキスト"], None, "カタカナテキスト"),
        (["สวัสดีครับ", "ยินดีที่ได้รู้จัก"], "th", "สวัสดีครับยินดีที่ได้รู้จัก"),
        (["ສະບາຍດີ", "ຂອບໃຈ"], None, "ສະບາຍດີຂອບໃຈ"),
        (["សួស្តី", "អរគុណ"], "km", "សួស្តីអរគុណ"),
        (["မင်္ဂလာပါ", "ကျေးဇူးတင်ပါတယ်"], "my", "မင်္ဂလာပါကျေးဇူးတင်ပါတယ်"),
        (["안녕하세요", "반갑습니다"], "ko", "안녕하세요 반갑습니다"),  # Korean is written with spaces
        (["Привет", "мир"], "ru", "Привет мир"),
        (["我们用", "Python", "写代码"], "zh", "我们用Python写代码"),
        (["版本", "3", "5"], "zh", "版本3 5"),  # two Latin words or numbers keep their space
        (["End of a sentence.", "次の文"], None, "End of a sentence.次の文"),
        (["第一段，", "", "第三段"], None, "第一段，第三段"),  # empty chunks add nothing
        (["one", "", "three"], "en", "one three"),
        ([], "zh", ""),
    ],
)
def test_chunks_join_with_a_space_only_where_the_script_uses_spaces(
    texts: list[str], language: str | None, joined: str
) -> None:
    assert join_texts(texts, language) == joined


def test_fullwidth_punctuation_and_ideographs_take_no_space() -> None:
    for before, after in [("。", "A"), ("a", "、"), ("」", "b"), ("！", "x"), ("𠀀", "z")]:
        assert separator(before, after, None) == ""
    assert separator(".", "A", None) == " "


@pytest.mark.parametrize(
    ("rows", "language"),
    [
        (["今天天气很好，", "我们去公园吧。", "然后回家"], "zh"),
        (["今日はいい天気", "ですね"], None),
        (["First chunk.", "Second chunk."], "en"),
        (["Python", "代码", "Code"], "zh"),
    ],
)
def test_streamed_rows_join_as_the_plain_text_does(
    tekken: tuple[Callable[[str], list[int]], Callable[[list[int]], str]],  # noqa: F811
    rows: list[str],
    language: str | None,
) -> None:
    encode, decode = tekken
    tokens = [encode(row) for row in rows]
    assembler = OrderedText(decode, eos_token_id=EOS, caps=[100] * len(rows), language=language)
    deltas = [d for step in run_steps(assembler, tokens) for d in step]
    finals = [decode(t).strip() for t in tokens]
    deltas += assembler.finish(finals)
    assert "".join(deltas) == join_texts(finals, language)


def test_a_long_chinese_transcript_has_no_space_at_chunk_boundaries(base_url: str, speech: np.ndarray) -> None:
    """Two chunks, language zh: the plain text joins them without a space, and the stream says the same."""
    samples, _ = speech_with_gaps(speech, minutes=0.75)
    audio = encode_audio(samples, "wav")
    files = {"file": ("long.wav", audio, "audio/wav")}
    data = {"model": MODEL, "language": "zh", "response_format": "verbose_json"}
    verbose = httpx.post(f"{base_url}/v1/audio/transcriptions", files=files, data=data, timeout=120).json()
    texts = [s["text"] for s in verbose["segments"]]
    assert len(texts) == 2 and all(texts)
    assert verbose["text"] == texts[0] + separator(texts[0][-1], texts[1][0], "zh") + texts[1]
    streamed = ""
    with httpx.stream(
        "POST",
        f"{base_url}/v1/audio/transcriptions",
        files=files,
        data={"model": MODEL, "language": "zh", "stream": "true"},
        timeout=120,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"transcript.text.delta"' in line:
                streamed += json.loads(line[6:])["delta"]
    assert streamed == verbose["text"]


# ---- reporting the token cap -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_url(tiny_model_dir: Path) -> Iterator[str]:
    """A server whose chunks may generate only ceil(0.5 × seconds) + 32 tokens."""
    with running_server(model=str(tiny_model_dir), max_tokens_per_audio_second=0.5) as url:
        yield url


def done_event(url: str, model: str, audio: bytes, **data: str) -> dict[str, Any]:
    with httpx.stream(
        "POST",
        f"{url}/v1/audio/transcriptions",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": model, "stream": "true", **data},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert "x-voxtral-truncated-segments" not in response.headers  # sent before anything was generated
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "transcript.text.done"
    return dict(events[-1])


def test_a_stream_that_hits_the_cap_says_so_in_its_done_event(capped_url: str, speech: np.ndarray) -> None:
    samples, _ = speech_with_gaps(speech, minutes=0.75)  # two chunks, both capped
    audio = encode_audio(samples, "wav")
    done = done_event(capped_url, "voxtral-tiny", audio)
    assert done["truncated_segments"] == [0, 1]
    plain = httpx.post(
        f"{capped_url}/v1/audio/transcriptions",
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": MODEL, "response_format": "text"},
        timeout=120,
    )
    assert plain.headers["x-voxtral-truncated-segments"] == "0,1"
    assert done["text"] + "\n" == plain.text
    # the OpenAI SDK keeps the extension field on its typed event
    client = OpenAI(base_url=f"{capped_url}/v1", api_key="x", max_retries=0, timeout=120)
    events = list(client.audio.transcriptions.create(model=MODEL, file=("s.wav", audio), stream=True))
    assert getattr(events[-1], "truncated_segments", None) == [0, 1]


def test_a_stream_that_ends_by_itself_reports_no_truncation(silent_model_dir: Path) -> None:
    with running_server(model=str(silent_model_dir), max_tokens_per_audio_second=0.5) as url:
        done = done_event(url, "voxtral-silent", (FIXTURES / "speech.wav").read_bytes())
    assert "truncated_segments" not in done


def test_chat_streams_that_hit_the_cap_finish_with_length(capped_url: str) -> None:
    client = OpenAI(base_url=f"{capped_url}/v1", api_key="x", max_retries=0, timeout=120)
    audio = base64.b64encode((FIXTURES / "speech.wav").read_bytes()).decode()
    lotti = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Transcribe."}],
            stream=True,
            extra_body={"audio": audio},
        )
    )
    assert lotti[-1].choices[0].finish_reason == "length"
    message: Any = {
        "role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}],
    }
    chunks = list(client.chat.completions.create(model=MODEL, messages=[message], stream=True, max_tokens=5))
    assert chunks[-1].choices[0].finish_reason == "length"
