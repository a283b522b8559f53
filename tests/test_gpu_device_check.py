"""scripts/device_check.sh: its CPU smoke run passes end to end (slow), and its summary reads the targets right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_reports_ok(tmp_path: Path) -> None:
    """The GPU check's steps on this CPU (small preset, 30 and 60 s): a few minutes, so marked slow."""
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh"), "--cpu-smoke"],
        env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = (tmp_path / "summary.txt").read_text()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert summary.rstrip().endswith("device_check: OK")
    steps = [line.split("\t") for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    assert [(name, status) for name, status, _ in steps] == [("env", "ok"), ("tests", "ok"), ("bench", "ok")]
    tests_log = (tmp_path / "tests.log").read_text()
    assert " passed" in tests_log and " failed" not in tests_log and "test_a_streamed_request_end_to_end" in tests_log
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert {(r["strategy"], r["audio_seconds"]) for r in rows} == {
        (s, d) for s in ("http", "engine", "native", "concurrent-2") for d in (30, 60)
    }
    assert "requirement check:" in (tmp_path / "env.log").read_text()


def summarise(out: Path, steps: list[tuple[str, str]], rows: list[dict[str, object]]) -> tuple[int, str]:
    (out / "steps.tsv").write_text("".join(f"{name}\t{status}\t1\n" for name, status in steps))
    report = {"machine": {"device": "NVIDIA H200"}, "preset": "full", "weights_mb": 9000, "results": rows}
    (out / "bench.json").write_text(json.dumps(report))
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "device_check.py"), "summary", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return run.returncode, run.stdout


def row(strategy: str, seconds: int, wall: float, delta: float | None = None, cuda_mb: int = 0) -> dict[str, object]:
    return {"strategy": strategy, "audio_seconds": seconds, "wall_seconds": wall, "first_delta_seconds": delta,
            "peak_cuda_mb": cuda_mb}  # fmt: skip


def test_summary_compares_each_figure_with_its_target(tmp_path: Path) -> None:
    good = [row("http", 30, 0.4, 0.1), row("concurrent-8", 30, 0.7), row("http", 1800, 2.5, 0.15, 9000 + 15 * 1024),
            row("native", 1800, 25.0)]  # fmt: skip
    rc, text = summarise(tmp_path, [("env", "ok"), ("tests", "ok"), ("bench", "ok")], good)
    assert rc == 0 and text.rstrip().endswith("device_check: OK")
    assert "MISSED" not in text and text.count(" met") == 6

    bad = [row("http", 30, 0.6, 0.1), row("concurrent-8", 30, 1.3), row("http", 1800, 3.5, 0.25, 9000 + 17 * 1024),
           row("native", 1800, 20.0)]  # fmt: skip
    rc, text = summarise(tmp_path, [("env", "ok"), ("tests", "failed (rc 1)"), ("bench", "timed out (300 s)")], bad)
    assert rc == 1 and text.rstrip().endswith("device_check: FAILED (tests, bench)")
    assert text.count("MISSED") == 6


def test_summary_says_what_was_not_measured(tmp_path: Path) -> None:
    rc, text = summarise(tmp_path, [("env", "ok"), ("tests", "ok"), ("bench", "ok")], [row("http", 30, 0.3, 0.1)])
    assert rc == 0
    assert text.count("not measured") == 4 and text.count(" met") == 2


def test_tests_that_all_skipped_are_a_failure(tmp_path: Path) -> None:
    """On the GPU machine every gpu test skipping means no CUDA device: the check has not proved anything."""
    (tmp_path / "tests.log").write_text("sssssssss\n9 skipped in 1.2s\n")
    rc, text = summarise(tmp_path, [("env", "ok"), ("tests", "ok"), ("bench", "ok")], [row("http", 30, 0.3, 0.1)])
    assert rc == 1 and text.rstrip().endswith("device_check: FAILED (tests: none passed)")
    (tmp_path / "tests.log").write_text("......s\n7 passed, 2 skipped in 60s\n")
    rc, text = summarise(tmp_path, [("env", "ok"), ("tests", "ok"), ("bench", "ok")], [row("http", 30, 0.3, 0.1)])
    assert rc == 0 and text.rstrip().endswith("device_check: OK")
