"""The TOML configuration: parsed into frozen dataclasses, every problem reported at once.

Each problem reads ``FILE: key.path: problem`` so an operator can go straight to the line.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirrorhook import applied_change
from mirrorhook.checks import Table
from mirrorhook.errors import ConfigError
from mirrorhook.receiver_config import (
    ReceiverConfig,
    ReceiverHost,
    parse_receiver,
    repositories,
)

if TYPE_CHECKING:
    from mirrorhook.publisher_config import Hub, PublisherConfig, PublisherHost

DEFAULT_CONFIG = Path("/etc/mirrorhook/mirrorhook.toml")
CONFIG_ENV = "MIRRORHOOK_CONFIG"


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file; at least one role section is present."""

    path: Path
    receivers: ReceiverHost | None = None
    publishers: PublisherHost | None = None
    text: str = field(default="", repr=False, compare=False)
    """The file's text as it was loaded: what a daemon notes it runs (``daemon_note.py``)."""

    @property
    def receiver(self) -> ReceiverConfig | None:
        """The one repository of a ``[receiver]`` section in the single form, else ``None``."""
        if self.receivers is None or not self.receivers.single:
            return None
        return self.receivers.repos[0]

    @property
    def publisher(self) -> PublisherConfig | None:
        """The one tree of a ``[publisher]`` section in the single form, else ``None``."""
        if self.publishers is None or not self.publishers.single:
            return None
        return self.publishers.repos[0]


def config_path(explicit: str | None) -> Path:
    """Return the config path: ``-c`` if given, else ``$MIRRORHOOK_CONFIG``, else the default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG


def in_file_order(path: Path, document: dict[str, Any], problems: list[str]) -> list[str]:
    """``problems`` in the order their keys appear in the file, so that an operator reads
    them top to bottom (the checks run in their own order; TOML tables keep the file's).
    A problem of a key the file lacks (a required one) sorts where its table begins."""
    order: dict[str, int] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                order.setdefault(f"{prefix}{key}", len(order))
                walk(f"{prefix}{key}.", item)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    order.setdefault(f"{prefix[:-1]}[{index}]", len(order))
                    walk(f"{prefix[:-1]}[{index}].", item)

    walk("", document)
    head = f"{path}: "

    def position(problem: str) -> int:
        key = problem.removeprefix(head).split(": ", 1)[0]
        while key:
            if key in order:
                return order[key]
            key = key.rpartition(".")[0]  # a missing key: where its table is
        return len(order)

    return sorted(problems, key=position)  # stable: a key's own problems keep their order


def _hubs(document: dict[str, Any], receivers: ReceiverHost | None) -> dict[str, Hub | None]:
    """The receiver's repositories by name, for a hub's publisher: each one's target and
    marker, or ``None`` for one whose ``[receiver]`` section has problems. Those problems are
    reported there; the publisher must not blame its own ``root`` for them."""
    hubs: dict[str, Hub | None] = {}
    tables = document.get("receiver")
    named = tables.get("repos") if isinstance(tables, dict) else None
    if isinstance(named, dict):
        hubs = dict.fromkeys(named)
    hubs |= {repo.name: (repo.target, repo.marker) for repo in repositories(receivers) if repo.name}
    return hubs


def _joined_hubs(
    publishers: PublisherHost | None, receivers: ReceiverHost | None
) -> tuple[PublisherHost | None, ReceiverHost | None]:
    """A tree this host both receives and publishes (a hub): its publisher learns the
    files the receiver writes after the marker (``after_marker``: trace, lastsync) and
    where the receiver notes the change it applied (``applied_change``), and the receiver
    that it is to note it (``passes_changes``)."""
    if publishers is None or receivers is None:
        return publishers, receivers
    by_target = {os.path.normpath(repo.target): repo for repo in repositories(receivers)}
    roots = {os.path.normpath(tree.root) for tree in publishers.repos}
    trees = tuple(
        tree
        if (hub := by_target.get(os.path.normpath(tree.root))) is None
        else replace(
            tree,
            after_marker=hub.after_marker,
            applied_change=applied_change.path_in(hub.state_dir),
        )
        for tree in publishers.repos
    )
    repos = tuple(
        replace(repo, passes_changes=os.path.normpath(repo.target) in roots)
        for repo in receivers.repos
    )
    return replace(publishers, repos=trees), replace(receivers, repos=repos)


def load_config(path: Path) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` listing every problem found."""
    return parse_config(path, read_config_text(path))


def read_config_text(path: Path) -> str:
    """The text of the config file ``path``; ``ConfigError`` when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None


def parse_config(path: Path, text: str) -> Config:
    """Validate ``text``, the config file ``path`` holds (or held); raise ``ConfigError``
    listing every problem found, each naming ``path``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from None

    problems: list[str] = []
    root = Table(path, "", document, problems)
    receivers = publishers = None
    if "receiver" in document and (table := root.table("receiver")) is not None:
        receivers = parse_receiver(table)
    if "publisher" in document and (table := root.table("publisher")) is not None:
        # Read by the configs that have a publisher only: a mirror's cron sync, which pays
        # for each import at every start, goes without.
        from mirrorhook.publisher_config import parse_publisher  # noqa: PLC0415

        publishers = parse_publisher(table, _hubs(document, receivers))
        publishers, receivers = _joined_hubs(publishers, receivers)
    root.finish(known=("receiver", "publisher"))
    if not problems and receivers is None and publishers is None:
        problems.append(f"{path}: neither a [receiver] nor a [publisher] section: nothing to run")
    if problems:
        raise ConfigError(in_file_order(path, document, problems))
    return Config(path=path, receivers=receivers, publishers=publishers, text=text)
