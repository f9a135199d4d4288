"""Printing a benchmark's result table: rich when the bench extra is installed, plain columns otherwise.

Owns presentation only; benchmarks compute and write their JSON themselves."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], footer: str = "", *,
                width: int = 160) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
        print(f"\n{title}")
        for row in (header, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if footer:
            print(footer)
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*row)
    console = Console(width=width)
    console.print(table)
    if footer:
        console.print(footer)
