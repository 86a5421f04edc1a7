"""The TOML configuration: parsed into frozen dataclasses, every problem reported at once.

Each problem reads ``FILE: key.path: problem`` so an operator can go straight to the line.
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirrorhook.addresses import Listen
from mirrorhook.checks import (
    INVALID,
    Table,
    absolute_path,
    choice,
    default_of,
    label,
    listen_list,
    load_secret,
    marker_name,
    positive_duration,
    positive_int,
    valid,
    webhook_url,
)
from mirrorhook.errors import ConfigError
from mirrorhook.receiver_config import ReceiverConfig, ReceiverHost, parse_receiver
from mirrorhook.signing import Secret

DEFAULT_CONFIG = Path("/etc/mirrorhook/mirrorhook.toml")
CONFIG_ENV = "MIRRORHOOK_CONFIG"


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
    receivers: ReceiverHost | None = None
    publisher: PublisherConfig | None = None

    @property
    def receiver(self) -> ReceiverConfig | None:
        """The one repository of a ``[receiver]`` section in the single form, else ``None``."""
        if self.receivers is None or not self.receivers.single:
            return None
        return self.receivers.repos[0]


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
    root = Table(path, "", document, problems)
    receivers = publisher = None
    if "receiver" in document and (table := root.table("receiver")) is not None:
        receivers = parse_receiver(table)
    if "publisher" in document and (table := root.table("publisher")) is not None:
        publisher = _publisher(table)
    root.finish(known=("receiver", "publisher"))
    if not problems and receivers is None and publisher is None:
        problems.append(f"{path}: neither a [receiver] nor a [publisher] section: nothing to run")
    if problems:
        raise ConfigError(problems)
    return Config(path=path, receivers=receivers, publisher=publisher)


def _publisher(t: Table) -> PublisherConfig | None:
    required: dict[str, Any] = {
        "root": t.get("root", absolute_path),
        "state_dir": t.get("state_dir", absolute_path),
        "mirrors": t.get("mirrors", lambda value: _mirrors(t, value)),
    }
    checks: dict[str, Any] = {
        "listen": listen_list,
        "name": label,
        "marker": marker_name,
        "watch": choice("inotify", "poll"),
        "rescan": positive_duration,
        "concurrency": positive_int,
        "timeout": positive_duration,
        "retry_for": positive_duration,
    }
    optional: dict[str, Any] = {
        key: t.get(key, check, default_of(PublisherConfig, key)) for key, check in checks.items()
    }
    t.finish(known=(*required, *optional))
    root, state_dir = required["root"], required["state_dir"]
    if valid(root) and valid(state_dir) and state_dir.is_relative_to(root):
        t.problem("state_dir", f"must be outside root ({root}): mirrors would copy it")
        return None
    if not all(map(valid, required.values())):
        return None
    if any(value is INVALID for value in optional.values()):
        return None
    return PublisherConfig(**required, **optional)


def _mirrors(t: Table, value: Any) -> tuple[MirrorConfig, ...] | None:
    """Check ``[[publisher.mirrors]]``; problems inside an entry are reported with its index."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("must be an array of tables ([[publisher.mirrors]])")
    if not value:
        raise ValueError("must list at least one mirror")
    mirrors: list[MirrorConfig] = []
    ok = True
    names: set[str] = set()
    for index, item in enumerate(value):
        entry = Table(t.path, f"{t.prefix}mirrors[{index}].", item, t.problems)
        name: Any = entry.get("name", label)
        url: Any = entry.get("url", webhook_url)
        secret_file: Any = entry.get("secret_file", absolute_path)
        entry.finish(known=("name", "url", "secret_file"))
        secret = load_secret(entry, "secret_file", secret_file) if valid(secret_file) else None
        if valid(name) and name in names:
            entry.problem("name", f"{name!r} is used by another mirror already")
            ok = False
        names.add(str(name))
        if secret is None or not (valid(name) and valid(url)):
            ok = False
            continue
        mirrors.append(MirrorConfig(name=name, url=url, secret=secret, secret_file=secret_file))
    # Problems were recorded entry by entry; None keeps the section from loading.
    return tuple(mirrors) if ok else None
