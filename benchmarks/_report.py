"""Shared by the benchmark scripts: put a script's table into BENCHMARKS.md between its markers."""

from __future__ import annotations

import os
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(name: str, text: str, *, start: str | None = None, end: str | None = None,
                  path: Path = BENCHMARKS) -> None:
    """Replace the block between ``<!-- name -->`` and ``<!-- /name -->`` (or append it).

    Written through a temporary file and ``os.replace`` so an interrupted run never leaves a
    half-written BENCHMARKS.md.
    """
    start = start or f"<!-- {name} -->"
    end = end or f"<!-- /{name} -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    print(f"wrote {path}")
