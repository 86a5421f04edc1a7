"""Text that others wrote is shown escaped: in log lines, tables and status."""

from __future__ import annotations

import io
import logging

import pytest

from mirrorhook import log
from mirrorhook.escape import printable
from mirrorhook.status import format_receiver
from mirrorhook.table import format_table


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, with spaces", "plain text, with spaces"),
        ("é ü 日本", "é ü 日本"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("one\nINFO forged", "one\\nINFO forged"),
        ("bell\x07 del\x7f nul\x00", "bell\\x07 del\\x7f nul\\x00"),
        ("c1\x9b", "c1\\x9b"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_log_lines_escape_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook field or a mirror's answer in a log message cannot forge a second line."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        log.setup(verbose=False)
        logging.getLogger("mirrorhook.test").warning(
            "webhook from %s", "evil\n2026-11-25 INFO forged\x1b[2J"
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("webhook from evil\\n2026-11-25 INFO forged\\x1b[2J")


def test_tables_and_status_escape_their_cells() -> None:
    table = format_table([("MIRROR", "ERROR"), ("m", "HTTP 500: \x1b]0;pwned\x07")])
    assert "\x1b" not in table
    assert "\\x1b]0;pwned\\x07" in table
    status = format_receiver(
        {
            "upstream": "rsync://u/m/",
            "target": "/srv/m",
            "local_marker": "1\x1b[31m",
            "state": "idle",
            "last_sync": {"result": "failed", "error": "rsync said \x1b[2J", "stderr_tail": []},
        }
    )
    assert "\x1b" not in status
