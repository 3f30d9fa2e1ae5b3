"""Tables for the demo's stages, printed with ``rich`` (aligned, never interleaved with a bar).

Every stage collects its rows while its progress bars run and prints one table at the end with
`print_table`, so a bar can never overwrite a header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "NO", None: "-"}[value]
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                caption: str | None = None) -> None:
    """Print a table with a title, right-aligned numeric columns and an optional caption.

    Args:
        title: the table's heading.
        columns: the column names.
        rows: one sequence per row, as many cells as ``columns``; floats are shown with 4
            decimals (small ones in scientific notation), bools as yes/NO, ``None`` as ``-``.
            A cell that is already a string is shown as given.
        caption: a line printed under the table (units, what the columns mean).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold")
    for i, name in enumerate(columns):
        table.add_column(Text(name), justify="left" if i == 0 else "right")
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"each row must have {len(columns)} cells (one per column); "
                             f"got {len(row)}: {row!r}")
        table.add_row(*(Text(_fmt(v)) for v in row))
    console = Console(width=max(110, len(title) + 2, len(caption or "") + 2), emoji=False,
                      markup=False, highlight=False)
    console.print(Text(title))  # title and caption on their own lines, never wrapped to the table
    console.print(table)
    if caption:
        console.print(Text(caption))
