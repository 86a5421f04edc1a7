"""Status output for people: aligned columns, colour only when asked (on a terminal)."""

from __future__ import annotations

import re
from typing import Any

from mirrorhook.status import format_status

ANSI = re.compile(r"\033\[[0-9;]*m")

STATUS: dict[str, Any] = {
    "receiver": {
        "upstream": "rsync://up/ius/",
        "target": "/srv/mirror/ius",
        "local_marker": "7",
        "state": "idle",
        "next_poll": None,
        "last_sync": {
            "result": "failed",
            "trigger": "poll",
            "started": "t",
            "duration": 1.0,
            "error": "rsync exited with code 5 (permanent): @ERROR: auth failed",
            "stderr_tail": ["@ERROR: auth failed on module ius"],
        },
        "last_success": None,
    },
    "publisher": {
        "root": "/srv/repo/ius",
        "marker_file": "CURRENT",
        "current_marker": "7",
        "mirrors": [
            {
                "name": "a",
                "delivered": "7",
                "delivered_at": "t1",
                "result": "delivered",
                "attempts": 1,
                "last_error": None,
            },
            {
                "name": "long-name",
                "delivered": None,
                "delivered_at": None,
                "result": "retrying",
                "attempts": 12,
                "last_error": "HTTP 503",
            },
        ],
    },
}


def test_plain_output_has_no_escape_codes_and_aligned_columns() -> None:
    text = format_status(STATUS)
    assert not ANSI.search(text)
    rows = [line for line in text.splitlines() if line.strip().startswith(("a ", "long-name"))]
    assert len(rows) == 2
    assert rows[0].index("delivered") == rows[1].index("retrying")


def test_colour_marks_status_words_and_keeps_alignment() -> None:
    coloured = format_status(STATUS, colour=True)
    assert "\033[32mdelivered" in coloured
    assert "\033[33mretrying" in coloured
    assert "\033[31m" in coloured  # the failed sync
    assert ANSI.sub("", coloured) == format_status(STATUS)


def test_a_refused_marker_is_shown_as_refused() -> None:
    """A marker refused by the rules shows as refused, with the reason, on both roles."""
    status = {
        "receiver": {
            **STATUS["receiver"],
            "local_marker": None,
            "local_marker_error": "it is a symbolic link (not followed)",
        },
        "publisher": {
            **STATUS["publisher"],
            "current_marker": None,
            "current_marker_error": "it is not a regular file but a FIFO",
        },
    }
    text = format_status(status)
    assert "local marker: (refused: it is a symbolic link (not followed))" in text
    assert "marker /srv/repo/ius/CURRENT: (refused: it is not a regular file but a FIFO)" in text
