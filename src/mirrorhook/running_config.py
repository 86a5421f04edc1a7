"""What ``mirrorhook status`` shows: the config the daemon runs, which may not be the file.

A daemon that refused a reload still runs the config it loaded before; a file broken since
does not load at all. ``status`` therefore looks for the note of a daemon running this
file (``daemon_note.py``) in the file's state folders — taken from the file even when it
does not load, as far as it can be read — and shows the config that daemon runs, with one
entry saying how the file on disk stands beside it (docs/design.md#what-status-shows).
Without a running daemon, the file is what counts, as it always was.
"""

from __future__ import annotations

import enum
import re
import tomllib
from pathlib import Path
from typing import Any

from mirrorhook.config import Config, parse_config, read_config_text
from mirrorhook.daemon_note import ConfigNote, digest, live_note
from mirrorhook.errors import ConfigError
from mirrorhook.status import host_status

_SECTION = re.compile(r"\s*\[\s*([A-Za-z0-9_.\"'-]+?)\s*\]\s*(#.*)?")
_STATE_DIR = re.compile(r"""\s*state_dir\s*=\s*(["'])([^"'\n]+)\1\s*(#.*)?""")


class FileState(enum.StrEnum):
    """How the config file stands beside what the daemon runs."""

    APPLIED = "applied"
    """The daemon runs the file as it is now."""
    REFUSED = "refused"
    """The file as it is now was refused at a reload: the daemon runs an older one."""
    BROKEN = "broken"
    """The file does not load (it was not reloaded since it broke)."""
    CHANGED = "changed"
    """The file loads but differs from what runs: it was not reloaded yet."""


def status_now(path: Path) -> dict[str, Any]:
    """``status --json``: what the daemon running ``path`` runs, with the file's standing
    (``config``); without such a daemon, the file's status. ``ConfigError`` when the file
    does not load and no daemon runs it."""
    config, note = _what_runs(path)
    status = host_status(config)
    return status if note is None else {"config": file_entry(note, path), **status}


def daemon_status(running: Config, note: ConfigNote) -> dict[str, Any]:
    """``/v1/status``: the host as the daemon runs it, with the file's standing."""
    return {"config": file_entry(note, running.path), **host_status(running)}


def _what_runs(path: Path) -> tuple[Config, ConfigNote | None]:
    """The config to show, and the note of the daemon that runs it (if one does)."""
    text: str | None = None
    on_disk: Config | ConfigError
    try:
        text = read_config_text(path)
        on_disk = parse_config(path, text)
    except ConfigError as err:
        on_disk = err
    folders = (
        _state_folders(text or "")
        if isinstance(on_disk, ConfigError)
        else tuple(host.state_dir for host in (on_disk.receivers, on_disk.publishers) if host)
    )
    note = live_note(folders, path)
    if note is None or note.text == text:
        if isinstance(on_disk, ConfigError):
            raise on_disk
        return on_disk, note
    try:
        return parse_config(path, note.text), note
    except ConfigError:
        # What runs no longer loads (a secret file it names was removed, say): the file,
        # then, if it loads, with the note saying it is not what runs.
        if isinstance(on_disk, ConfigError):
            raise on_disk from None
        return on_disk, note


def file_entry(note: ConfigNote, path: Path) -> dict[str, Any]:
    """The ``config`` entry of the status: the file, the daemon that runs it and since
    when, and how the file on disk stands beside that (``FileState``), with its problems."""
    problems: list[str] | tuple[str, ...] = []
    try:
        text: str | None = read_config_text(path)
    except ConfigError as err:
        text, problems = None, err.problems
    refused = note.refused
    if text == note.text:
        state = FileState.APPLIED
    elif refused is not None and text is not None and refused.digest == digest(text):
        state, problems = FileState.REFUSED, list(refused.problems)
    elif text is None:
        state = FileState.BROKEN
    else:
        try:
            parse_config(path, text)
            state = FileState.CHANGED
        except ConfigError as err:
            state, problems = FileState.BROKEN, err.problems
    return {
        "file": str(path),
        "state": str(state),
        "daemon_pid": note.pid,
        "loaded_at": note.loaded_at,
        "refused_at": refused.at if state is FileState.REFUSED and refused else None,
        "problems": list(problems),
    }


def _state_folders(text: str) -> tuple[Path, ...]:
    """The roles' ``state_dir`` of a config file that does not load: from its TOML when it
    parses, else line by line (``state_dir = "..."`` under ``[receiver]`` or
    ``[publisher]``), since a file broken by one stray quote still says where its state is."""
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        document = _scan(text)
    found = []
    for role in ("receiver", "publisher"):
        table = document.get(role)
        value = table.get("state_dir") if isinstance(table, dict) else None
        if isinstance(value, str) and Path(value).is_absolute():
            found.append(Path(value))
    return tuple(dict.fromkeys(found))


def _scan(text: str) -> dict[str, Any]:
    document: dict[str, Any] = {}
    section = None
    for line in text.splitlines():
        if line.lstrip().startswith("["):  # a table, or an array of tables: another section
            section = heading.group(1) if (heading := _SECTION.fullmatch(line)) else None
        elif section in ("receiver", "publisher") and (key := _STATE_DIR.fullmatch(line)):
            document.setdefault(section, {}).setdefault("state_dir", key.group(2))
    return document
