#!/usr/bin/env python3
"""Load a running voxtral-local server with N clients for T seconds and report what it did under that load.

  scripts/loadtest.py [--url http://127.0.0.1:11344] [--clients 8] [--duration 60] [--file AUDIO]
                      [--model NAME] [--stream] [--no-backoff] [--health-interval 0.5] [--pid PID]
                      [--timeout 600] [--json FILE|-] [--allow-remote]

Each client uploads the file to `/v1/audio/transcriptions` (streamed with --stream), waits for the whole
answer and sends the next, until the time is up; after a 429 it waits the `Retry-After` the server sent (as
the OpenAI SDK does), or not at all with --no-backoff. Requests still running at the end are waited for.
Reported: throughput (answers with 200 per second of the whole run, the wait for the last answers
included), latency p50/p99 of the 200s (and, streamed, of the first event), the answers by status (a stream
that ends in an error event counts as `stream_error:<code>`), how fast refusals came, lost requests (sent
but never answered: a transport error or a cut stream; must be 0), `/health` latency polled meanwhile
(failures count a timeout of 5 s), and with --pid the server's resident memory (Linux /proc) at the start,
its peak and at the end. Exit status 1 when any request was lost.

Only loopback URLs are accepted unless --allow-remote is given: this is a load generator.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "tests" / "fixtures" / "speech.wav"
MAX_CLIENTS = 256
MAX_DURATION_S = 3600.0
HEALTH_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 60.0


@dataclass
class Tally:
    """What the clients saw; shared by their threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    answered: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, of the 200s
    first_events: list[float] = field(default_factory=list)  # seconds to a stream's first event
    refusals: list[float] = field(default_factory=list)  # seconds to a 429
    health: list[float] = field(default_factory=list)
    health_failures: int = 0
    rss: list[int] = field(default_factory=list)  # bytes


def is_loopback(url: str) -> bool:
    """Whether the URL's host is a loopback name or address (localhost, 127.0.0.0/8, ::1)."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def one_request(client: httpx.Client, args: argparse.Namespace, audio: bytes, tally: Tally) -> float:
    """Send one upload and record its outcome; returns the seconds to wait before the next (Retry-After)."""
    files = {"file": (args.file.name, audio, "application/octet-stream")}
    data = {"model": args.model, **({"stream": "true"} if args.stream else {})}
    with tally.lock:
        tally.sent += 1
    started = time.monotonic()
    try:
        with client.stream("POST", "/v1/audio/transcriptions", files=files, data=data) as response:
            outcome, first = str(response.status_code), None
            if response.status_code == 200 and args.stream:
                outcome = "cut"  # until the done event or an error event arrives
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    first = first if first is not None else time.monotonic() - started
                    event = json.loads(line[len("data: ") :])
                    if "error" in event:
                        outcome = f"stream_error:{event['error'].get('code')}"
                    elif event.get("type") == "transcript.text.done":
                        outcome = "200"
            else:
                response.read()
    except httpx.HTTPError as exc:
        with tally.lock:
            tally.statuses[f"transport:{type(exc).__name__}"] += 1
        return 0.0
    elapsed = time.monotonic() - started
    with tally.lock:
        tally.statuses[outcome] += 1
        if outcome != "cut":
            tally.answered += 1
        if outcome == "200":
            tally.latencies.append(elapsed)
            if first is not None:
                tally.first_events.append(first)
        elif outcome == "429":
            tally.refusals.append(elapsed)
    if outcome == "429" and not args.no_backoff:
        retry_after = response.headers.get("retry-after", "1")
        return min(MAX_BACKOFF_S, float(retry_after)) if retry_after.isdigit() else 1.0
    return 0.0


def client_loop(args: argparse.Namespace, audio: bytes, tally: Tally, until: float) -> None:
    """One client: send `args.file` again and again until `until` (time.monotonic()), backing off after a 429."""
    with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
        while time.monotonic() < until:
            pause = one_request(client, args, audio, tally)
            if pause:
                time.sleep(max(0.0, min(pause, until - time.monotonic())))


def poll_health(args: argparse.Namespace, tally: Tally, stop: threading.Event) -> None:
    """Poll `/health` every `args.health_interval` s until `stop`, recording each latency (a failure counts
    as the timeout)."""
    with httpx.Client(base_url=args.url, timeout=HEALTH_TIMEOUT_S) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                client.get("/health").raise_for_status()
                with tally.lock:
                    tally.health.append(time.monotonic() - started)
            except httpx.HTTPError:
                with tally.lock:
                    tally.health_failures += 1
            stop.wait(args.health_interval)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (Linux /proc); None where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def watch_rss(pid: int, tally: Tally, stop: threading.Event) -> None:
    """Sample the resident memory of process `pid` every 0.5 s until `stop`."""
    while True:
        rss = rss_bytes(pid)
        if rss is not None:
            with tally.lock:
                tally.rss.append(rss)
        if stop.wait(0.5):
            return


def rounded(value: float | None, digits: int = 3) -> float | None:
    """`value` rounded to `digits`, or None."""
    return None if value is None else round(value, digits)


def report(args: argparse.Namespace, tally: Tally, wall_s: float) -> dict[str, Any]:
    """The run's figures as a JSON-ready dict (seconds, MiB)."""
    mib = 1024 * 1024
    return {
        "url": args.url,
        "file": str(args.file),
        "stream": args.stream,
        "clients": args.clients,
        "duration_s": args.duration,
        "wall_s": round(wall_s, 3),
        "sent": tally.sent,
        "answered": tally.answered,
        "lost": tally.sent - tally.answered,
        "statuses": dict(sorted(tally.statuses.items())),
        "throughput_per_s": round(len(tally.latencies) / wall_s, 3) if wall_s else None,
        "latency_s": {"p50": rounded(percentile(tally.latencies, 50)), "p99": rounded(percentile(tally.latencies, 99))},
        "first_event_s": {
            "p50": rounded(percentile(tally.first_events, 50)),
            "p99": rounded(percentile(tally.first_events, 99)),
        },
        "refusal_s": {
            "p50": rounded(percentile(tally.refusals, 50)),
            "max": rounded(max(tally.refusals, default=None)),
        },
        "health": {
            "polls": len(tally.health) + tally.health_failures,
            "failures": tally.health_failures,
            "p50_s": rounded(statistics.median(tally.health) if tally.health else None),
            "max_s": rounded(max(tally.health, default=None)),
        },
        "rss_mib": None
        if not tally.rss
        else {
            "start": round(tally.rss[0] / mib, 1),
            "max": round(max(tally.rss) / mib, 1),
            "end": round(tally.rss[-1] / mib, 1),
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; exits with a usage error for out-of-range values or a non-loopback URL."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:11344", help="the server's base URL")
    parser.add_argument("--clients", type=int, default=8, help=f"concurrent clients, 1 to {MAX_CLIENTS}")
    parser.add_argument("--duration", type=float, default=60.0, help=f"seconds of sending, up to {MAX_DURATION_S:g}")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the audio each request uploads")
    parser.add_argument("--model", default=None, help="the `model` field (default: the server's first model)")
    parser.add_argument("--stream", action="store_true", help="ask for streamed transcriptions")
    parser.add_argument("--no-backoff", action="store_true", help="after a 429, send again at once")
    parser.add_argument("--health-interval", type=float, default=0.5, help="seconds between /health polls")
    parser.add_argument("--pid", type=int, default=None, help="the server's process id, to sample its memory")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a client waits for an answer")
    parser.add_argument("--json", default=None, help="write the report as JSON to this file (- for stdout)")
    parser.add_argument("--allow-remote", action="store_true", help="allow a URL that is not loopback")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be 1 to {MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be above 0 and at most {MAX_DURATION_S:g} s")
    if not args.allow_remote and not is_loopback(args.url):
        parser.error(f"{args.url} is not a loopback address; pass --allow-remote to load another machine")
    if not args.file.is_file():
        parser.error(f"no such file: {args.file}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the load, print the report (and write it as JSON with --json); 1 if any request was lost."""
    args = parse_args(argv)
    audio = args.file.read_bytes()
    if args.model is None:
        args.model = httpx.get(f"{args.url}/v1/models", timeout=30).json()["data"][0]["id"]
    tally, stop = Tally(), threading.Event()
    watchers = [threading.Thread(target=poll_health, args=(args, tally, stop), daemon=True)]
    if args.pid is not None:
        watchers.append(threading.Thread(target=watch_rss, args=(args.pid, tally, stop), daemon=True))
    for thread in watchers:
        thread.start()
    started = time.monotonic()
    until = started + args.duration
    clients = [threading.Thread(target=client_loop, args=(args, audio, tally, until)) for _ in range(args.clients)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall_s = time.monotonic() - started
    stop.set()
    for thread in watchers:
        thread.join(HEALTH_TIMEOUT_S + 1)
    result = report(args, tally, wall_s)
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    else:
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(
            f"{result['sent']} sent, {result['answered']} answered, {result['lost']} lost in {result['wall_s']} s; "
            f"statuses {result['statuses']}\n"
            f"throughput {result['throughput_per_s']}/s, latency p50 {result['latency_s']['p50']} s, "
            f"p99 {result['latency_s']['p99']} s; refusals p50 {result['refusal_s']['p50']} s, "
            f"max {result['refusal_s']['max']} s\n"
            f"/health: {result['health']['polls']} polls, {result['health']['failures']} failed, "
            f"p50 {result['health']['p50_s']} s, max {result['health']['max_s']} s; RSS MiB {result['rss_mib']}"
        )
    return 1 if result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
