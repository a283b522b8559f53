"""scripts/loadtest.py runs against a real server and reports the documented figures (not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import running_server

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "loadtest.py"


def test_a_short_overload_run_is_refused_fast_and_loses_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    with running_server(model=str(tiny_model_dir), max_queue=1) as url:
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--url", url, "--clients", "3", "--duration", "3", "--json", str(out),
             "--pid", str(os.getpid()), "--health-interval", "0.2"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["lost"] == 0 and report["sent"] == report["answered"] > 0
    assert report["statuses"]["200"] >= 1 and report["statuses"]["429"] >= 1  # one place, three clients
    assert set(report["statuses"]) <= {"200", "429"}
    assert report["latency_s"]["p50"] > 0 and report["refusal_s"]["max"] is not None
    assert report["throughput_per_s"] > 0
    assert report["health"]["polls"] > 0 and report["health"]["failures"] == 0
    assert report["rss_mib"]["max"] >= report["rss_mib"]["start"] > 0


@pytest.mark.parametrize("url", ["http://192.0.2.1:11344", "http://example.com", "http://10.0.0.1"])
def test_it_refuses_to_load_another_machine(url: str) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", url, "--duration", "1"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "not a loopback address" in run.stderr


@pytest.mark.parametrize("option", [["--clients", "0"], ["--clients", "100000"], ["--duration", "86400"]])
def test_its_load_is_bounded(option: list[str]) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), *option], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "must be" in run.stderr
