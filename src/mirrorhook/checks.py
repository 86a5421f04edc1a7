"""Checking configuration values, every problem recorded with its file and key.

``Table`` walks one TOML table and collects problems as ``FILE: key.path: problem``; each
checker returns the converted value or raises ``ValueError(problem)``, which ``Table.get``
records. Secret files are read here too, refusing the ones others could read or change.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mirrorhook.addresses import Listen, parse_listen
from mirrorhook.keys import PublicKey, SigningKey, parse_public_keys
from mirrorhook.signing import Secret

_MARKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# rsync source forms: rsync://HOST[:PORT]/MODULE[/PATH], [USER@]HOST::MODULE[/PATH],
# [USER@]HOST:PATH, or an absolute local path.
_RSYNC_URL_RE = re.compile(r"rsync://([^/@\s]+@)?[^/\s]+/[^\s]+")
_DAEMON_RE = re.compile(r"([^/@:\s]+@)?[^/:\s]+::[^\s]+")
_OTHER_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SSH_RE = re.compile(r"([^/@:\s]+@)?[^/:\s]+:[^\s:][^\s]*")


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass ``cls``'s field ``name``: defaults live in the dataclass only."""
    for spec in dataclasses.fields(cls):
        if spec.name == name:
            if spec.default is not dataclasses.MISSING:
                return spec.default
            if spec.default_factory is not dataclasses.MISSING:
                return spec.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def valid(value: object) -> bool:
    return value is not None and value is not INVALID


def load_secret(t: Table, key: str, path: Path) -> Secret | None:
    """Read a secret file, refusing one that other users can read, change or own."""
    return _load_key(t, key, path, "secret file", Secret.parse, private=True)


def load_signing_key(t: Table, key: str, path: Path) -> SigningKey | None:
    """Read a private key file (``whsk_``), refusing one that others can read, change or own."""
    return _load_key(t, key, path, "private key file", SigningKey.parse, private=True)


def load_public_keys(t: Table, key: str, path: Path) -> tuple[PublicKey, ...] | None:
    """Read a public key file (``whpk_`` lines): anyone may read it, but only its owner (this
    user or root) may change it, since whoever can change it decides which webhooks pass."""
    return _load_key(t, key, path, "public key file", parse_public_keys, private=False)


_K = TypeVar("_K")
MAX_KEY_FILE = 4096
"""Bytes a secret or key file may hold: a few short lines."""


def _load_key(
    t: Table, key: str, path: Path, what: str, parse: Callable[[str], _K], *, private: bool
) -> _K | None:
    try:
        return read_key_file(path, what, parse, private=private)
    except ValueError as err:
        t.problem(key, str(err))
        return None


def read_key_file(path: Path, what: str, parse: Callable[[str], _K], *, private: bool) -> _K:
    """Read and parse a key file; ``ValueError`` says what is wrong (never the key): it
    cannot be read, others may read (a ``private`` one) or change it, or it holds no key."""
    try:
        # Non-blocking: a FIFO planted at the path must not hang the config's loading.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())  # of the file read, not of a path swapped meanwhile
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{what} {path} is not a regular file")
            data = file.read(MAX_KEY_FILE + 1)
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"{what} {path} is larger than {MAX_KEY_FILE} bytes: not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None
    if problem := unsafe_secret_file(info, private=private):
        raise ValueError(f"{what} {path} {problem}")
    try:
        return parse(text)
    except ValueError as err:
        raise ValueError(f"{what} {path}: {err}") from None


def unsafe_secret_file(info: os.stat_result, *, private: bool = True) -> str | None:
    """What makes a key file unsafe to trust: who else can read (a ``private`` one), change
    or own it."""
    if private and info.st_mode & stat.S_IROTH:
        return "is world-readable: chmod 600 or 640 it"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = "600 or 640" if private else "644"
        return f"is writable by others than its owner: chmod {mode} it"
    if info.st_uid not in (0, os.geteuid()):
        return (
            f"is owned by uid {info.st_uid}, neither this user (uid {os.geteuid()}) nor root: "
            "chown it"
        )
    return None


# --- value checkers: each returns the converted value or raises ValueError(problem) ---

_T = TypeVar("_T")
INVALID: Any = object()
MISSING: Any = object()


class Table:
    """One TOML table being validated; problems accumulate in a shared list."""

    def __init__(self, path: Path, prefix: str, data: dict[str, Any], problems: list[str]):
        self.path = path
        self.prefix = prefix
        self.data = data
        self.problems = problems

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {self.prefix}{key}: {message}")

    def table(self, key: str) -> Table | None:
        value = self.data[key]
        if not isinstance(value, dict):
            self.problem(key, f"must be a table ([{self.prefix}{key}]), not {kind_of(value)}")
            return None
        return Table(self.path, f"{self.prefix}{key}.", value, self.problems)

    def get(self, key: str, check: Callable[[Any], _T], default: Any = MISSING) -> _T | None:
        """Return the checked value of ``key``; record a problem and return a sentinel if bad."""
        if key not in self.data:
            if default is MISSING:
                self.problem(key, "required key is missing")
                return None
            return default  # type: ignore[no-any-return]
        try:
            return check(self.data[key])
        except ValueError as err:
            self.problem(key, str(err))
            return INVALID  # type: ignore[no-any-return]

    def finish(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                self.problem(key, unknown_key(key, known))


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    """The problem of an unknown ``key``: the nearest known key when one is near enough
    (``bakcoff`` → ``backoff``), else every key the table takes."""
    import difflib  # noqa: PLC0415 - for a config with a mistake only

    nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if nearest:
        return f"unknown key: did you mean {nearest[0]!r}?"
    return f"unknown key (this table takes {', '.join(sorted(known))})"


def kind_of(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {kind_of(value)}")
    if not value:
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {kind_of(value)}")
    return value


def absolute_path(value: Any) -> Path:
    text = string(value)
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, not {text!r}")
    # "/srv/m/epel/../ius" is /srv/m/ius: the checks that trees do not nest must see that.
    return Path(os.path.normpath(text))


def executable(value: Any) -> str:
    text = string(value)
    if "/" in text and not text.startswith("/"):
        raise ValueError(f"must be a command name or an absolute path, not {text!r}")
    return text


def marker_name(value: Any) -> str:
    text = string(value)
    if not _MARKER_RE.fullmatch(text):
        raise ValueError(
            f"must be a plain file name in the tree root (letters, digits, '.', '_', '-'), "
            f"not {text!r}"
        )
    return text


def tree_file(value: Any) -> str:
    """A file that mirrorhook writes inside the tree: a path relative to ``target`` made of
    plain names (they become rsync filter rules, so no wildcards), never leaving it."""
    text = string(value)
    if text.startswith("/"):
        raise ValueError(f"must be a path relative to target, not the absolute {text!r}")
    parts = text.split("/")
    if ".." in parts:
        raise ValueError(f"must stay inside target: '..' is not allowed in {text!r}")
    for part in parts:
        if not _MARKER_RE.fullmatch(part):
            raise ValueError(
                "must be plain names (letters, digits, '.', '_', '-', not starting with '.') "
                f"separated by single '/', not {text!r}"
            )
    return text


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, not {kind_of(value)}")
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    return float(value)


def duration(value: Any) -> float:
    seconds = number(value)
    if seconds < 0:
        raise ValueError(f"must not be negative, not {value}")
    return seconds


def positive_duration(value: Any) -> float:
    seconds = number(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, not {value}")
    return seconds


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {kind_of(value)}")
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number between 0 and 1, not {kind_of(value)}")
    if not 0 < value <= 1:  # NaN fails this too
        raise ValueError(f"must be more than 0 and at most 1 (a share of the files), not {value}")
    return float(value)


def body_size(value: Any) -> int:
    size = positive_int(value)
    if size < 1024:
        raise ValueError(
            f"must be at least 1024 bytes (a webhook body is a few hundred), not {size}"
        )
    return size


def label(value: Any) -> str:
    text = string(value)
    if not _MARKER_RE.fullmatch(text):
        raise ValueError(f"must be letters, digits, '.', '_' or '-', not {text!r}")
    return text


def choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = string(value)
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, not {text!r}")
        return text

    return check


def webhook_url(value: Any) -> str:
    text = string(value)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    if parsed.username or parsed.password:
        raise ValueError("must not hold a login: the signature authenticates the upstream")
    return text


def base_urls(value: Any) -> tuple[str, ...]:
    """A mirror's base URLs for the mirror list: http, https, ftp or rsync, no login."""
    urls = string_list(value)
    for index, text in enumerate(urls):
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme not in ("http", "https", "ftp", "rsync") or not parsed.hostname:
            raise ValueError(f"item {index}: must be an http, https, ftp or rsync URL: {text!r}")
        if parsed.username or parsed.password:
            raise ValueError(f"item {index}: must not hold a login (it is handed to users)")
    return urls


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of strings, not {kind_of(value)}")
    items = []
    for index, item in enumerate(value):
        try:
            items.append(string(item))
        except ValueError as err:
            raise ValueError(f"item {index}: {err}") from None
    return tuple(items)


def upstream(value: Any) -> str:
    text = string(value)
    if text.startswith("-"):
        raise ValueError(f"must be an rsync source, not an option: {text!r}")
    if text.startswith("/"):
        return text
    user, at, _rest = text.removeprefix("rsync://").split("/", 1)[0].partition("@")
    if at and ":" in user:
        raise ValueError(
            "must not hold a password (rsync ignores it there): use RSYNC_PASSWORD or "
            'rsync_args = ["--password-file=FILE"]'
        )
    if text.startswith("rsync://"):
        if _RSYNC_URL_RE.fullmatch(text):
            return text
    elif _OTHER_URL_RE.match(text):
        raise ValueError(f"rsync can only fetch rsync:// URLs, not {text!r}")
    elif _DAEMON_RE.fullmatch(text) or _SSH_RE.fullmatch(text):
        return text
    raise ValueError(
        "must be rsync://HOST/MODULE/, HOST::MODULE/, [USER@]HOST:PATH/ or an absolute path, "
        f"not {text!r}"
    )


def listen_list(value: Any) -> tuple[Listen, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of addresses, not {kind_of(value)}")
    if not value:
        raise ValueError("must name at least one address")
    result = []
    for index, item in enumerate(value):
        try:
            result.append(parse_listen(string(item)))
        except ValueError as err:
            raise ValueError(f"item {index}: {err}") from None
    return tuple(result)
