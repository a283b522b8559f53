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
