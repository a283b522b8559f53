#!/usr/bin/env python3
"""Helpers of `scripts/device_check.sh`: the environment report and the summary against the GPU targets.

  scripts/device_check.py env [--site DIR]            versions, pins against what is installed, and whether
                                                      every carried distribution's requirements are met
  scripts/device_check.py summary OUT                 the steps' outcomes (OUT/steps.tsv) and the benchmark's
                                                      figures (OUT/bench.json) against the targets

Standard library plus `packaging` (present on the device image and in the project's environment).
The targets are issue 13's (docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Packages whose versions the report names first (the runtime's and the test tools').
KEY_PACKAGES = ["torch", "transformers", "mistral-common", "av", "soundfile", "soxr", "numpy", "fastapi",
                "uvicorn", "pydantic", "pydantic-settings", "huggingface-hub", "tokenizers", "openai", "httpx",
                "pytest"]  # fmt: skip


def pins() -> dict[str, str]:
    """`name==version` lines of requirements.txt and requirements-dev.txt, by normalised name."""
    found: dict[str, str] = {}
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if "==" in line:
                package, version = line.split("==", 1)
                found[_normalise(package)] = version.strip()
    return found


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _installed(name: str) -> tuple[str | None, str]:
    """(version, where) of a distribution as this interpreter's path finds it first."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None, "-"
    where = str(getattr(dist, "_path", "")) or "?"
    return dist.version, str(Path(where).parent)


def requirement_problems(site: Path) -> tuple[int, list[str]]:
    """Unmet `Requires-Dist` entries (extras left out, markers evaluated) of the distributions in `site`,
    checked against what this interpreter imports first; returns (distributions checked, problems)."""
    from packaging.requirements import InvalidRequirement, Requirement

    dists = list(metadata.distributions(path=[str(site)]))
    problems = []
    for dist in dists:
        for line in dist.requires or []:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            version, _ = _installed(requirement.name)
            if version is None:
                problems.append(f"{dist.metadata['Name']} needs {requirement}: missing")
            elif not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{dist.metadata['Name']} needs {requirement}: {version} found")
    return len(dists), problems


def report_env(site: Path | None) -> int:
    """Print the interpreter, the key packages (pinned against found) and the requirement check."""
    print(f"python {platform.python_version()} at {sys.executable}; {platform.platform()}")
    pinned = pins()
    print(f"{'package':<20} {'pinned':<12} {'found':<14} from")
    for name in KEY_PACKAGES:
        version, where = _installed(name)
        print(f"{name:<20} {pinned.get(name, '-'):<12} {version or 'MISSING':<14} {where}")
    try:
        import torch

        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name() if cuda else "none"
        print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {cuda}, device: {device}")
    except Exception as exc:  # the report goes on: this is what the run must show
        print(f"torch does not import: {type(exc).__name__}: {exc}")
    if site is None:
        return 0
    count, problems = requirement_problems(site)
    print(f"requirement check: {count} carried distributions, {len(problems)} unmet requirements")
    for problem in problems:
        print(f"  {problem}")
    return 0


def _row(rows: list[dict[str, Any]], strategy: str, seconds: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["strategy"] == strategy and r["audio_seconds"] == seconds), None)


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, target, measured, verdict) for each target the benchmark's figures can answer."""
    rows = report.get("results", [])
    out: list[tuple[str, str, str, str]] = []

    def add(what: str, target: str, value: float | None, unit: str, ok: bool | None) -> None:
        shown = "not measured" if value is None else f"{value:.3f}{unit}"
        verdict = "-" if ok is None else ("met" if ok else "MISSED")
        out.append((what, target, shown, verdict))

    concurrent = next((r["strategy"] for r in rows if r["strategy"].startswith("concurrent")), "concurrent-8")
    long_http, long_native = _row(rows, "http", 1800), _row(rows, "native", 1800)
    wall = long_http["wall_seconds"] if long_http else None
    add("30 min MP3 through HTTP, wall", "<= 3 s (RTFx >= 600)", wall, " s", None if wall is None else wall <= 3)
    ratio = long_native["wall_seconds"] / wall if long_native and wall else None
    add("native / http on 30 min", ">= 8x", ratio, "x", None if ratio is None else ratio >= 8)
    short = _row(rows, "http", 30)
    short_wall = short["wall_seconds"] if short else None
    add("30 s clip through HTTP, wall", "<= 0.5 s", short_wall, " s", None if short_wall is None else short_wall <= 0.5)
    deltas = [r["first_delta_seconds"] for r in rows if r.get("first_delta_seconds") is not None]
    first = max(deltas) if deltas else None
    add("first streamed delta (worst length)", "<= 0.2 s", first, " s", None if first is None else first <= 0.2)
    many = _row(rows, concurrent, 30)
    times = many["wall_seconds"] / short_wall if many and short_wall else None
    add(f"{concurrent} x 30 s / one 30 s", "<= 2x", times, "x", None if times is None else times <= 2)
    weights = report.get("weights_mb")
    peak = long_http.get("peak_cuda_mb") if long_http else None
    extra = (peak - weights) / 1024 if peak is not None and weights is not None else None
    add("peak GPU memory above weights, 30 min", "<= 16 GB", extra, " GiB", None if extra is None else extra <= 16)
    return out


def summary(out: Path) -> int:
    """Print the steps and the targets; returns 0 when every step that ran succeeded."""
    steps = []
    steps_file = out / "steps.tsv"
    if steps_file.is_file():
        steps = [line.split("\t") for line in steps_file.read_text().splitlines() if line.strip()]
    print(f"{'step':<10} {'status':<22} seconds")
    for name, status, seconds in steps:
        print(f"{name:<10} {status:<22} {seconds}")
    bench = out / "bench.json"
    if bench.is_file():
        report = json.loads(bench.read_text())
        machine = report.get("machine", {})
        print(
            f"benchmark: {len(report.get('results', []))} rows, preset {report.get('preset')}, {machine.get('device')}"
        )
        for what, target, value, verdict in targets(report):
            print(f"  {what:<40} {target:<22} {value:<16} {verdict}")
    else:
        print("benchmark: no bench.json")
    live = out / "realtime.log"
    rows = (
        [json.loads(line) for line in live.read_text().splitlines() if line.startswith('{"sessions"')]
        if live.is_file()
        else []
    )
    for row in rows:
        print(f"realtime {row['sessions']:>3} sessions: word delay p50 {row['word_delay_p50_s']} s, p99 "
              f"{row['word_delay_p99_s']} s, behind {row['behind_events']}, real time {row['real_time']}")  # fmt: skip
    failed = [name for name, status, _ in steps if status != "ok"]
    tests_log = out / "tests.log"
    if "tests" not in failed and tests_log.is_file() and not re.search(r"\b\d+ passed\b", tests_log.read_text()):
        print("tests: none passed (all skipped: is the device there?)")
        failed.append("tests: none passed")
    print("device_check: OK" if steps and not failed else f"device_check: FAILED ({', '.join(failed) or 'no steps'})")
    return 0 if steps and not failed else 1


def main() -> None:
    """The subcommands `scripts/device_check.sh` calls: `env --site DIR` (versions, unmet requirements) and
    `summary OUT` (the steps against the targets)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env")
    env.add_argument("--site", type=Path, help="the folder the carried packages were installed into")
    commands.add_parser("summary").add_argument("out", type=Path)
    args = parser.parse_args()
    sys.exit(report_env(args.site) if args.command == "env" else summary(args.out))


if __name__ == "__main__":
    main()
