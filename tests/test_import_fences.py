"""The layering holds: dependencies point cli -> moa_stream -> engine, and eval uses only the public API.

Every file is parsed with `ast` (nothing is imported, so no import side effects and no optional packages needed);
imports inside functions and `if TYPE_CHECKING:` blocks count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TERMINAL_ONLY = ("rich", "argparse")  # a terminal's concerns: only moa_stream/cli/ (and eval/) may import them


@dataclass(frozen=True)
class Import:
    """One imported module (and, for `from m import a, b`, the names), with where it was written."""

    file: Path
    line: int
    module: str  # absolute dotted name
    names: tuple[str, ...] = ()  # empty for `import m`

    def where(self) -> str:
        """`path:line` relative to the repository, for failure messages."""
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    """The dotted module name of a file under ROOT (a package's `__init__.py` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[Import]:
    """Every import in a file, relative ones resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield Import(path, node.lineno, module, tuple(a.name for a in node.names))


def python_files(folder: str) -> list[Path]:
    """Every .py file under a top-level folder of the repository."""
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def top(module: str) -> str:
    """The top-level package of a dotted name."""
    return module.partition(".")[0]


def is_cli(path: Path) -> bool:
    """Whether a file belongs to moa_stream/cli/, the terminal layer."""
    return path.is_relative_to(ROOT / "moa_stream" / "cli")


# The packages a harness may drive: the product's front door and the public subpackages that keep their own
# `__all__` (the tools and their BFCL toolsets, the agent's context formats, the server, the event bus, the
# CLI's option types that the eval and bench commands plug into).
PUBLIC_PACKAGES = ("moa_stream", "moa_stream.tools", "moa_stream.agent.formats", "moa_stream.server",
                   "moa_stream.bus", "moa_stream.cli")


def public_api(package: str = "moa_stream") -> set[str]:
    """The names in a package's `__init__.py` `__all__`, read from its source."""
    init = ROOT.joinpath(*package.split("."), "__init__.py")
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"{init.relative_to(ROOT)} has no literal __all__")


def offences(found: list[str]) -> str:
    """A failure message listing every offending import, one a line."""
    return "\n".join(["", *found])


def test_the_fences_see_every_package() -> None:
    """The walk finds the files it guards (a renamed folder must not make the other tests pass vacuously)."""
    assert python_files("engine") and python_files("moa_stream") and python_files("eval")
    assert any(is_cli(p) for p in python_files("moa_stream"))
    assert any(not is_cli(p) for p in python_files("moa_stream"))


def test_engine_never_imports_moa_stream() -> None:
    """engine/ is the bottom layer: tokens and KV only."""
    found = [f"{i.where()}: imports {i.module}" for p in python_files("engine") for i in imports(p)
             if top(i.module) == "moa_stream"]
    assert not found, "engine/ must not import moa_stream:" + offences(found)


@pytest.mark.parametrize("folder", ["engine", "moa_stream"])
def test_only_the_cli_imports_rich_or_argparse(folder: str) -> None:
    """engine/ and the moa_stream core are libraries; terminal output and option parsing live in moa_stream/cli/."""
    found = [f"{i.where()}: imports {i.module}" for p in python_files(folder) if not is_cli(p)
             for i in imports(p) if top(i.module) in TERMINAL_ONLY]
    assert not found, f"only moa_stream/cli/ may import {' or '.join(TERMINAL_ONLY)}:" + offences(found)


def test_eval_uses_only_the_public_api() -> None:
    """eval/ imports `from P import X` with P a public package and X in its `__all__`, never a private module."""
    apis = {p: public_api(p) for p in PUBLIC_PACKAGES}
    found = []
    for p in python_files("eval"):
        for i in imports(p):
            if top(i.module) != "moa_stream":
                continue
            if i.module not in apis or not i.names:
                found.append(f"{i.where()}: imports {i.module} (use `from moa_stream import ...` or a public "
                             f"subpackage: {', '.join(PUBLIC_PACKAGES[1:])})")
            else:
                found += [f"{i.where()}: imports {i.module}.{n}, which its __all__ does not export"
                          for n in i.names if n not in apis[i.module]]
    assert not found, "eval/ may use only the names the public packages export:" + offences(found)


def test_the_checker_resolves_relative_imports() -> None:
    """`from ..bus import x` inside moa_stream/cli/ resolves to moa_stream.bus (the fences see relative imports)."""
    path = ROOT / "moa_stream" / "cli" / "run.py"
    resolved = {i.module for i in imports(path)}
    assert "moa_stream.cli.options" in resolved
    assert module_name(ROOT / "moa_stream" / "bus" / "__init__.py") == "moa_stream.bus"


def engine_exports() -> tuple[set[str], set[str]]:
    """engine/__init__.py's `__all__` and its `PUBLIC_MODULES` (the submodules other layers may import by path)."""
    tree = ast.parse((ROOT / "engine" / "__init__.py").read_text(encoding="utf-8"))
    found = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name) and t.id in ("__all__", "PUBLIC_MODULES")}
    return set(found["__all__"]), set(found["PUBLIC_MODULES"])


def module_all(module: str) -> set[str] | None:
    """A module's literal `__all__`, read from its source (None if it has none)."""
    base = ROOT.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def outside_engine() -> list[Path]:
    """The files of the layers above the engine: the product, the harness and the command."""
    return [*python_files("moa_stream"), *python_files("eval"), ROOT / "cli.py"]


def test_other_layers_import_only_what_the_engine_exports() -> None:
    """Above engine/, an import names `engine` or one of its PUBLIC_MODULES, and only names they export."""
    names, modules = engine_exports()
    found = []
    for p in outside_engine():
        for i in imports(p):
            if top(i.module) != "engine":
                continue
            sub = i.module.removeprefix("engine").removeprefix(".")
            if sub == "":
                found += [f"{i.where()}: imports engine.{n}, which engine/__init__.py does not export"
                          for n in i.names if n not in names | modules]
            elif sub not in modules:
                found.append(f"{i.where()}: imports {i.module} (import from `engine` or one of its PUBLIC_MODULES)")
            elif (public := module_all(i.module)) is not None:
                found += [f"{i.where()}: imports {i.module}.{n}, which its __all__ does not export"
                          for n in i.names if n not in public]
    assert not found, "other layers may use only what the engine exports:" + offences(found)


def test_the_product_never_imports_the_harness() -> None:
    """moa_stream/ and engine/ never import eval/: the harness drives the product, not the other way round."""
    found = [f"{i.where()}: imports {i.module}" for folder in ("moa_stream", "engine") for p in python_files(folder)
             for i in imports(p) if top(i.module) == "eval"]
    assert not found, "the product must not import eval/:" + offences(found)
