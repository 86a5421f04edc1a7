"""Showing text that others wrote: control characters escaped, never replayed.

Mirrors' answers, webhook fields and rsync's output reach logs, tables and ``status``.
Printed raw, an escape sequence could rewrite the operator's terminal and a newline could
forge a log line; escaped, both are visible for what they are.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Return ``text`` with every non-printable character (controls, format characters
    such as bidi overrides, line separators) written as a Python-style escape."""
    if text.isprintable():
        return text  # the common case, checked in C
    return "".join(char if char.isprintable() or char == " " else _escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )
