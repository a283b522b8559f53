"""The `voxtral-local` command (also `python -m voxtral_local`): serve, manage models, transcribe files.

Without a command it serves, as `serve` with no options does. The modules import the server (torch,
transformers) only inside the commands that need it, so `--help` and `config` answer at once.
"""

from __future__ import annotations

import typer

from . import models, serve, transcribe

app = typer.Typer(
    name="voxtral-local",
    help="A local, OpenAI-compatible speech-to-text server for Mistral's Voxtral models. Without a command: serve.",
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
app.command()(serve.serve)
app.command()(models.pull)
app.command()(models.ls)
app.command()(models.ps)
app.command()(models.rm)
app.command()(transcribe.transcribe)
app.command()(serve.config)


@app.callback(invoke_without_command=True)
def _default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        from .settings_options import load_settings

        serve.run_server(load_settings())


def main() -> None:
    """Run the command line (the `voxtral-local` console script)."""
    app()
