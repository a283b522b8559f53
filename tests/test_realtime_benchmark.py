"""scripts/benchmark.py --realtime: its delay arithmetic on recorded events, and a run end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from realtime_benchmark import SessionRecord, measure  # noqa: E402


def delta(audio_end_ms: int, item: str = "item_1") -> dict[str, object]:
    return {"type": "conversation.item.input_audio_transcription.delta", "item_id": item, "delta": "a",
            "audio_end_ms": audio_end_ms}  # fmt: skip


def test_word_delay_counts_from_when_the_decoded_audio_was_sent_plus_the_model_delay() -> None:
    record = SessionRecord(piece_ms=100, sent_at=[10.0, 10.1, 10.2, 10.3])
    record.events = [
        (10.25, delta(200)),  # audio up to 200 ms was sent at 10.1 (piece 1): 0.15 s later, + 0.48 s delay
        (10.50, delta(400)),  # up to 400 ms: piece 3, sent at 10.3
        (10.60, {"type": "input_audio_buffer.speech_stopped", "item_id": "item_1", "audio_end_ms": 400}),
        (10.70, {"type": "input_audio_buffer.committed", "item_id": "item_1"}),
        (10.90, {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1",
                 "transcript": "aa"}),
    ]  # fmt: skip
    row = measure([record], delay_s=0.48, slack_s=1.0)
    assert row["deltas"] == 2 and row["utterances"] == 1
    assert row["word_delay_p50_s"] == pytest.approx((0.63 + 0.68) / 2, abs=1e-3)
    assert row["completed_delay_p50_s"] == pytest.approx(0.6, abs=1e-3)
    assert row["real_time"] is True


def test_a_behind_event_or_a_late_p99_is_not_real_time() -> None:
    record = SessionRecord(piece_ms=100, sent_at=[0.0, 0.1])
    record.events = [(0.2, delta(100)), (0.3, {"type": "error", "error": {"code": "behind_real_time"}})]
    assert measure([record], delay_s=0.0, slack_s=1.0)["real_time"] is False
    late = SessionRecord(piece_ms=100, sent_at=[0.0, 0.1], events=[(5.0, delta(100))])
    row = measure([late], delay_s=0.0, slack_s=1.0)
    assert row["word_delay_p99_s"] == pytest.approx(5.0) and row["real_time"] is False


@pytest.mark.slow  # a server process and several seconds of paced audio
def test_the_realtime_mode_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "realtime.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--realtime", "--preset", "tiny",
         "--sessions", "1,2", "--seconds", "4", "--json", str(out)],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert [r["sessions"] for r in report["rows"]] == [1, 2]
    assert report["model_delay_s"] > 0
    for row in report["rows"]:
        assert row["utterances"] >= 1 and row["deltas"] >= 1 and row["word_delay_p50_s"] is not None
