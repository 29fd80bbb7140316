"""How the command line prints: JSON for scripts, tables that fit the terminal, progress bars.

Only click is imported here; rich loads when a table or a bar is first printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


# How cells fit a terminal (80 columns included): a cell holding a name, a number or a time is
# never broken or cut. Free-text columns wrap at spaces (folding only what has none, such as a
# path); list columns wrap between their items, so each item stays whole. A table whose unbreakable
# cells cannot fit side by side is printed as records, one "column  value" block per row.
PROSE_COLUMNS = frozenset({"description", "path", "verification", "status", "changes"})
LIST_CELL_COLUMNS = frozenset({"features", "join_keys", "tags"})
PROSE_MIN_WIDTH = 12


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """Print ``rows`` as a table that fits the terminal without cutting a name (see above)."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table

    out = console()
    cells = [[cell_text(row.get(c)) for c in columns] for row in rows]

    def natural(i: int) -> int:
        return max([cell_len(columns[i])] + [_longest_line(r[i]) for r in cells])

    def smallest(i: int) -> int:
        col, widest = columns[i], natural(i)
        if col in PROSE_COLUMNS:
            return min(widest, PROSE_MIN_WIDTH)
        if col in LIST_CELL_COLUMNS:
            words = [cell_len(w) for r in cells for w in r[i].split()] + [cell_len(col)]
            return max(words)
        return widest

    def build(widths: list[int]) -> Table:
        table = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
                      pad_edge=False, collapse_padding=True)
        for col, width in zip(columns, widths, strict=True):
            breakable = col in PROSE_COLUMNS or col in LIST_CELL_COLUMNS
            table.add_column(col, width=width, no_wrap=not breakable,
                             overflow="fold" if breakable else "ignore")
        for r in cells:
            table.add_row(*r)
        return table

    if title:
        out.print(title, style="bold", soft_wrap=True)
    widths = [smallest(i) for i in range(len(columns))]
    overhead = _table_width(out, build(widths)) - sum(widths)
    room = out.width - overhead - sum(widths)
    if room < 0:
        _print_records(out, cells, columns)
        return
    # Give the spare width to the breakable columns, one character at a time, narrowest first.
    wanted = [natural(i) for i in range(len(columns))]
    while room > 0:
        short = [i for i in range(len(columns)) if widths[i] < wanted[i]]
        if not short:
            break
        widths[min(short, key=lambda i: widths[i])] += 1
        room -= 1
    out.print(build(widths))


def _longest_line(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.splitlines()), default=0)


def _table_width(out: Any, table: Any) -> int:
    from rich.measure import Measurement

    return Measurement.get(out, out.options.update(max_width=1_000_000), table).maximum


def _print_records(out: Any, cells: list[list[str]], columns: Sequence[str]) -> None:
    """One block per row: column names on the left, values (wrapped, never cut) on the right."""
    from rich.table import Table

    key_width = max(len(c) for c in columns)
    for n, row in enumerate(cells):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, width=key_width, style="bold")
        grid.add_column(overflow="fold")
        for col, value in zip(columns, row, strict=True):
            grid.add_row(col, value)
        if n:
            out.print()
        out.print(grid)


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dict) and set(value) == {"name", "version"}:
        return f"{value['name']}@{value['version']}"  # a pinned feature, as it is written
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(v) if not isinstance(v, dict) or set(v) == {"name", "version"}
                         else json.dumps(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=_json_default)
    return str(value)


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr, fed by the store's ``progress(label, done, total)``.

    Only on a terminal: redirected, stderr holds nothing but warnings and the one error line.
    """
    if not enabled or not sys.stderr.isatty():
        yield lambda _label, _done, _total: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console(stderr=True), transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def update(label: str, done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)

        yield update
