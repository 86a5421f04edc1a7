"""Aligned text tables for people reading a terminal."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Return ``rows`` (the first is the header) as aligned columns; ``right`` are numeric.

    The last column is left ragged, so a long error message does not pad every line.
    """
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        cells[-1] = row[-1] if len(row) - 1 not in right else cells[-1]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
