"""The ``[publisher]`` section: one published tree (the single form) or many on one host.

The single form is ``[publisher]`` with ``root`` and ``[[publisher.mirrors]]``. The host
form has host-level keys (``name``, ``listen``, ``state_dir``, ``concurrency``,
``timeout``, ``retry_for``) and one ``[publisher.repos.NAME]`` table per repository, each
with its ``root``, ``marker``, ``watch``, ``rescan`` and ``[[publisher.repos.NAME.mirrors]]``;
``marker``, ``watch`` and ``rescan`` set at the host level are every repository's default.
A repository that the ``[receiver]`` section also has may leave out ``root``: a hub
announces the tree it mirrors (docs/design.md#many-repositories). With ``signing_key_file``
(the upstream's Ed25519 key) every webhook is signed ``v1a`` too, and a mirror's
``secret_file`` becomes optional (docs/design.md#signatures).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirrorhook.addresses import Listen
from mirrorhook.checks import (
    INVALID,
    MISSING,
    Table,
    absolute_path,
    base_urls,
    choice,
    default_of,
    label,
    listen_list,
    load_secret,
    load_signing_key,
    marker_name,
    positive_duration,
    positive_int,
    valid,
    webhook_url,
)
from mirrorhook.keys import SigningKey
from mirrorhook.mqtt_config import BrokerSettings, parse_broker
from mirrorhook.receiver_config import repository_tables
from mirrorhook.signing import Secret, Signer


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """One ``[[publisher.mirrors]]`` entry: where a mirror's webhook goes and its secret."""

    name: str
    url: str | None
    """Where webhooks go; ``None`` for a mirror that syncs by cron and is only checked."""
    secret: Secret | None
    """The secret shared with the mirror (``v1``); ``None`` when the upstream signs ``v1a``
    only for it: its reports are then hints (only what it serves counts)."""
    secret_file: Path | None
    check_url: str | None = None
    """Where the mirror serves its copy of the marker to users: checked for freshness."""
    urls: tuple[str, ...] = ()
    """The base URLs the mirror serves the tree at (for the mirror list)."""
    signing_key: SigningKey | None = None
    """The upstream's private key (``[publisher] signing_key_file``): ``v1a`` signatures."""

    @property
    def signers(self) -> tuple[Signer, ...]:
        """Every key this mirror's webhooks are signed with: ``v1`` and/or ``v1a``."""
        return tuple(key for key in (self.secret, self.signing_key) if key is not None)


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """One published tree: its marker, how it is watched, and the mirrors to tell."""

    root: Path
    state_dir: Path
    """This tree's own state folder (the host's ``state_dir`` in the single form)."""
    mirrors: tuple[MirrorConfig, ...]
    listen: tuple[Listen, ...] = ()
    name: str = field(default_factory=socket.gethostname)
    marker: str = "CURRENT"
    watch: str = "inotify"
    rescan: float = 60.0
    concurrency: int = 64
    timeout: float = 10.0
    retry_for: float = 86400.0
    check_interval: float = 3600.0
    """Seconds between checks of a mirror's ``check_url`` outside the checks after a publish."""
    stale_after: float = 900.0
    """Seconds after a publish until a mirror that does not serve it yet is ``stale``."""
    public_url: str | None = None
    """Where mirrors reach this publisher's ``listen``: webhooks then ask for reports."""
    repo: str | None = None
    """The repository's name in the host form; ``None`` in the single form."""
    keep_manifests: int = 50
    """Manifests kept in ``state_dir/manifests`` (docs/design.md#manifests)."""
    manifest_timeout: float = 30.0
    """Seconds an announcement waits for the tree's walk; past them it goes out without a
    change, and mirrors do a full sync."""
    after_marker: tuple[str, ...] = ()
    """On a hub, the files its own receiver writes in this tree after the marker (trace,
    lastsync), relative to ``root``: not a publish under way (manifest_keeper.py)."""
    applied_change: Path | None = None
    """On a hub, where its receiver notes the change it applied (``applied_change.py``):
    the manifest is then made from it, not by a walk (``manifest_apply.py``)."""

    @property
    def label(self) -> str:
        """What the page, the mirror list and ``?repo=`` call the tree: its name, or in the
        single form its root folder's (``/srv/repo/ius``: ``ius``)."""
        return self.repo if self.repo is not None else self.root.name

    @property
    def url_name(self) -> str:
        """What the publisher's own URLs and changes call the tree (``/v1/changes/NAME``):
        the repository, or in the single form the publisher's ``name``."""
        return self.repo if self.repo is not None else self.name


@dataclass(frozen=True, slots=True)
class PublisherHost:
    """The whole ``[publisher]`` section: the host's settings, and its trees."""

    state_dir: Path
    repos: tuple[PublisherConfig, ...]
    listen: tuple[Listen, ...] = ()
    name: str = field(default_factory=socket.gethostname)
    concurrency: int = 64
    timeout: float = 10.0
    retry_for: float = 86400.0
    check_interval: float = 3600.0
    stale_after: float = 900.0
    public_url: str | None = None
    signing_key: SigningKey | None = None
    """The upstream's private key, from ``signing_key_file`` (each mirror has it too)."""
    signing_key_file: Path | None = None
    max_subscribers: int = 10_000
    """Event streams (``GET /v1/events``) open at once, at most."""
    mqtt: BrokerSettings | None = None
    """The broker announcements are also published to (``[publisher.mqtt]``)."""

    @property
    def single(self) -> bool:
        """Whether this is the single form (one tree)."""
        return len(self.repos) == 1 and self.repos[0].repo is None

    def named(self, name: str) -> PublisherConfig | None:
        """The repository called ``name``, if there is one."""
        return next((repo for repo in self.repos if repo.repo == name), None)

    def called(self, name: str) -> PublisherConfig | None:
        """The tree a URL's ``name`` means: a repository of the host form; the single
        form's one tree by the publisher's ``name`` or its ``label`` (its root folder's),
        so that one URL serves whichever form the upstream runs."""
        if self.single:
            tree = self.repos[0]
            return tree if name in (tree.name, tree.label) else None
        return self.named(name)

    def names(self) -> list[str]:
        """What ``called`` answers to, for an error that lists them."""
        if self.single:
            return sorted({self.repos[0].name, self.repos[0].label})
        return [str(tree.repo) for tree in self.repos]


Check = Callable[[Any], Any]
Hub = tuple[Path, str]
"""A receiver repository's target and marker: a hub's published root and its marker."""

_HOST_KEYS: dict[str, Check] = {
    "listen": listen_list,
    "name": label,
    "concurrency": positive_int,
    "timeout": positive_duration,
    "retry_for": positive_duration,
    "check_interval": positive_duration,
    "stale_after": positive_duration,
    "public_url": webhook_url,
}
_KEY_FILE = ("signing_key_file",)
"""A host-level key, loaded apart: its key signs for every repository."""
_HOST_ONLY = ("max_subscribers", "mqtt")
"""Host-level keys that no repository needs a copy of."""
_PER_REPO: dict[str, Check] = {
    "marker": marker_name,
    "watch": choice("inotify", "poll"),
    "rescan": positive_duration,
    "keep_manifests": positive_int,
    "manifest_timeout": positive_duration,
}


def parse_publisher(t: Table, hubs: Mapping[str, Hub | None]) -> PublisherHost | None:
    """Check the ``[publisher]`` table in either form; ``None`` when it has problems.

    ``hubs`` are the receiver's targets and markers by repository name: the root of a
    publisher repository that leaves ``root`` out, and its marker unless it names one;
    ``None`` for a receiver repository with problems (reported there, not again here).
    """
    state_dir: Any = t.get("state_dir", absolute_path)
    host: dict[str, Any] = {
        key: t.get(key, check, default_of(PublisherHost, key)) for key, check in _HOST_KEYS.items()
    }
    max_subscribers: Any = t.get(
        "max_subscribers", positive_int, default_of(PublisherHost, "max_subscribers")
    )
    broker = parse_broker(t)
    if valid(broker) and "signing_key_file" not in t.data:
        t.problem("mqtt", "needs signing_key_file: announcements are broadcast signed v1a")
        broker = INVALID
    key_file: Any = t.get("signing_key_file", absolute_path, None)
    key = load_signing_key(t, "signing_key_file", key_file) if valid(key_file) else None
    if key_file is INVALID or (key_file is not None and key is None):
        key = INVALID
    if "repos" in t.data:
        repos = _host_form(t, state_dir, hubs, key)
    else:
        defaults = {key: default_of(PublisherConfig, key) for key in _PER_REPO}
        repo = _repository(t, None, defaults, state_dir, root_default=None, signing_key=key)
        known = ("state_dir", "root", "mirrors", *_HOST_KEYS, *_KEY_FILE, *_HOST_ONLY, *_PER_REPO)
        t.finish(known=known)
        repos = None if repo is None else [repo]
    if repos is None or not valid(state_dir) or key is INVALID:
        return None
    if any(value is INVALID for value in (*host.values(), max_subscribers, broker)):
        return None
    trees = tuple(PublisherConfig(**repo, **host) for repo in repos)
    return PublisherHost(
        state_dir=state_dir,
        repos=trees,
        signing_key=key,
        signing_key_file=key_file,
        max_subscribers=max_subscribers,
        mqtt=broker,
        **host,
    )


def _host_form(
    t: Table, state_dir: Any, hubs: Mapping[str, Hub | None], signing_key: Any
) -> list[dict[str, Any]] | None:
    for key in ("root", "mirrors"):
        if key in t.data:
            t.problem(key, "set it in each [publisher.repos.NAME] table, not beside repos")
    defaults = {
        key: t.get(key, check, default_of(PublisherConfig, key)) for key, check in _PER_REPO.items()
    }
    t.finish(
        known=(
            "state_dir",
            "repos",
            "root",
            "mirrors",
            *_HOST_KEYS,
            *_KEY_FILE,
            *_HOST_ONLY,
            *_PER_REPO,
        )
    )
    found = repository_tables(t, state_dir)
    if found is None:
        return None
    tables, ok = found
    repos: list[dict[str, Any]] = []
    for name, entry, folder in tables:
        hub = hubs.get(name)
        own = defaults if hub is None else {**defaults, "marker": hub[1]}
        # A hub repository whose receiver has problems has no root to take: it is INVALID,
        # not missing, so that only the receiver's problem is reported.
        root: Any = (INVALID if name in hubs else None) if hub is None else hub[0]
        repo = _repository(entry, name, own, folder, root_default=root, signing_key=signing_key)
        entry.finish(known=("root", "mirrors", *_PER_REPO))
        if repo is None:
            ok = False
            continue
        repos.append(repo)
    return repos if ok else None


def _repository(
    t: Table,
    name: str | None,
    defaults: dict[str, Any],
    state_dir: Any,
    *,
    root_default: Any,
    signing_key: Any,
) -> dict[str, Any] | None:
    """One published tree's keys, checked; ``None`` when any of them has a problem."""
    if "root" not in t.data and name is not None and root_default is None:
        t.problem("root", _NO_ROOT.format(name=name))
        root: Any = INVALID
    elif "root" in t.data or root_default is None:
        root = t.get("root", absolute_path)
    else:
        root = root_default
    # With the signing key, mirrors may all subscribe (docs/design.md#subscriptions): no
    # list of them is needed at the upstream.
    listless = () if valid(signing_key) else MISSING
    mirrors: Any = t.get("mirrors", lambda value: _mirrors(t, value, signing_key), listless)
    optional = {key: t.get(key, check, defaults[key]) for key, check in _PER_REPO.items()}
    if valid(root) and valid(state_dir) and state_dir.is_relative_to(root):
        t.problem("state_dir", f"must be outside root ({root}): mirrors would copy it")
        return None
    if not (valid(root) and valid(mirrors)):
        return None
    if any(value is INVALID for value in optional.values()):
        return None
    return {"root": root, "mirrors": mirrors, "state_dir": state_dir, "repo": name, **optional}


_NO_ROOT = (
    "required key is missing (a hub leaves it out when [receiver.repos.{name}] is there too: "
    "its target is the root)"
)


def _mirrors(t: Table, value: Any, signing_key: Any) -> tuple[MirrorConfig, ...] | None:
    """Check the mirrors array; problems inside an entry are reported with its index."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"must be an array of tables ([[{t.prefix}mirrors]])")
    if not value and signing_key is None:
        raise ValueError(
            "must list at least one mirror (or set signing_key_file: mirrors may subscribe)"
        )
    mirrors: list[MirrorConfig] = []
    ok = True
    names: set[str] = set()
    for index, item in enumerate(value):
        entry = Table(t.path, f"{t.prefix}mirrors[{index}].", item, t.problems)
        name: Any = entry.get("name", label)
        check_url: Any = entry.get("check_url", webhook_url, None)
        # A mirror that syncs by cron gets no webhook; its check_url alone tracks it.
        url: Any = entry.get("url", webhook_url, None if check_url is not None else MISSING)
        urls: Any = entry.get("urls", base_urls, ())
        # With the upstream's signing key, a mirror may verify v1a alone: no shared secret.
        secret_file: Any = entry.get("secret_file", absolute_path, None)
        entry.finish(known=("name", "url", "secret_file", "check_url", "urls"))
        # Nothing is signed for a cron mirror (no url): its check_url alone tracks it.
        unsigned = signing_key is None and url is None
        if secret_file is None and signing_key is None and url is not None:
            entry.problem(
                "secret_file",
                "required key is missing (or set [publisher] signing_key_file to sign v1a)",
            )
        secret = load_secret(entry, "secret_file", secret_file) if valid(secret_file) else None
        if valid(name) and name in names:
            entry.problem("name", f"{name!r} is used by another mirror already")
            ok = False
        names.add(str(name))
        keyless = secret is None and (secret_file is not None or not (signing_key or unsigned))
        if keyless or not valid(name) or INVALID in (url, check_url, urls):
            ok = False
            continue
        mirrors.append(
            MirrorConfig(
                name=name,
                url=url,
                secret=secret,
                secret_file=secret_file,
                check_url=check_url,
                urls=urls,
                signing_key=signing_key if isinstance(signing_key, SigningKey) else None,
            )
        )
    # Problems were recorded entry by entry; None keeps the section from loading.
    return tuple(mirrors) if ok else None
