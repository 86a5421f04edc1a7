"""Logging set-up for the command line: stderr, one event per line, journald-aware."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from mirrorhook.escape import printable

# sd-daemon(3) priority prefixes: journald stores each line at its level.
_JOURNAL_PRIORITY = {
    logging.DEBUG: "<7>",
    logging.INFO: "<6>",
    logging.WARNING: "<4>",
    logging.ERROR: "<3>",
    logging.CRITICAL: "<2>",
}


class _Formatter(logging.Formatter):
    """Escapes control characters in the message: a mirror's answer or a webhook field
    in it must not rewrite the terminal or forge a log line (tracebacks stay as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)


class _JournalFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = _JOURNAL_PRIORITY.get(record.levelno, "<6>")
        return prefix + super().format(record)


def setup(*, verbose: bool) -> None:
    """Send log records to stderr: timestamps on a terminal or file, none under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        # journald adds its own timestamps and host; the prefix carries the level.
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # One line per request is noise at the default level; refusals are logged by us.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class TreeLog(logging.LoggerAdapter[logging.Logger]):
    """A module's logger that names the repository in each line (``ius: sync started``), so
    that the log of a host with forty repositories can be read; plain in the single form."""

    def __init__(self, logger: logging.Logger, repo: str | None) -> None:
        super().__init__(logger, {})
        self.prefix = "" if repo is None else f"{repo}: "

    def process(self, msg: object, kwargs: Any) -> tuple[object, Any]:
        return f"{self.prefix}{msg}", kwargs


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """A number and its noun, singular for one: ``1 mirror``, ``3 mirrors``,
    ``2 repositories`` (with ``plural`` where adding an s will not do)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
