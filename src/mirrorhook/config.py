"""The TOML configuration: parsed into frozen dataclasses, every problem reported at once.

Each problem reads ``FILE: key.path: problem`` so an operator can go straight to the line.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
import socket
import stat
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mirrorhook.errors import ConfigError
from mirrorhook.signing import Secret

DEFAULT_CONFIG = Path("/etc/mirrorhook/mirrorhook.toml")
CONFIG_ENV = "MIRRORHOOK_CONFIG"

_MARKER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
# rsync source forms: rsync://HOST[:PORT]/MODULE[/PATH], [USER@]HOST::MODULE[/PATH],
# [USER@]HOST:PATH, or an absolute local path.
_RSYNC_URL_RE = re.compile(r"rsync://([^/@\s]+@)?[^/\s]+/[^\s]+")
_DAEMON_RE = re.compile(r"([^/@:\s]+@)?[^/:\s]+::[^\s]+")
_OTHER_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SSH_RE = re.compile(r"([^/@:\s]+@)?[^/:\s]+:[^\s:][^\s]*")


@dataclass(frozen=True, slots=True)
class Listen:
    """One address the receiver listens on: TCP ``host``/``port`` or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """The ``[receiver]`` section: a downstream mirror's webhook service and sync engine."""

    listen: tuple[Listen, ...]
    secret: Secret
    secret_file: Path
    upstream: str
    target: Path
    state_dir: Path
    marker: str = "CURRENT"
    exclude_from: Path | None = None
    rsync: str = "rsync"
    rsync_args: tuple[str, ...] = ()
    max_delete: int | None = None
    backoff: float = 30.0
    poll_interval: float = 3600.0
    poll_jitter: float = 300.0
    retries: int = 5
    timeout: float = 21600.0
    max_body: int = 65536


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """One ``[[publisher.mirrors]]`` entry: where a mirror's webhook goes and its secret."""

    name: str
    url: str
    secret: Secret
    secret_file: Path


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """The ``[publisher]`` section: the upstream's marker watcher and webhook fan-out."""

    root: Path
    state_dir: Path
    mirrors: tuple[MirrorConfig, ...]
    listen: tuple[Listen, ...] = ()
    name: str = field(default_factory=socket.gethostname)
    marker: str = "CURRENT"
    watch: str = "inotify"
    rescan: float = 60.0
    concurrency: int = 64
    timeout: float = 10.0
    retry_for: float = 86400.0


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file; at least one role section is present."""

    path: Path
    receiver: ReceiverConfig | None = None
    publisher: PublisherConfig | None = None


def config_path(explicit: str | None) -> Path:
    """Return the config path: ``-c`` if given, else ``$MIRRORHOOK_CONFIG``, else the default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` listing every problem found."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from None

    problems: list[str] = []
    root = _Table(path, "", document, problems)
    receiver = publisher = None
    if "receiver" in document and (table := root.table("receiver")) is not None:
        receiver = _receiver(table)
    if "publisher" in document and (table := root.table("publisher")) is not None:
        publisher = _publisher(table)
    root.finish(known=("receiver", "publisher"))
    if not problems and receiver is None and publisher is None:
        problems.append(f"{path}: neither a [receiver] nor a [publisher] section: nothing to run")
    if problems:
        raise ConfigError(problems)
    return Config(path=path, receiver=receiver, publisher=publisher)


def _receiver(t: _Table) -> ReceiverConfig | None:
    required: dict[str, Any] = {
        "listen": t.get("listen", _listen_list),
        "secret_file": t.get("secret_file", _absolute_path),
        "upstream": t.get("upstream", _upstream),
        "target": t.get("target", _absolute_path),
        "state_dir": t.get("state_dir", _absolute_path),
    }
    optional: dict[str, Any] = {
        "marker": t.get("marker", _marker, "CURRENT"),
        "exclude_from": t.get("exclude_from", _absolute_path, None),
        "rsync": t.get("rsync", _executable, "rsync"),
        "rsync_args": t.get("rsync_args", _string_list, ()),
        "max_delete": t.get("max_delete", _positive_int, None),
        "backoff": t.get("backoff", _duration, 30.0),
        "poll_interval": t.get("poll_interval", _duration, 3600.0),
        "poll_jitter": t.get("poll_jitter", _duration, 300.0),
        "retries": t.get("retries", _positive_int, 5),
        "timeout": t.get("timeout", _positive_duration, 21600.0),
        "max_body": t.get("max_body", _body_size, 65536),
    }
    t.finish(known=(*required, *optional))
    target, state_dir = required["target"], required["state_dir"]
    if _valid(target) and _valid(state_dir) and state_dir.is_relative_to(target):
        t.problem("state_dir", f"must be outside target ({target}): rsync --delete would remove it")
        required["state_dir"] = _INVALID
    rsync = optional["rsync"]
    if _valid(rsync) and shutil.which(rsync) is None:
        t.problem("rsync", f"{rsync!r} is not an executable (nor on PATH): install rsync")
        optional["rsync"] = _INVALID
    secret_file = required["secret_file"]
    secret = _load_secret(t, "secret_file", secret_file) if _valid(secret_file) else None
    if secret is None or not all(map(_valid, required.values())):
        return None
    if any(value is _INVALID for value in optional.values()):
        return None
    return ReceiverConfig(secret=secret, **required, **optional)


def _publisher(t: _Table) -> PublisherConfig | None:
    required: dict[str, Any] = {
        "root": t.get("root", _absolute_path),
        "state_dir": t.get("state_dir", _absolute_path),
        "mirrors": t.get("mirrors", lambda value: _mirrors(t, value)),
    }
    optional: dict[str, Any] = {
        "listen": t.get("listen", _listen_list, ()),
        "name": t.get("name", _name, socket.gethostname()),
        "marker": t.get("marker", _marker, "CURRENT"),
        "watch": t.get("watch", _choice("inotify", "poll"), "inotify"),
        "rescan": t.get("rescan", _positive_duration, 60.0),
        "concurrency": t.get("concurrency", _positive_int, 64),
        "timeout": t.get("timeout", _positive_duration, 10.0),
        "retry_for": t.get("retry_for", _positive_duration, 86400.0),
    }
    t.finish(known=(*required, *optional))
    root, state_dir = required["root"], required["state_dir"]
    if _valid(root) and _valid(state_dir) and state_dir.is_relative_to(root):
        t.problem("state_dir", f"must be outside root ({root}): mirrors would copy it")
        return None
    if not all(map(_valid, required.values())):
        return None
    if any(value is _INVALID for value in optional.values()):
        return None
    return PublisherConfig(**required, **optional)


def _mirrors(t: _Table, value: Any) -> tuple[MirrorConfig, ...] | None:
    """Check ``[[publisher.mirrors]]``; problems inside an entry are reported with its index."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("must be an array of tables ([[publisher.mirrors]])")
    if not value:
        raise ValueError("must list at least one mirror")
    mirrors: list[MirrorConfig] = []
    ok = True
    names: set[str] = set()
    for index, item in enumerate(value):
        entry = _Table(t.path, f"{t.prefix}mirrors[{index}].", item, t.problems)
        name: Any = entry.get("name", _name)
        url: Any = entry.get("url", _webhook_url)
        secret_file: Any = entry.get("secret_file", _absolute_path)
        entry.finish(known=("name", "url", "secret_file"))
        secret = _load_secret(entry, "secret_file", secret_file) if _valid(secret_file) else None
        if _valid(name) and name in names:
            entry.problem("name", f"{name!r} is used by another mirror already")
            ok = False
        names.add(str(name))
        if secret is None or not (_valid(name) and _valid(url)):
            ok = False
            continue
        mirrors.append(MirrorConfig(name=name, url=url, secret=secret, secret_file=secret_file))
    # Problems were recorded entry by entry; None keeps the section from loading.
    return tuple(mirrors) if ok else None


def _valid(value: object) -> bool:
    return value is not None and value is not _INVALID


def _load_secret(t: _Table, key: str, path: Path) -> Secret | None:
    """Read a secret file, refusing one that other users can read, change or own."""
    try:
        with path.open("rb") as file:
            info = os.fstat(file.fileno())  # of the file read, not of a path swapped meanwhile
            text = file.read().decode("utf-8")
    except OSError as err:
        t.problem(key, f"cannot read secret file {path}: {err.strerror}")
        return None
    except UnicodeDecodeError:
        t.problem(key, f"secret file {path} is not UTF-8 text")
        return None
    if problem := _unsafe_secret_file(info):
        t.problem(key, f"secret file {path} {problem}")
        return None
    try:
        return Secret.parse(text)
    except ValueError as err:
        t.problem(key, f"secret file {path}: {err}")
        return None


def _unsafe_secret_file(info: os.stat_result) -> str | None:
    """What makes a secret file unsafe to trust: who else can read, change or own it."""
    if info.st_mode & stat.S_IROTH:
        return "is world-readable: chmod 600 or 640 it"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by others than its owner: chmod 600 or 640 it"
    if info.st_uid not in (0, os.geteuid()):
        return (
            f"is owned by uid {info.st_uid}, neither this user (uid {os.geteuid()}) nor root: "
            "chown it"
        )
    return None


# --- value checkers: each returns the converted value or raises ValueError(problem) ---

_T = TypeVar("_T")
_INVALID: Any = object()
_MISSING: Any = object()


class _Table:
    """One TOML table being validated; problems accumulate in a shared list."""

    def __init__(self, path: Path, prefix: str, data: dict[str, Any], problems: list[str]):
        self.path = path
        self.prefix = prefix
        self.data = data
        self.problems = problems

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {self.prefix}{key}: {message}")

    def table(self, key: str) -> _Table | None:
        value = self.data[key]
        if not isinstance(value, dict):
            self.problem(key, f"must be a table ([{self.prefix}{key}]), not {_kind(value)}")
            return None
        return _Table(self.path, f"{self.prefix}{key}.", value, self.problems)

    def get(self, key: str, check: Callable[[Any], _T], default: Any = _MISSING) -> _T | None:
        """Return the checked value of ``key``; record a problem and return a sentinel if bad."""
        if key not in self.data:
            if default is _MISSING:
                self.problem(key, "required key is missing")
                return None
            return default  # type: ignore[no-any-return]
        try:
            return check(self.data[key])
        except ValueError as err:
            self.problem(key, str(err))
            return _INVALID  # type: ignore[no-any-return]

    def finish(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                self.problem(key, "unknown key (a typo?)")


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_kind(value)}")
    if not value:
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


def _absolute_path(value: Any) -> Path:
    text = _string(value)
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, not {text!r}")
    return Path(text)


def _executable(value: Any) -> str:
    text = _string(value)
    if "/" in text and not text.startswith("/"):
        raise ValueError(f"must be a command name or an absolute path, not {text!r}")
    return text


def _marker(value: Any) -> str:
    text = _string(value)
    if not _MARKER_RE.fullmatch(text):
        raise ValueError(
            f"must be a plain file name in the tree root (letters, digits, '.', '_', '-'), "
            f"not {text!r}"
        )
    return text


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number of seconds, not {_kind(value)}")
    if not math.isfinite(value):
        raise ValueError("must be a finite number of seconds")
    return float(value)


def _duration(value: Any) -> float:
    seconds = _number(value)
    if seconds < 0:
        raise ValueError(f"must not be negative, not {value}")
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = _number(value)
    if seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, not {value}")
    return seconds


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {_kind(value)}")
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def _body_size(value: Any) -> int:
    size = _positive_int(value)
    if size < 1024:
        raise ValueError(
            f"must be at least 1024 bytes (a webhook body is a few hundred), not {size}"
        )
    return size


def _name(value: Any) -> str:
    text = _string(value)
    if not _MARKER_RE.fullmatch(text):
        raise ValueError(f"must be letters, digits, '.', '_' or '-', not {text!r}")
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _string(value)
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, not {text!r}")
        return text

    return check


def _webhook_url(value: Any) -> str:
    text = _string(value)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    if parsed.username or parsed.password:
        raise ValueError("must not hold a login: the signature authenticates the upstream")
    return text


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of strings, not {_kind(value)}")
    items = []
    for index, item in enumerate(value):
        try:
            items.append(_string(item))
        except ValueError as err:
            raise ValueError(f"item {index}: {err}") from None
    return tuple(items)


def _upstream(value: Any) -> str:
    text = _string(value)
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


def _listen_list(value: Any) -> tuple[Listen, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of addresses, not {_kind(value)}")
    if not value:
        raise ValueError("must name at least one address")
    result = []
    for index, item in enumerate(value):
        try:
            result.append(parse_listen(_string(item)))
        except ValueError as err:
            raise ValueError(f"item {index}: {err}") from None
    return tuple(result)


def redact_upstream(upstream: str) -> str:
    """Return ``upstream`` without a ``user@`` or ``user:password@`` part, for status and logs."""
    if upstream.startswith("/"):
        return upstream
    scheme = "rsync://" if upstream.startswith("rsync://") else ""
    rest = upstream.removeprefix(scheme)
    authority = rest.split("/", 1)[0]
    user, at, _host = authority.partition("@")
    if not at or "::" in user:
        return upstream
    return scheme + rest[len(user) + 1 :]


def parse_listen(text: str) -> Listen:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:/ABSOLUTE/PATH``."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute, not {text!r}")
        return Listen(path=Path(path))
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, [IPV6]:PORT or unix:/PATH, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:8873, not {text!r}")
    elif not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"not a host name or address: {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port_text!r}")
    return Listen(host=host, port=int(port_text))
