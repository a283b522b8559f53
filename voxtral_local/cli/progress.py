"""Progress on stderr (rich), and the server-sent events that drive it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

ProgressOption = Annotated[
    bool,
    typer.Option("--progress", help="Show progress on stderr even when it is not a terminal.", show_default=False),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no notes on stderr.")]


def progress_console(force: bool, quiet: bool) -> Console | None:
    """The stderr console progress is drawn on: None with `quiet`, or when stderr is not a terminal and
    `force` is off."""
    if quiet or not (force or sys.stderr.isatty()):
        return None
    return Console(stderr=True, force_terminal=True if force else None)


class SecondsColumn(ProgressColumn):
    """`done/total s` of audio once the server has said how much there is (the task's `seconds` field)."""

    def render(self, task: Task) -> Text:
        if task.total is None or not task.fields.get("seconds"):
            return Text("")
        return Text(f"{task.completed:.0f}/{task.total:.0f} s audio", style="progress.download")


def audio_progress(console: Console) -> Progress:
    """A bar per file over seconds of audio; a pulsing bar while no total is known; elapsed time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        SecondsColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def download_progress(console: Console) -> Progress:
    """A bar over bytes downloaded, with the speed and elapsed time."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@dataclass
class Event:
    """One server-sent event line: `data` (the parsed JSON, or None for `[DONE]`) or a `comment` (text after
    the colon, stripped)."""

    data: dict[str, Any] | None = None
    comment: str | None = None
    done: bool = False


def events(response: httpx.Response) -> Iterator[Event]:
    """The events of an SSE answer, one per `data:` or comment line, until `data: [DONE]` or the end; a
    `data:` line that is not JSON raises ValueError."""
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Event(comment=line[1:].strip())
        elif line.startswith("data:"):
            payload = line[5:].strip()
            if payload == "[DONE]":
                yield Event(done=True)
                return
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError(f"unexpected event: {payload[:200]}")
            yield Event(data=data)


def parse_progress(comment: str) -> tuple[float, float] | None:
    """`progress <seconds_done> <seconds_total>` as two floats; None for any other comment."""
    parts = comment.split()
    if len(parts) != 3 or parts[0] != "progress":
        return None
    try:
        return float(parts[1]), float(parts[2])
    except ValueError:
        return None
