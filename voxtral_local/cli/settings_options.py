"""Every `Settings` field as a command-line option, built from `Settings.model_fields`, so that a setting added
to `config.py` appears in `serve --help` and `config --help` with nothing else to change."""

from __future__ import annotations

import functools
import inspect
import json
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from ..config import Settings

PANEL = "Settings (each overrides its VOXTRAL_* variable and .env)"
MASK = "********"


def env_name(name: str) -> str:
    """The environment variable of the `Settings` field `name` (`port` → `VOXTRAL_PORT`)."""
    prefix = Settings.model_config.get("env_prefix", "VOXTRAL_")
    return f"{prefix}{name}".upper()


def option_name(name: str) -> str:
    """The option of the field `name` (`max_upload_mb` → `--max-upload-mb`)."""
    return "--" + name.replace("_", "-")


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """The type the option parses into, and whether the field is a bool (a `--x/--no-x` flag). Literal
    fields keep their Literal (shown as choices); a secret is read as a plain string; what the CLI cannot
    express is read as a string and left to the field's own validation."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return bool, True
    if annotation in (int, float, str) or get_origin(annotation) is Literal:
        return annotation, False
    return str, False


def describe_default(field: FieldInfo) -> str:
    """The field's default as the help shows it (`none` for an unset one, `""` for an empty string)."""
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, SecretStr):
        return MASK
    if default == "":
        return '""'
    return str(default)


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    parsed, is_flag = _option_type(field.annotation)
    declaration = f"{option_name(name)}/--no-{name.replace('_', '-')}" if is_flag else option_name(name)
    description = (field.description or "").rstrip(".")
    help_text = f"{description}. [env: {env_name(name)}; default: {describe_default(field)}]"
    option = typer.Option(declaration, help=help_text, show_default=False, rich_help_panel=PANEL)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[parsed | None, option]
    )


def with_settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` one option per `Settings` field besides its own parameters, and call it with
    `settings=` the `Settings` these options override (only the options given; the rest come from the
    environment and `.env`). An invalid value ends the command with status 2 and the field's message."""
    own = inspect.signature(command, eval_str=True)
    own_params = [p for p in own.parameters.values() if p.name != "settings"]
    fields = {name: field for name, field in Settings.model_fields.items() if name not in own.parameters}

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        overrides = {name: kwargs.pop(name) for name in fields if kwargs.get(name) is not None}
        for name in fields:
            kwargs.pop(name, None)
        command(settings=load_settings(**overrides), **kwargs)

    params = own_params + [_parameter(name, field) for name, field in fields.items()]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def load_settings(**overrides: Any) -> Settings:
    """`Settings` from the environment and `.env`, with `overrides` on top; an invalid value (given or from
    the environment) exits with status 2 and says which variable and why."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_name(str(error['loc'][0])) if error['loc'] else 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        typer.echo(f"error: invalid setting: {problems}", err=True)
        raise typer.Exit(2) from None


def effective(settings: Settings) -> dict[str, Any]:
    """Every setting's value as JSON-ready data, the API key masked (`********` when set, else null)."""
    values = json.loads(settings.model_dump_json())
    for name, value in settings:
        if isinstance(value, SecretStr):
            values[name] = MASK
    return values
