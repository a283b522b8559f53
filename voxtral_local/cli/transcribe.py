"""`transcribe FILE...`: one transcript per file, through POST /v1/audio/transcriptions."""

from __future__ import annotations

import contextlib
import json
import mimetypes
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import Progress, TaskID

from .client import Api, ApiError, ApiKeyOption, ServerOption, connect, error_message, fail
from .progress import ProgressOption, QuietOption, audio_progress, events, parse_progress, progress_console

Format = Literal["json", "text", "srt", "vtt", "verbose_json"]
EXTENSIONS: dict[str, str] = {"json": "json", "text": "txt", "srt": "srt", "vtt": "vtt", "verbose_json": "json"}
STREAMED: frozenset[str] = frozenset({"json", "text"})


def transcribe(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Audio or video files.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model id or alias. [default: the server's default model]"),
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", "-l", help="ISO-639-1 code, e.g. en. [default: detected]")
    ] = None,
    response_format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = "json",
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help="Write DIR/<stem>.<ext> per file. [default: stdout for one file, the current directory for several]",
            file_okay=False,
        ),
    ] = None,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    progress: ProgressOption = False,
    quiet: QuietOption = False,
) -> None:
    """Transcribe each FILE. A file that is missing or that the server refuses is reported on stderr and the
    others go on; the exit status is 1 if any failed. json and text are streamed, with progress by seconds
    of audio when the server reports it."""
    failed = 0
    present = []
    for file in files:
        if file.is_file():
            present.append(file)
        else:
            typer.echo(f"error: {file}: {'a directory' if file.is_dir() else 'no such file'}", err=True)
            failed += 1
    to_stdout = len(files) == 1 and output_dir is None
    target = output_dir or Path(".")
    if not to_stdout:
        clash = same_outputs(present, response_format)
        if clash:  # one transcript would overwrite another: refuse before any work
            raise fail(f"these files would write the same output file ({clash[0]}): {', '.join(map(str, clash[1]))}")
    console = progress_console(progress, quiet)
    printed: list[str] = []  # what goes to stdout, printed once the progress display is gone
    if present:
        try:
            with connect(server, api_key) as api:
                name = model or default_model(api)
                bar = audio_progress(console) if console is not None else None
                with bar if bar is not None else contextlib.nullcontext():
                    for file in present:
                        try:
                            body = _one(api, file, name, language, response_format, bar)
                            if to_stdout:
                                printed.append(body)
                                continue
                            path = _write(body, file, response_format, target)
                        except ApiError as exc:
                            _note(f"error: {file}: {exc.message}", bar)
                            failed += 1
                            continue
                        except OSError as exc:  # unreadable input, unwritable output
                            _note(f"error: {file}: {exc.strerror or exc}", bar)
                            failed += 1
                            continue
                        if not quiet:
                            _note(f"{file} -> {path}", bar)
        except ApiError as exc:
            raise fail(exc.message) from None
    for body in printed:
        typer.echo(body, nl=False)
    if failed:
        raise typer.Exit(1)


def same_outputs(files: list[Path], response_format: str) -> tuple[str, list[Path]] | None:
    """The first output name (`<stem>.<ext>`) that two or more of `files` would share, with those files."""
    by_name: dict[str, list[Path]] = {}
    for file in files:
        by_name.setdefault(f"{file.stem}.{EXTENSIONS[response_format]}", []).append(file)
    return next(((name, group) for name, group in by_name.items() if len(group) > 1), None)


def default_model(api: Api) -> str:
    """The server's default model id, from GET /health."""
    model = api.json("GET", "/health").get("model")
    if not isinstance(model, str):
        raise ApiError("the server does not name its default model in /health; pass --model")
    return model


def _one(api: Api, file: Path, model: str, language: str | None, fmt: str, bar: Progress | None) -> str:
    """The transcript of one file in format `fmt`, as text; ApiError for an error answer or event."""
    data = {"model": model, "response_format": fmt}
    if language:
        data["language"] = language
    streamed = fmt in STREAMED
    if streamed:
        data["stream"] = "true"
    task = bar.add_task(file.name, total=None, seconds=False) if bar is not None else None
    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    with file.open("rb") as audio:
        upload = {"file": (file.name, audio, mime)}
        if not streamed:
            text = api.request("POST", "/v1/audio/transcriptions", data=data, files=upload).text
        else:
            with api.stream("POST", "/v1/audio/transcriptions", data=data, files=upload) as response:
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    done = _follow(response, bar, task)
                else:  # a server that answers at once
                    done = json.loads(response.read())
            text = done["text"] if fmt == "text" else json.dumps(_without_type(done), ensure_ascii=False)
    if bar is not None and task is not None:
        total = bar.tasks[task].total or 1.0
        bar.update(task, total=total, completed=total)
    return text if text.endswith("\n") else text + "\n"


def _follow(response: Any, bar: Progress | None, task: TaskID | None) -> dict[str, Any]:
    """Read a transcription stream: `: progress done total` comments drive `bar`; the result is the
    `transcript.text.done` event (its `text` is the whole transcript)."""
    parts: list[str] = []
    for event in events(response):
        if event.done:
            break
        if event.comment is not None:
            seconds = parse_progress(event.comment)
            if seconds is not None and bar is not None and task is not None:
                bar.update(task, completed=seconds[0], total=seconds[1], seconds=True)
            continue
        data = event.data or {}
        if "error" in data:
            raise ApiError(error_message(data))
        if data.get("type") == "transcript.text.delta":
            parts.append(str(data.get("delta", "")))
        elif data.get("type") == "transcript.text.done":
            return data
    raise ApiError(f"the stream ended before the transcript was done ({len(''.join(parts))} characters came)")


def _without_type(event: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key != "type"}


def _write(text: str, file: Path, fmt: str, directory: Path) -> Path:
    """Write `text` to `directory/<stem>.<ext>`; the path written."""
    path = directory / f"{file.stem}.{EXTENSIONS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _note(message: str, bar: Progress | None) -> None:
    """A line on stderr, above the progress display when there is one."""
    if bar is not None:
        bar.console.print(message, markup=False, highlight=False)
    else:
        typer.echo(message, err=True)
