"""The layering DESIGN.md draws, checked on the code: no import cycles, only the CLI writes to the
console, and every import points down (nothing imports the CLI; the stages never import the job).

The rules are read from the source (its AST), so a new module is checked as soon as it exists.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import once_per_run

import onboard

PACKAGE = Path(onboard.__file__).resolve().parent
# The package's modules: each top-level .py file, and each subpackage (a folder with an
# __init__.py, e.g. config/) taken as one module made of all its files.
MODULES = sorted(
    [path.stem for path in PACKAGE.glob("*.py")]
    + [path.parent.name for path in PACKAGE.glob("*/__init__.py")]
)
# Running onboard/__main__.py is running the CLI: importing it is not a layering question.
IMPORTABLE = [name for name in MODULES if name != "__main__"]
# The one module that talks to the terminal: it parses, prints, and maps errors to exit codes.
CONSOLE_MODULES = {"cli"}
# What only the entry points may import: the CLI (nothing imports it but `python -m onboard`).
CLI_IMPORTERS = {"__main__"}
# DESIGN.md's stages below job.py, and the modules under them all: none may import the job (or
# the CLI), so a stage is used, and tested, without the orchestration above it.
BELOW_THE_JOB = {
    "reader", "decide", "checks", "pool", "runner", "graph", "journal", "audit", "report",
    "connect", "config", "outcomes", "errors", "rate", "retrying", "simulator",
    "deliver", "mail", "lifecycle",
}  # fmt: skip
# Names that reach the console stream objects, on `sys`.
STREAMS = {"stdout", "stderr", "__stdout__", "__stderr__"}
# Calls that write to the console (stderr by default) without naming a stream.
CONSOLE_CALLS = {
    ("traceback", "print_exc"), ("traceback", "print_exception"), ("traceback", "print_stack"),
    ("traceback", "print_tb"), ("logging", "basicConfig"), ("logging", "StreamHandler"),
    ("faulthandler", "enable"), ("pprint", "pprint"),
}  # fmt: skip
# Each module imported on its own: every onboard module is dropped from sys.modules first, so
# each import starts from nothing, as in a fresh interpreter (the third-party libraries stay
# loaded: they are not what a cycle is made of).
IMPORT_EACH = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "onboard" or m.startswith("onboard.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def _tree(module: str) -> ast.Module:
    """A module's source; a subpackage's files as one module, its relative imports read as
    from the top package (`from ..x` is onboard.x; `from .y` stays inside, the package itself)."""
    path = PACKAGE / f"{module}.py"
    if path.exists():
        return _parse(path)
    body: list[ast.stmt] = []
    for part in sorted((PACKAGE / module).glob("*.py")):
        tree = _parse(part)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                node.module, node.names = module, [ast.alias(name="*")]
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                node.level -= 1
        body += tree.body
    assert body, f"no module or package named {module}"
    return ast.Module(body=body, type_ignores=[])


def imported_modules(tree: ast.Module) -> set[str]:
    """The onboard modules a module's source imports (anywhere in it, functions included);
    `from . import __version__` is the package itself, "__init__"."""

    def named(module: str | None, names: list[str]) -> set[str]:
        if module:  # from .x import y / from onboard.x import y: module x
            return {module.split(".")[0]}
        return {name if name in MODULES else "__init__" for name in names}

    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= named(node.module, [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top, _, rest = node.module.partition(".")
            if top == "onboard":
                found |= named(rest or None, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                if top == "onboard":
                    found.add(rest.split(".")[0] if rest else "__init__")
    return found


def console_writes(tree: ast.Module) -> list[str]:
    """Where a module's source writes to the console, as "line: what": print (called or
    passed on), the sys stream objects (sys.stderr, `from sys import stdout`), tqdm, and the
    calls that write to stderr by default (traceback.print_exc, logging.StreamHandler...)."""
    sys_names = {"sys"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            sys_names |= {a.asname for a in node.names if a.name == "sys" and a.asname}
    found: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name) and node.id == "print":
            found.append(f"{line}: print")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, attr = node.value.id, node.attr
            if (owner in sys_names and attr in STREAMS) or (owner, attr) in CONSOLE_CALLS:
                found.append(f"{line}: {owner}.{attr}")
            elif owner == "builtins" and attr == "print":
                found.append(f"{line}: builtins.print")
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            found += [f"{line}: from sys import {a.name}" for a in node.names if a.name in STREAMS]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names]
            found += [f"{line}: import {n}" for n in names if n.split(".")[0] == "tqdm"]
    return found


@pytest.fixture(scope="session")
def import_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each module imported alone, in one fresh interpreter (once in the whole run):
    {module: traceback} for those that fail."""

    def import_each() -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_EACH, *(f"onboard.{name}" for name in IMPORTABLE)],
            cwd=tmp_path_factory.mktemp("imports"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        failures: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
        return failures

    made: dict[str, str] = once_per_run(tmp_path_factory, "import_failures", import_each)
    return made


@pytest.mark.parametrize("module", IMPORTABLE)
def test_each_module_imports_on_its_own(module: str, import_failures: dict[str, str]) -> None:
    """Importing the module first, in a fresh interpreter, works: no import cycle through it."""
    name = f"onboard.{module}"
    assert name not in import_failures, import_failures[name]


def test_the_console_check_finds_the_clis_writes() -> None:
    """The console scan sees cli.py's prints and stderr: the rule below is not vacuous."""
    writes = console_writes(_tree("cli"))
    assert any(": print" in w for w in writes) and any("sys.stderr" in w for w in writes)


@pytest.mark.parametrize("module", sorted(set(MODULES) - CONSOLE_MODULES))
def test_only_the_cli_writes_to_the_console(module: str) -> None:
    """The module neither prints nor writes to stdout or stderr: output is the CLI's."""
    assert console_writes(_tree(module)) == []


def test_the_import_scan_finds_the_clis_imports() -> None:
    """The import scan sees what cli.py imports, package-level names included."""
    assert {"job", "config", "history", "simulator", "__init__"} <= imported_modules(_tree("cli"))


@pytest.mark.parametrize("module", sorted(set(MODULES) - CLI_IMPORTERS))
def test_nothing_imports_the_cli(module: str) -> None:
    """The module does not import cli.py: every import points away from the CLI."""
    assert "cli" not in imported_modules(_tree(module))


@pytest.mark.parametrize("module", sorted(BELOW_THE_JOB))
def test_the_stages_never_import_the_job(module: str) -> None:
    """The stage (or a module under the stages) imports neither job.py nor cli.py."""
    assert {"job", "cli"}.isdisjoint(imported_modules(_tree(module)))


def test_every_stage_named_exists() -> None:
    """The modules the layering rules name are real: a rename cannot switch a rule off."""
    assert BELOW_THE_JOB | CONSOLE_MODULES | CLI_IMPORTERS | {"job"} <= set(MODULES)


def test_a_subpackage_is_scanned_as_one_module() -> None:
    """config/ is a folder: its files' imports are all seen, `from ..errors` as onboard.errors."""
    assert "config" in MODULES
    assert {"errors", "files", "rate"} <= imported_modules(_tree("config"))
