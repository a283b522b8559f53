#!/usr/bin/env python3
"""Scale-out benchmark: this server as the front of one or two upstream servers, against one upstream alone.

  scripts/benchmark.py --scale-out [--preset small|tiny] [--model DIR] [--seconds 300] [--repeat 1]
                                   [--threads-per-upstream N] [--tokens-per-30s 100] [--json FILE]
  (or scripts/scale_out_benchmark.py with the same options)

The upstreams stand in for vLLM servers: they are separate processes of this very server (`python -m
voxtral_local`, transformers backend, the model preloaded and never unloaded) on loopback ports, each limited to
`--threads-per-upstream` CPU threads (OMP_NUM_THREADS / MKL_NUM_THREADS; default: half the cores, at least 1),
so that two upstreams share the machine's cores and one upstream gets the same per-process threads as each of
the two. The fronts are more processes of this server with VOXTRAL_BACKEND=vllm and VOXTRAL_VLLM_URLS naming
one upstream (front-1) or both (front-2).

One file of `--seconds` of speech-like audio (benchmark.py's MP3) is transcribed, at temperature 0 with
`verbose_json`, three ways: direct = POSTed whole to one upstream (its own chunking and batching); front-1 =
through the front with that upstream behind it; front-2 = through the front with both upstreams behind it. Each
way gets one warm-up request first; then the three run `--repeat` times, interleaved, and the figures are the
medians. Overhead = front-1 / direct wall time; fan-out gain = front-1 / front-2 wall time. Every run also
records the share of the machine's CPU time that processes other than the benchmark's own used meanwhile
(`other_processes_cpu_percent`, from /proc): on a shared machine the fan-out gain needs idle cores to show.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from benchmark import CAP_MARGIN, free_port, make_audio, preset_config  # noqa: E402
from cpu_time import busy_jiffies, cpu_jiffies, foreign_percent, steal_percent  # noqa: E402

MODES = ("direct", "front-1", "front-2")
SERVED_NAME = "bench"  # the id the upstreams serve the checkpoint as, and the fronts forward
START_TIMEOUT_S = 300.0


@dataclass
class Process:
    """A server process on a loopback port, its output in `log_path`."""

    name: str
    url: str
    log_path: Path
    popen: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines the process wrote."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ram_gib() -> float | None:
    """The machine's memory in GiB (/proc/meminfo), None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return None
    return round(kib / 2**20, 1)


def build_checkpoint(preset: str, folder: Path) -> Path:
    """A random-weight checkpoint of `preset` ("tiny": the test model; "small": benchmark.py's small preset)
    saved with save_pretrained in `folder`; returns its directory."""
    from voxtral_local.testing.tiny_model import build_tiny_model

    if preset == "tiny":
        return build_tiny_model(folder / "voxtral-tiny")
    config, vocab_tokens = preset_config(preset)
    return build_tiny_model(folder / f"voxtral-{preset}", config=config, vocab_tokens=vocab_tokens)


def start_server(name: str, folder: Path, env: dict[str, str], threads: int | None) -> Process:
    """Start `python -m voxtral_local` on a free loopback port with the VOXTRAL_* `env` (names without the
    prefix) and, if `threads`, that many CPU threads; its working directory is `folder` (no stray .env)."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("VOXTRAL_")}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep a carried site
    full.update(PYTHONPATH=path, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if threads:
        full.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    settings = {"host": "127.0.0.1", "port": str(port), "log_level": "warning", **env}
    full.update({f"VOXTRAL_{k.upper()}": v for k, v in settings.items()})
    log_path = folder / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "voxtral_local"], env=full, cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
    return Process(name, f"http://127.0.0.1:{port}", log_path, popen)


def wait_ready(process: Process, *, upstreams: int = 0) -> None:
    """Return once `process` answers `/health` with its model loaded (an upstream) or with `upstreams` upstreams
    up and the model listed under /v1/models (a front). RuntimeError, with the process's log, if it ends first
    or START_TIMEOUT_S pass."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            health = httpx.get(f"{process.url}/health", timeout=5).json()
            if upstreams:
                up = [u for u in health.get("upstreams") or [] if u["state"] == "up"]
                listed = httpx.get(f"{process.url}/v1/models", timeout=5).json()["data"]
                if len(up) == upstreams and any(m["id"] == SERVED_NAME for m in listed):
                    return
            elif health.get("model_loaded"):
                return
            elif health.get("model_error"):  # the preload failed: it will not load
                raise RuntimeError(f"{process.name} cannot load the model:\n{process.log_tail()}")
        except (httpx.TransportError, ValueError, KeyError):
            pass
        if process.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not become ready:\n{process.log_tail()}")
        time.sleep(0.2)


def stop_all(processes: Sequence[Process]) -> None:
    """Terminate every process, then wait for each (killing any that lingers)."""
    for p in processes:
        if p.popen.poll() is None:
            p.popen.terminate()
    for p in processes:
        try:
            p.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


@contextlib.contextmanager
def cluster(model_dir: Path, folder: Path, threads: int, rate: float) -> Iterator[dict[str, Process]]:
    """Two upstreams (`up-a`, `up-b`) and two fronts (`front-1` before up-a, `front-2` before both), all ready;
    every process is stopped on exit, also on an error, Ctrl-C or SIGTERM."""
    processes: list[Process] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    common = {"max_tokens_per_audio_second": repr(rate), "model_ttl": "-1"}
    try:
        upstream_env = {"model": str(model_dir), "served_model_name": SERVED_NAME, "preload": "true", **common}
        for name in ("up-a", "up-b"):
            processes.append(start_server(name, folder, upstream_env, threads))
        for p in processes:
            wait_ready(p)
        a, b = processes
        fronts = {"front-1": [a.url], "front-2": [a.url, b.url]}
        for name, urls in fronts.items():
            env = {
                "backend": "vllm",
                "model": SERVED_NAME,
                "vllm_urls": ",".join(urls),
                "vllm_timeout_s": "600",  # a queued chunk of a slow CPU upstream is not a dead upstream
                "vllm_health_interval_s": "1",
                **common,
            }
            processes.append(start_server(name, folder, env, None))
        for p in processes[2:]:
            wait_ready(p, upstreams=len(fronts[p.name]))
        yield {p.name: p for p in processes}
    finally:
        stop_all(processes)
        signal.signal(signal.SIGTERM, previous)


def transcribe(url: str, mp3: bytes, pids: Sequence[int] = ()) -> dict[str, Any]:
    """The whole file's `verbose_json` transcript from the server at `url` (OpenAI SDK, temperature 0), timed;
    `pids`: the benchmark's own processes, whose CPU time does not count as another workload's."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=3600)
    jiffies = cpu_jiffies()
    busy = busy_jiffies(pids)
    start = time.perf_counter()
    result = client.audio.transcriptions.create(
        model=SERVED_NAME,
        file=("speech.mp3", mp3, "audio/mpeg"),
        response_format="verbose_json",
        language="en",
        temperature=0,
    )
    wall = time.perf_counter() - start
    segments = result.segments or []
    return {
        "wall_seconds": round(wall, 3),
        "text": result.text,
        "segments": len(segments),
        "tokens": sum(len(s.tokens) for s in segments),
        "end_seconds": round(segments[-1].end, 2) if segments else 0.0,
        "cpu_steal_percent": steal_percent(jiffies, cpu_jiffies()),
        "other_processes_cpu_percent": foreign_percent(busy, busy_jiffies(pids)),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def similarity(a: str, b: str) -> float:
    """How alike two transcripts are word by word (difflib ratio, 0..1)."""
    return round(difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio(), 4)


def summarize(rows: list[dict[str, Any]], seconds: int) -> dict[str, Any]:
    """Median wall seconds and RTFx per mode, the overhead and fan-out ratios (of medians, and run by run)."""
    walls = {m: [r["wall_seconds"] for r in rows if r["mode"] == m] for m in MODES}
    medians = {m: float(np.median(w)) for m, w in walls.items()}
    figures = {m: {"wall_seconds": round(medians[m], 3), "rtfx": round(seconds / medians[m], 1)} for m in MODES}
    texts = {m: next(r["text"] for r in rows if r["mode"] == m) for m in MODES}

    def ratio(a: str, b: str) -> dict[str, Any]:
        each = [x / y for x, y in zip(walls[a], walls[b], strict=True)]
        return {"median": round(medians[a] / medians[b], 3), "runs": [round(x, 3) for x in each]}

    return {
        "figures": figures,
        "overhead": ratio("front-1", "direct"),
        "fan_out_gain": ratio("front-1", "front-2"),
        "transcripts": {
            "direct_equals_front_1": texts["direct"] == texts["front-1"],
            "direct_equals_front_2": texts["direct"] == texts["front-2"],
            "similarity_direct_front_1": similarity(texts["direct"], texts["front-1"]),
            "similarity_direct_front_2": similarity(texts["direct"], texts["front-2"]),
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark.py --scale-out", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=["small", "tiny"], default="small", help="random-weight model to build")
    parser.add_argument("--model", help="a checkpoint directory (saved with save_pretrained) instead of a preset")
    parser.add_argument("--seconds", type=int, default=300, help="length of the audio file")
    parser.add_argument("--repeat", type=int, default=1, help="run the three ways this many times, interleaved")
    parser.add_argument("--threads-per-upstream", type=int, default=max(1, cpu_count() // 2))
    parser.add_argument("--tokens-per-30s", type=int, default=100, help="the upstreams' token cap per 30 s chunk")
    parser.add_argument("--json", help="write every figure to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark (`argv`: the options, without `--scale-out`); prints a table, writes --json."""
    args = parse_args(argv)
    command = " ".join([Path(sys.argv[0]).name if sys.argv else "benchmark.py", *sys.argv[1:]])
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rate = (args.tokens_per_30s - CAP_MARGIN) / 30  # the upstream's cap is rate * seconds + CAP_MARGIN per chunk
    machine = {
        "cpu_count": cpu_count(),
        "ram_gib": ram_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="voxtral-scale-out-") as tmp:
        folder = Path(tmp)
        model_dir = Path(args.model) if args.model else build_checkpoint(args.preset, folder)
        cache = Path(tempfile.gettempdir()) / "voxtral-bench-audio"
        cache.mkdir(exist_ok=True)
        mp3 = make_audio(args.seconds, cache)
        model = str(model_dir) if args.model else f"preset {args.preset} (random weights, {model_dir.name})"
        print(
            f"model: {model}; {args.seconds} s of audio; every upstream process has {args.threads_per_upstream} "
            f"CPU thread(s) (direct and front-1 use one upstream, front-2 two) on a {machine['cpu_count']}-core "
            f"machine; up to {args.tokens_per_30s} new tokens per 30 s chunk",
            flush=True,
        )
        rows: list[dict[str, Any]] = []
        with cluster(model_dir, folder, args.threads_per_upstream, rate) as procs:
            targets = {"direct": procs["up-a"].url, "front-1": procs["front-1"].url, "front-2": procs["front-2"].url}
            pids = [os.getpid(), *(p.popen.pid for p in procs.values())]
            for mode in MODES:  # warm-up: kernels, allocator, the fronts' connections
                transcribe(targets[mode], mp3)
            for run in range(max(1, args.repeat)):
                for mode in MODES:
                    row = {"mode": mode, "run": run + 1, **transcribe(targets[mode], mp3, pids)}
                    row["rtfx"] = round(args.seconds / row["wall_seconds"], 1)
                    rows.append(row)
                    print(
                        f"  run {run + 1} {mode:<8} {row['wall_seconds']:8.2f} s  RTFx {row['rtfx']:<6} CPU used by "
                        f"other processes {row['other_processes_cpu_percent']} %",
                        flush=True,
                    )
            upstreams = {
                name: httpx.get(f"{procs[name].url}/health", timeout=10).json()["upstreams"]
                for name in ("front-1", "front-2")
            }
    summary = summarize(rows, args.seconds)
    report = {
        "command": command,
        "date_utc": started,
        "machine": machine,
        "model": model,
        "audio_seconds": args.seconds,
        "threads_per_upstream": args.threads_per_upstream,
        "tokens_per_30s": args.tokens_per_30s,
        "repeat": args.repeat,
        **summary,
        "front_upstreams": upstreams,
        "runs": [{k: v for k, v in r.items() if k != "text"} for r in rows],
    }
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def print_table(report: dict[str, Any]) -> None:
    """The medians, the two ratios and the transcript check, as a table on stdout."""
    print(f"\n{report['audio_seconds']} s of audio, median of {report['repeat']} run(s), {report['date_utc']}")
    print(f"{'way':<9} {'wall s':>8} {'RTFx':>7}")
    for mode, fig in report["figures"].items():
        print(f"{mode:<9} {fig['wall_seconds']:>8.2f} {fig['rtfx']:>7.1f}")
    labels = {"overhead": "overhead (front-1 / direct)", "fan_out_gain": "fan-out gain (front-1 / front-2)"}
    for name, label in labels.items():
        runs = ", ".join(f"{x:.2f}" for x in report[name]["runs"])
        print(f"{label}: {report[name]['median']:.2f}x (runs: {runs})")
    t = report["transcripts"]
    print(
        f"transcripts at temperature 0: direct == front-1: {t['direct_equals_front_1']} "
        f"(word similarity {t['similarity_direct_front_1']}), direct == front-2: {t['direct_equals_front_2']} "
        f"(word similarity {t['similarity_direct_front_2']})"
    )
    for upstream in report["front_upstreams"]["front-2"]:
        sent, url, error = upstream["requests"], upstream["url"], upstream["last_error"]
        print(f"front-2 sent {sent} requests to {url}; last error: {error}")
    foreign = [r["other_processes_cpu_percent"] or 0.0 for r in report["runs"]]
    if max(foreign) > 10:
        print(f"warning: other processes used up to {max(foreign)} % of the machine's CPU during the runs")


if __name__ == "__main__":
    main()
