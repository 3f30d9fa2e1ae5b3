"""The one table printer, with ``rich``: `sparsejax.summary`, the demo's stages and the benchmarks.

Columns are aligned (the first left, the others right unless told), a table can end in totals
rows set off by a rule, and the title and caption are printed on their own lines, never wrapped
into the table. `render_table` returns the text; `print_table` prints it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

__all__ = ["format_cell", "print_table", "render_table"]


def format_cell(value: Any) -> str:
    """A cell's text: floats with 4 decimals (very small or large ones in scientific notation),
    bools as yes/NO, ``None`` as ``-``, anything else (strings included) as ``str``."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "NO", None: "-"}[value]
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def render_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                 caption: str | None = None, totals: Sequence[Sequence[Any]] = (),
                 left: int = 1, width: int = 110) -> str:
    """The table as text.

    Args:
        title: the table's heading (``None``: none).
        columns: the column names.
        rows: one sequence per row, as many cells as ``columns`` (see `format_cell`).
        caption: a line printed under the table (units, what the columns mean).
        totals: rows printed after a rule under ``rows``.
        left: how many leading columns are left-aligned (the rest are right-aligned).
        width: the narrowest console width used (longer titles or captions widen it).

    Raises:
        ValueError: a row without one cell per column.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(Text(name), justify="left" if i < left else "right")
    body = list(rows)
    for i, row in enumerate([*body, *totals]):
        if len(row) != len(columns):
            raise ValueError(f"each row must have {len(columns)} cells (one per column); "
                             f"got {len(row)}: {row!r}")
        table.add_row(*(Text(format_cell(v)) for v in row),
                      end_section=bool(totals) and i == len(body) - 1)
    out = io.StringIO()
    console = Console(file=out, width=max(width, len(title or "") + 2, len(caption or "") + 2),
                      emoji=False, markup=False, highlight=False, color_system=None)
    if title:
        console.print(Text(title))
    console.print(table)
    if caption:
        console.print(Text(caption))
    return out.getvalue().rstrip("\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                caption: str | None = None, totals: Sequence[Sequence[Any]] = (),
                left: int = 1) -> None:
    """Print `render_table`'s text (same arguments)."""
    print(render_table(title, columns, rows, caption=caption, totals=totals, left=left))
