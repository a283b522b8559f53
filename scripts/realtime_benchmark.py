#!/usr/bin/env python3
"""Realtime benchmark: N simulated microphones talking to `/v1/realtime` at real-time pace.

  scripts/benchmark.py --realtime [--preset tiny|small] [--model DIR] [--standard] [--sessions 1,2,4]
                                  [--seconds 20] [--piece-ms 100] [--json FILE]
  (or scripts/realtime_benchmark.py with the same options)

One server process (`python -m voxtral_local`, the model preloaded) on a loopback port serves a random-weight
realtime checkpoint of `--preset` (`tiny`: the test model; `small`: a CPU-sized model of the same structure,
`voxtral_local/testing/tiny_realtime.py`), or `--model DIR`; `--standard` serves the standard (Mini-3B-shaped)
preset instead, whose utterances the batched engine transcribes when they end. For each N in `--sessions`, N
WebSocket clients connect at once and each sends `--seconds` of real speech (espeak-ng sentences with pauses,
24 kHz PCM16 as OpenAI clients send) in `--piece-ms` pieces paced by the wall clock, with `server_vad` turn
detection, then a second of silence, and waits for every utterance's `completed` event.

Figures per N (all sessions pooled):
- word delay (p50/p99): for each delta, its arrival time minus the time the audio it was decoded up to
  (`audio_end_ms`) was sent, plus the model's delay (the words in a delta were spoken up to that long before
  `audio_end_ms`). For a standard model the delay is 0 and `audio_end_ms` is the utterance's end: the figure is
  then the delay of an utterance's last word.
- completed delay (p50/p99): an utterance's `completed` minus the time its last audio was sent.
- behind: `behind_real_time` error events; errors: any other error events.
- real time: no `behind_real_time`, no other error, and the p99 word delay within `--slack-s` (1 s) of the
  model's delay. The report names the most sessions that stayed real time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from benchmark import TEXT  # noqa: E402
from scale_out_benchmark import build_checkpoint, cpu_count, ram_gib, start_server, stop_all, wait_ready  # noqa: E402

SERVED_NAME = "bench-realtime"
SEND_RATE = 24000  # Hz: what OpenAI's clients send
DRAIN_TIMEOUT_S = 120.0  # after the audio ends, how long a session waits for its last `completed`
QUIET_S = 10.0  # ... or for any event at all


@dataclass
class SessionRecord:
    """What one simulated microphone saw: the wall time each piece of audio was sent, and each event."""

    piece_ms: int
    sent_at: list[float] = field(default_factory=list)  # wall time of piece i (audio [i*piece_ms, (i+1)*piece_ms))
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def sent_time(self, audio_ms: float) -> float | None:
        """When the audio up to `audio_ms` (session time) had been sent; None beyond what was sent."""
        index = max(0, math.ceil(audio_ms / self.piece_ms) - 1)
        return self.sent_at[index] if index < len(self.sent_at) else None


def speech_pcm16(seconds: float) -> bytes:
    """`seconds` of espeak-ng sentences with pauses (the test fixture without espeak-ng), then 1 s of silence,
    as 24 kHz PCM16 little-endian mono."""
    from voxtral_local.audio.decode import SAMPLE_RATE, decode_audio
    from voxtral_local.audio.resampling import resample
    from voxtral_local.testing.audio_files import silence, speak

    clips = []
    for sentence in TEXT.split(". "):
        try:
            clips.append(speak(sentence))
        except RuntimeError:
            clips = [decode_audio((ROOT / "tests" / "fixtures" / "speech.wav").read_bytes(), max_seconds=60)]
            break
        clips.append(silence(0.8))
    unit = np.concatenate(clips)
    audio = np.tile(unit, int(seconds * SAMPLE_RATE) // unit.shape[0] + 1)[: int(seconds * SAMPLE_RATE)]
    audio = np.concatenate([audio, silence(1.0)])
    out = resample(audio, SAMPLE_RATE, SEND_RATE)
    return (np.clip(out, -1, 1) * 32767).astype("<i2").tobytes()


async def microphone(url: str, pcm: bytes, piece_ms: int, record: SessionRecord) -> None:
    """One client: session update, the audio at real-time pace, then wait for every utterance's `completed`."""
    import websockets

    piece_bytes = SEND_RATE * 2 * piece_ms // 1000
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    async with websockets.connect(ws_url, max_size=None) as ws:
        update = {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": SERVED_NAME},
                "turn_detection": {"type": "server_vad"},
            },
        }
        await ws.send(json.dumps(update))
        done = asyncio.Event()
        last_event = [time.perf_counter()]

        async def receive() -> None:
            async for message in ws:
                now = time.perf_counter()
                event = json.loads(message)
                record.events.append((now, event))
                last_event[0] = now
                if done.is_set() and _settled(record):
                    return

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for i, offset in enumerate(range(0, len(pcm), piece_bytes)):
            await asyncio.sleep(max(0.0, start + i * piece_ms / 1000 - time.perf_counter()))
            chunk = base64.b64encode(pcm[offset : offset + piece_bytes]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            record.sent_at.append(time.perf_counter())
        done.set()
        deadline = time.perf_counter() + DRAIN_TIMEOUT_S
        while not _settled(record) and time.perf_counter() < deadline and not receiver.done():
            if time.perf_counter() - max(last_event[0], record.sent_at[-1]) > QUIET_S:
                break  # nothing more is coming (an utterance that voice activity detection never ended)
            await asyncio.sleep(0.1)
        receiver.cancel()


def _settled(record: SessionRecord) -> bool:
    """Every committed utterance has its `completed` (or failed)."""
    kinds = [e["type"] for _, e in record.events]
    committed = kinds.count("input_audio_buffer.committed")
    finished = kinds.count("conversation.item.input_audio_transcription.completed") + kinds.count(
        "conversation.item.input_audio_transcription.failed"
    )
    return committed > 0 and finished >= committed


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def measure(records: Sequence[SessionRecord], delay_s: float, slack_s: float) -> dict[str, Any]:
    """The pooled figures of one run (see the module docstring)."""
    word: list[float] = []
    completed: list[float] = []
    behind = errors = utterances = 0
    for record in records:
        stopped: dict[str, float] = {}
        for at, event in record.events:
            kind = event["type"]
            if kind == "conversation.item.input_audio_transcription.delta" and "audio_end_ms" in event:
                sent = record.sent_time(float(event["audio_end_ms"]))
                if sent is not None:
                    word.append(max(0.0, at - sent + delay_s))
            elif kind == "input_audio_buffer.speech_stopped":
                stopped[event["item_id"]] = float(event["audio_end_ms"])
            elif kind == "conversation.item.input_audio_transcription.completed":
                utterances += 1
                sent = record.sent_time(stopped.get(event["item_id"], 0.0))
                if sent is not None:
                    completed.append(max(0.0, at - sent))
            elif kind == "error":
                code = (event.get("error") or {}).get("code")
                behind += code == "behind_real_time"
                errors += code != "behind_real_time"
    p99 = percentile(word, 99)
    return {
        "utterances": utterances,
        "deltas": len(word),
        "word_delay_p50_s": percentile(word, 50),
        "word_delay_p99_s": p99,
        "completed_delay_p50_s": percentile(completed, 50),
        "completed_delay_p99_s": percentile(completed, 99),
        "behind_events": behind,
        "other_errors": errors,
        "real_time": behind == 0 and errors == 0 and p99 is not None and p99 <= delay_s + slack_s,
    }


async def run_sessions(url: str, n: int, pcm: bytes, piece_ms: int) -> list[SessionRecord]:
    records = [SessionRecord(piece_ms) for _ in range(n)]
    await asyncio.gather(*(microphone(url, pcm, piece_ms, r) for r in records))
    return records


def model_delay_s(model_dir: Path, standard: bool) -> float:
    """The realtime model's delay in seconds (its processor's delay tokens × 80 ms); 0 for a standard model."""
    if standard:
        return 0.0
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    return float(processor.num_delay_tokens * processor.raw_audio_length_per_tok / 16000)


def build(preset: str, folder: Path, standard: bool) -> Path:
    if standard:
        return build_checkpoint(preset, folder)
    from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model

    size: Literal["tiny", "small"] = "small" if preset == "small" else "tiny"
    return build_tiny_realtime_model(folder / f"voxtral-realtime-{preset}", preset=size)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--model", help="a checkpoint directory instead of a preset")
    parser.add_argument("--standard", action="store_true", help="a standard Voxtral preset (buffered path)")
    parser.add_argument("--sessions", default="1,2,4", help="numbers of concurrent microphones")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of speech per microphone")
    parser.add_argument("--piece-ms", type=int, default=100, help="milliseconds of audio per append")
    parser.add_argument("--slack-s", type=float, default=1.0, help="p99 word delay allowed beyond the model's")
    parser.add_argument("--json", help="write the figures to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    counts = [int(n) for n in args.sessions.split(",") if n.strip()]
    folder = Path(tempfile.mkdtemp(prefix="voxtral-realtime-bench-"))
    model_dir = Path(args.model) if args.model else build(args.preset, folder, args.standard)
    delay_s = model_delay_s(model_dir, args.standard)
    pcm = speech_pcm16(args.seconds)
    env = {
        "model": str(model_dir),
        "served_model_name": SERVED_NAME,
        "preload": "true",
        "model_ttl": "-1",
        "realtime_max_sessions": str(max(counts)),
        "realtime_max_ahead_s": "3600",  # measure the model's pace, not the throttle
    }
    server = start_server("server", folder, env, None)
    rows = []
    try:
        wait_ready(server)
        asyncio.run(run_sessions(server.url, 1, speech_pcm16(2.0), args.piece_ms))  # warm-up
        for n in counts:
            records = asyncio.run(run_sessions(server.url, n, pcm, args.piece_ms))
            rows.append({"sessions": n, **measure(records, delay_s, args.slack_s)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_all([server])
    kept = [r["sessions"] for r in rows if r["real_time"]]
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "scripts/benchmark.py --realtime " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model or f"{args.preset}{' (standard)' if args.standard else ' realtime'}",
        "model_delay_s": delay_s,
        "seconds_per_session": args.seconds,
        "machine": {"platform": platform.platform(), "cores": cpu_count(), "ram_gib": ram_gib()},
        "rows": rows,
        "most_real_time_sessions": max(kept) if kept else 0,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['model']}, model delay {report['model_delay_s']:.2f} s, {report['machine']['cores']} cores")
    print(f"{'sessions':>8} {'word p50':>9} {'word p99':>9} {'done p50':>9} {'done p99':>9} {'behind':>6} real-time")
    for r in report["rows"]:
        cells = [r["word_delay_p50_s"], r["word_delay_p99_s"], r["completed_delay_p50_s"], r["completed_delay_p99_s"]]
        text = " ".join(f"{c:>9.2f}" if c is not None else f"{'-':>9}" for c in cells)
        print(f"{r['sessions']:>8} {text} {r['behind_events']:>6} {'yes' if r['real_time'] else 'no'}")
    print(f"most sessions that stayed real time: {report['most_real_time_sessions']}")


if __name__ == "__main__":
    main()
