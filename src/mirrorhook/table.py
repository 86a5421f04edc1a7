"""Aligned text tables for people reading a terminal."""

from __future__ import annotations

from collections.abc import Sequence

from mirrorhook.escape import printable

_COLOURS = {
    "green": "\033[32m",
    "yellow": "\033[33m",
    "red": "\033[31m",
    "dim": "\033[2m",
}
_RESET = "\033[0m"
_WORDS = {
    "green": ("delivered", "synced", "up-to-date", "idle", "fresh"),
    "yellow": ("retrying", "waiting", "syncing", "behind", "never tried", "superseded"),
    "red": ("failed", "interrupted", "stale", "unreachable", "held"),
    "dim": ("gone", "disabled", "never", "unknown", "no webhook"),
}


def colour_of(word: str) -> str | None:
    """The colour a status word is shown in on a terminal, if any."""
    for colour, words in _WORDS.items():
        if word in words:
            return colour
    return None


def paint(text: str, colour: str | None, *, enabled: bool) -> str:
    """Wrap ``text`` in an ANSI colour when ``enabled`` (a terminal without NO_COLOR)."""
    if not enabled or colour is None:
        return text
    return f"{_COLOURS[colour]}{text}{_RESET}"


def format_table(
    rows: Sequence[Sequence[str]], *, right: Sequence[int] = (), colour: bool = False
) -> str:
    """Return ``rows`` (the first is the header) as aligned columns; ``right`` are numeric.

    The last column is left ragged, so a long error message does not pad every line. With
    ``colour``, status words are coloured after padding, so alignment holds. Control
    characters in cells (a mirror's answer, say) are escaped.
    """
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        cells[-1] = row[-1] if len(row) - 1 not in right else cells[-1]
        if number:
            cells = [
                paint(cell, colour_of(raw), enabled=colour)
                for cell, raw in zip(cells, row, strict=True)
            ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
