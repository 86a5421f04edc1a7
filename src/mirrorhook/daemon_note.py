"""The running daemon's note of the config it runs, ``daemon.json``: its one owner.

After a reload is refused, the file on disk is not what runs, and ``status`` cannot tell
from the file alone (docs/design.md#what-status-shows). So ``mirrorhook serve`` notes, in
each state folder of its config (the receiver's and the publisher's ``state_dir``), its
pid, the config file and the text it runs: when it starts, after each reload — applied, the
new text; refused, the problems and a digest of the text it refused — and it removes the
note when it stops. The note is rewritten atomically, not fsynced: a live note, redone at
the next change; one that a killed daemon left names a pid that no longer runs. Kept free
of aiohttp so that ``mirrorhook status`` starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from mirrorhook.config import Config
from mirrorhook.state import iso_time, pid_alive, read_json, write_json

logger = logging.getLogger(__name__)

NOTE_NAME = "daemon.json"


def digest(text: str) -> str:
    """The sha256 of a config file's text, by which a refused file is known again."""
    return hashlib.sha256(text.encode()).hexdigest()


def config_key(path: Path) -> str:
    """How a note names its config file: resolved, so that ``-c`` spelt another way (a
    relative path, a symbolic link) still finds it."""
    return str(path.resolve())


@dataclass(frozen=True, slots=True)
class Refusal:
    """The last reload that was refused: when, why, and the text refused (by digest)."""

    at: str
    problems: tuple[str, ...]
    digest: str | None
    """``None`` when the file could not be read at all."""


@dataclass(frozen=True, slots=True)
class ConfigNote:
    """What a running ``serve`` runs: its pid, its config file and that file's text as it
    was loaded (at start, or at the last reload that was applied)."""

    pid: int
    config: str
    """The config file (``config_key``)."""
    text: str
    loaded_at: str
    refused: Refusal | None = None
    """The last reload, when it was refused after the text was loaded."""

    @classmethod
    def of(cls, config: Config) -> Self:
        """This process's note, running ``config`` from now on."""
        return cls(os.getpid(), config_key(config.path), config.text, iso_time(time.time()))

    def as_json(self) -> dict[str, Any]:
        refused = self.refused
        return {
            "pid": self.pid,
            "config": self.config,
            "text": self.text,
            "loaded_at": self.loaded_at,
            "refused": None
            if refused is None
            else {"at": refused.at, "problems": list(refused.problems), "digest": refused.digest},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self | None:
        """The note in ``raw``; ``None`` when it is not one (absent, or edited by hand)."""
        pid, config, text, loaded_at = (
            raw.get(key) for key in ("pid", "config", "text", "loaded_at")
        )
        if not (
            isinstance(pid, int) and all(isinstance(v, str) for v in (config, text, loaded_at))
        ):
            return None
        return cls(pid, str(config), str(text), str(loaded_at), _refusal(raw.get("refused")))


def _refusal(raw: object) -> Refusal | None:
    if not isinstance(raw, dict):
        return None
    at, problems, text_digest = raw.get("at"), raw.get("problems"), raw.get("digest")
    if not isinstance(at, str) or not isinstance(problems, list):
        return None
    shown = tuple(str(problem) for problem in problems)
    return Refusal(at, shown, text_digest if isinstance(text_digest, str) else None)


def note_folders(config: Config) -> tuple[Path, ...]:
    """The state folders of ``config``'s roles, where its daemon's note is kept."""
    folders = [host.state_dir for host in (config.receivers, config.publishers) if host]
    return tuple(dict.fromkeys(folders))


def live_note(folders: Iterable[Path], path: Path) -> ConfigNote | None:
    """The note of a daemon that runs config file ``path`` now, if one of ``folders`` has it."""
    for folder in folders:
        note = ConfigNote.from_json(read_json(folder / NOTE_NAME))
        if note is not None and note.config == config_key(path) and pid_alive(note.pid):
            return note
    return None


class ConfigNotes:
    """The daemon's side: keeps its note in every state folder of the config it started
    with (a reload changes no state folder: that waits for a restart)."""

    def __init__(self, config: Config) -> None:
        self.note = ConfigNote.of(config)
        self._folders = note_folders(config)

    async def loaded(self, config: Config) -> None:
        """Note that ``config`` runs now (the daemon started with it, or applied it)."""
        self.note = ConfigNote.of(config)
        await self._write()

    async def refused(self, problems: Iterable[str], text: str | None) -> None:
        """Note that a reload of ``text`` was refused for ``problems``: the note's text runs."""
        refusal = Refusal(
            iso_time(time.time()), tuple(problems), None if text is None else digest(text)
        )
        self.note = dataclasses.replace(self.note, refused=refusal)
        await self._write()

    async def remove(self) -> None:
        """Remove the note: the daemon stops."""
        await asyncio.to_thread(self._remove_now)

    async def _write(self) -> None:
        await asyncio.to_thread(self._write_now, self.note.as_json())

    def _write_now(self, document: dict[str, Any]) -> None:
        for folder in self._folders:
            try:
                write_json(folder / NOTE_NAME, document, durable=False)
            except OSError as err:
                # Best effort, as the live note in receiver.json: status then reads the file.
                logger.warning("cannot write %s: %s", folder / NOTE_NAME, err.strerror or err)

    def _remove_now(self) -> None:
        for folder in self._folders:
            path = folder / NOTE_NAME
            note = ConfigNote.from_json(read_json(path))
            if note is not None and note.pid == self.note.pid:  # never another daemon's
                with contextlib.suppress(OSError):
                    path.unlink()
