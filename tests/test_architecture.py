"""docs/architecture.md names modules and symbols that exist: every module of its module table imports, every
`Name` (a class) and `name()` (a function) in backticks on a row is an attribute of that row's module, and
every `voxtral_local/...` path anywhere in the page is a file or folder of the package."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()
PACKAGE = "voxtral_local"

CLASS = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*(\.[a-z_][A-Za-z0-9_]*)?$")  # `Name`, `Name.method`
FUNCTION = re.compile(r"^[a-z_][a-z0-9_]*\(\)$")  # `name()`


def table_rows() -> list[tuple[str, str]]:
    """(module cell, description cell) of each row of the table under "## Modules"."""
    section = DOC.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue  # prose, the header, the separator
        rows.append((cells[0], " | ".join(cells[1:])))
    return rows


def module_name(cell: str) -> str | None:
    """The dotted module of a table cell such as `api/app.py` or `testing/`; None for a group of files."""
    match = re.fullmatch(r"`([\w/]+?)(\.py|/)`", cell)
    if match is None:
        return None
    return ".".join([PACKAGE, *match.group(1).split("/")])


ROWS = table_rows()


def test_the_table_has_the_layers() -> None:
    modules = {module_name(cell) for cell, _ in ROWS}
    for layer in ("api.app", "services.transcription", "models.registry", "backends.base", "responses.chat"):
        assert f"{PACKAGE}.{layer}" in modules


@pytest.mark.parametrize(("cell", "text"), ROWS, ids=[cell.strip("`") for cell, _ in ROWS])
def test_each_rows_module_and_symbols_exist(cell: str, text: str) -> None:
    name = module_name(cell)
    if name is None:  # `api/` (the rest): its files are named in the text
        for file in re.findall(r"`(\w+\.py)`", text):
            assert (ROOT / PACKAGE / cell.split("`")[1] / file).is_file(), file
        return
    module = importlib.import_module(name)
    for symbol in re.findall(r"`([^`]+)`", text):
        if CLASS.match(symbol) or FUNCTION.match(symbol):
            assert has(module, symbol.removesuffix("()")), f"{name} has no {symbol}"


def has(module: ModuleType, dotted: str) -> bool:
    target: object = module
    for part in dotted.split("."):
        if not hasattr(target, part):
            return False
        target = getattr(target, part)
    return True


def test_every_package_path_in_the_page_exists() -> None:
    paths = set(re.findall(r"\bvoxtral_local/[\w/]*(?:\.py)?", DOC))
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), path


def test_dotted_names_in_the_diagram_resolve() -> None:
    """`services.chat.ChatService`-style names in the diagram: module, then attribute."""
    diagram = DOC.split("```", 2)[1]
    dotted = set(re.findall(r"\b((?:api|services|models|backends|audio|responses)(?:\.[a-z_]+)+\.[A-Z]\w+)", diagram))
    assert dotted
    for name in dotted:
        module, _, attribute = name.rpartition(".")
        assert hasattr(importlib.import_module(f"{PACKAGE}.{module}"), attribute), name


def test_the_table_names_many_symbols() -> None:
    """The check above is not vacuous: the table names dozens of classes and functions."""
    symbols = [s for _, text in ROWS for s in re.findall(r"`([^`]+)`", text) if CLASS.match(s) or FUNCTION.match(s)]
    assert len(symbols) > 40


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules a file of the package imports (relative imports resolved; `from x
    import y` gives both `x` and `x.y`, as y may be a module)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def files_under(folder: str) -> list[Path]:
    return sorted((ROOT / PACKAGE / folder).rglob("*.py"))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("layer", ["backends", "services", "models", "audio"])
def test_the_inner_layers_import_no_web_framework(layer: str) -> None:
    assert files_under(layer)
    for path in files_under(layer):
        web = {n for n in imported_modules(path) if within(n, "fastapi") or within(n, "starlette")}
        assert not web, f"{path.relative_to(ROOT)} imports {sorted(web)}"


def test_the_backends_import_neither_services_nor_models() -> None:
    for path in files_under("backends"):
        upward = {
            n for n in imported_modules(path) if within(n, f"{PACKAGE}.services") or within(n, f"{PACKAGE}.models")
        }
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"


def test_the_model_layer_knows_backends_only_by_their_interface() -> None:
    for path in files_under("models"):
        backends = {n for n in imported_modules(path) if within(n, f"{PACKAGE}.backends")}
        assert backends <= {f"{PACKAGE}.backends.base", f"{PACKAGE}.backends.base.ModelBackend"}, path


def test_the_import_check_sees_relative_imports() -> None:
    """Not vacuous: the registry's relative imports resolve to the package's modules."""
    names = imported_modules(ROOT / PACKAGE / "models" / "registry.py")
    assert {f"{PACKAGE}.backends.base", f"{PACKAGE}.models.store", f"{PACKAGE}.models.state"} <= names
