"""scripts/benchmark.py runs end to end and writes the documented JSON (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the benchmark script end to end (tens of seconds): in `pytest -m slow`, out of the default loop.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--preset", "small", "--durations", "30",
         "--strategies", "native,sequential,engine,http,concurrent", "--concurrency", "3",
         "--tokens-per-30s", "40", "--json", str(out),
         "--port", "0"],
        check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "preset", "results"}
    assert report["preset"] == "small"
    rows = {r["strategy"]: r for r in report["results"]}
    assert set(rows) == {"native", "sequential", "engine", "http", "concurrent-3"}
    for row in rows.values():
        assert set(row) >= {"strategy", "audio_seconds", "wall_seconds", "rtfx", "new_tokens", "peak_rss_mb",
                            "peak_cuda_mb", "first_delta_seconds", "cpu_steal_percent"}  # fmt: skip
        assert row["audio_seconds"] == 30 and row["wall_seconds"] > 0
        assert row["cpu_steal_percent"] is None or 0 <= row["cpu_steal_percent"] <= 100
        assert row["new_tokens"] == (120 if row is rows["concurrent-3"] else 40)  # forced: the same work per upload
    assert rows["http"]["first_delta_seconds"] > 0 and rows["engine"]["first_delta_seconds"] is None


def test_repeated_runs_interleave_and_ratios_use_medians(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--preset", "small", "--durations", "30",
         "--strategies", "native,engine", "--repeat", "2", "--tokens-per-30s", "40", "--json", str(out)],
        check=True, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [r["strategy"] for r in rows] == ["native", "engine", "native", "engine"]
    ratio_line = next(line for line in run.stdout.splitlines() if "native/engine" in line)
    assert "(runs:" in ratio_line


def test_scale_out_mode_writes_the_three_figures_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "scale-out.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--scale-out", "--preset", "tiny",
         "--seconds", "60", "--repeat", "1", "--json", str(out)],
        check=True, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) >= {"command", "date_utc", "machine", "model", "threads_per_upstream", "figures",
                           "overhead", "fan_out_gain", "transcripts", "runs"}  # fmt: skip
    assert "--scale-out" in report["command"] and report["machine"]["cpu_count"] >= 1
    assert set(report["figures"]) == {"direct", "front-1", "front-2"}
    for figure in report["figures"].values():
        assert figure["wall_seconds"] > 0 and figure["rtfx"] > 0
    assert report["overhead"]["median"] > 0 and report["fan_out_gain"]["median"] > 0
    assert [r["mode"] for r in report["runs"]] == ["direct", "front-1", "front-2"]
    assert all(r["end_seconds"] > 50 for r in report["runs"])  # each way transcribed the whole minute
    assert report["transcripts"]["direct_equals_front_1"] is True  # temperature 0, the same chunks
    front_2 = report["front_upstreams"]["front-2"]
    assert len(front_2) == 2 and all(u["requests"] > 0 for u in front_2)  # both upstreams got chunks
    assert "overhead (front-1 / direct)" in run.stdout and "fan-out gain (front-1 / front-2)" in run.stdout
