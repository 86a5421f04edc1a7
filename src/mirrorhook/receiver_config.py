"""The ``[receiver]`` section: one repository (the single form) or many on one host.

The single form is ``[receiver]`` with ``upstream``, ``target`` and ``secret_file`` and/or
``public_key_file`` (the upstream's key: webhooks verify with either): one
tree, its hook at ``/v1/hook``, its state in ``state_dir``. The host form is ``[receiver]``
with host-level keys and one ``[receiver.repos.NAME]`` table per repository; a
per-repository key set at the host level is every repository's default, and each
repository keeps its state in ``state_dir/repos/NAME`` (docs/design.md#many-repositories).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrorhook.addresses import Listen
from mirrorhook.checks import (
    INVALID,
    Table,
    absolute_path,
    body_size,
    boolean,
    choice,
    default_of,
    duration,
    executable,
    fraction,
    listen_list,
    load_public_keys,
    load_secret,
    marker_name,
    positive_duration,
    positive_int,
    string,
    string_list,
    tree_file,
    upstream,
    valid,
)
from mirrorhook.keys import PublicKey
from mirrorhook.receiver_checks import (
    INSIDE_STATE_DIR,
    apart_in_tree,
    check_programs,
    trees_apart,
)
from mirrorhook.signing import Secret, Verifier
from mirrorhook.subscription_config import (
    Password,
    Subscription,
    check_subscriptions,
    subscription_list,
)

REPO_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""A repository's name: it is part of a URL path and of a folder name."""
REPOS_FOLDER = "repos"
"""Under ``state_dir``, each repository of the host form keeps its state in a folder."""
PUBLISH_MODES = ("in-place", "snapshot")
"""How a sync changes the tree: rsync into it, or a new tree switched to at once."""
LOCKS_FOLDER = "locks"
"""Under ``state_dir``, the host's tree locks (docs/design.md#the-sync-lock)."""


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """One repository of a downstream mirror: its tree, its upstream and its schedule."""

    listen: tuple[Listen, ...]
    secret: Secret | None
    """The secret shared with the upstream (``v1`` signatures); ``None`` with a public key."""
    secret_file: Path | None
    upstream: str
    target: Path
    state_dir: Path
    """This repository's own state folder (the host's ``state_dir`` in the single form)."""
    locks_dir: Path
    """The host's folder of tree locks, shared by its repositories (``state_dir/locks``)."""
    marker: str = "CURRENT"
    exclude_from: Path | None = None
    rsync: str = "rsync"
    rsync_args: tuple[str, ...] = ()
    max_delete: int = 10_000
    """rsync's ``--max-delete``: a sync that would delete more stops deleting there and
    fails (exit 25, not retried), so that an upstream that lost part of its tree does not
    take the mirror's copy with it; raise it for a publish that removes more."""
    backoff: float = 30.0
    poll_interval: float = 3600.0
    poll_jitter: float = 300.0
    retries: int = 5
    timeout: float = 21600.0
    max_body: int = 65536
    name: str | None = None
    """The repository's name in the host form; ``None`` in the single form."""
    enabled: bool = True
    exec_on_success: tuple[str, ...] = ()
    exec_on_failure: tuple[str, ...] = ()
    trace: str | None = None
    """Where to write a Debian ftpsync-style trace file, relative to ``target``."""
    lastsync: str | None = None
    """Where to write an Arch-style ``lastsync`` file, relative to ``target``."""
    public_keys: tuple[PublicKey, ...] = ()
    """The upstream's public keys (``v1a`` signatures): one, or two while it rotates."""
    public_key_file: Path | None = None
    max_changes: int = 100_000
    """Paths a change may name and still be applied (docs/design.md#the-delta-transfer)."""
    max_delete_fraction: float = 0.1
    """The share of the tree's files a publish may remove; a change that removes more is
    refused until ``mirrorhook sync --allow-deletes`` (docs/design.md#the-safety-valve)."""
    full_sync_interval: float = 86400.0
    """Seconds after which a sync transfers the whole tree whatever change it was given
    (0: only when no change applies)."""
    publish: str = "in-place"
    """``in-place`` (rsync writes into ``target``) or ``snapshot`` (``target`` is a symlink
    switched at once to each new tree, docs/design.md#snapshots)."""
    grace: float = 600.0
    """Seconds a replaced snapshot is kept, for clients that read the old metadata."""
    passes_changes: bool = False
    """This host publishes the tree too (a hub): a sync by change notes it for the
    publisher (``applied_change.py``). Set by ``config.py``, not a key."""
    subscribe: tuple[Subscription, ...] = ()
    """Where the repository hears of publishes without a webhook (docs/design.md#subscriptions)."""
    mqtt_username: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_password: Password | None = None
    mqtt_ca_file: Path | None = None

    @property
    def keys(self) -> tuple[Verifier, ...]:
        """Every key a webhook of this repository may be signed with: any one will do."""
        return (*([self.secret] if self.secret is not None else []), *self.public_keys)

    @property
    def own_files(self) -> tuple[str, ...]:
        """The files mirrorhook itself writes into the tree (relative to ``target``): the
        marker, then the trace and lastsync files. rsync never transfers nor deletes them."""
        return (self.marker, *self.after_marker)

    @property
    def after_marker(self) -> tuple[str, ...]:
        """The files written into the tree once the marker is in: trace, lastsync."""
        return tuple(name for name in (self.trace, self.lastsync) if name)


@dataclass(frozen=True, slots=True)
class ReceiverHost:
    """The whole ``[receiver]`` section: the host's listeners and limits, and its trees."""

    listen: tuple[Listen, ...]
    state_dir: Path
    repos: tuple[ReceiverConfig, ...]
    max_body: int = 65536
    max_syncs: int = 2

    @property
    def single(self) -> bool:
        """Whether this is the single form (one tree, hook at ``/v1/hook``)."""
        return len(self.repos) == 1 and self.repos[0].name is None

    def named(self, name: str) -> ReceiverConfig | None:
        """The repository called ``name``, if there is one."""
        return next((repo for repo in self.repos if repo.name == name), None)


Check = Callable[[Any], Any]

_HOST_KEYS: dict[str, Check] = {"max_body": body_size, "max_syncs": positive_int}
_REQUIRED_PER_REPO: dict[str, Check] = {
    "upstream": upstream,
    "target": absolute_path,
}
_OWN_KEYS = ("secret_file",)
"""Keys each repository sets for itself (the host form refuses them beside ``repos``)."""
_PER_REPO: dict[str, Check] = {
    "marker": marker_name,
    "exclude_from": absolute_path,
    "rsync": executable,
    "rsync_args": string_list,
    "max_delete": positive_int,
    "backoff": duration,
    "poll_interval": duration,
    "poll_jitter": duration,
    "retries": positive_int,
    "timeout": positive_duration,
    "enabled": boolean,
    "exec_on_success": string_list,
    "exec_on_failure": string_list,
    "trace": tree_file,
    "lastsync": tree_file,
    "public_key_file": absolute_path,
    "max_changes": positive_int,
    "max_delete_fraction": fraction,
    "full_sync_interval": duration,
    "publish": choice(*PUBLISH_MODES),
    "grace": duration,
    "subscribe": subscription_list,
    "mqtt_username": string,
    "mqtt_password_file": absolute_path,
    "mqtt_ca_file": absolute_path,
}
"""The keys of one repository that the host level may set for all; defaults: the fields'."""


def parse_receiver(t: Table) -> ReceiverHost | None:
    """Check the ``[receiver]`` table in either form; ``None`` when it has problems."""
    listen: Any = t.get("listen", listen_list, ())
    state_dir: Any = t.get("state_dir", absolute_path)
    host: dict[str, Any] = {
        key: t.get(key, check, default_of(ReceiverHost, key)) for key, check in _HOST_KEYS.items()
    }
    if "repos" in t.data:
        repos = _host_form(t, state_dir)
    else:
        repo = _repository(t, name=None, defaults=_builtin_defaults(), state_dir=state_dir)
        t.finish(
            known=("listen", "state_dir", *_HOST_KEYS, *_REQUIRED_PER_REPO, *_OWN_KEYS, *_PER_REPO)
        )
        repos = None if repo is None else [repo]
    if repos is not None and listen == () and not all(repo["subscribe"] for repo in repos):
        t.problem(
            "listen",
            "required key is missing (only a mirror whose every repository subscribes "
            "needs no listen)",
        )
        return None
    if repos is None or not (valid(listen) and valid(state_dir)):
        return None
    if any(value is INVALID for value in host.values()):
        return None
    locks_dir = state_dir / LOCKS_FOLDER
    finished = tuple(_finish(repo, listen, host["max_body"], locks_dir) for repo in repos)
    return ReceiverHost(listen=listen, state_dir=state_dir, repos=finished, **host)


def _builtin_defaults() -> dict[str, Any]:
    return {key: default_of(ReceiverConfig, key) for key in _PER_REPO}


def _host_form(t: Table, state_dir: Any) -> list[dict[str, Any]] | None:
    """The ``[receiver.repos.NAME]`` tables, each inheriting the host level's keys."""
    for key in (*_REQUIRED_PER_REPO, *_OWN_KEYS):
        if key in t.data:
            t.problem(key, "set it in each [receiver.repos.NAME] table, not beside repos")
    defaults = {
        key: t.get(key, check, default_of(ReceiverConfig, key)) for key, check in _PER_REPO.items()
    }
    check_programs(t, defaults)
    defaults["public_keys"] = _public_keys(t, defaults["public_key_file"])
    t.finish(
        known=(
            "listen",
            "state_dir",
            "repos",
            *_HOST_KEYS,
            *_REQUIRED_PER_REPO,
            *_OWN_KEYS,
            *_PER_REPO,
        )
    )
    found = repository_tables(t, state_dir)
    if found is None:
        return None
    tables, ok = found
    repos: list[dict[str, Any]] = []
    for name, entry, folder in tables:
        repo = _repository(entry, name, defaults, folder)
        entry.finish(known=(*_REQUIRED_PER_REPO, *_OWN_KEYS, *_PER_REPO))
        if repo is None:
            ok = False
            continue
        repos.append(repo)
    if not ok or not trees_apart(t, repos, state_dir):
        return None
    return repos


def repository_tables(t: Table, state_dir: Any) -> tuple[list[tuple[str, Table, Any]], bool] | None:
    """The ``repos.NAME`` tables of section ``t``, each with its repository's state folder,
    and whether every name was valid; ``None`` when ``repos`` is no table or empty."""
    table = t.table("repos")
    if table is None:
        return None
    if not table.data:
        t.problem("repos", f"must hold at least one [{t.prefix}repos.NAME] table")
        return None
    found = []
    ok = True
    for name in table.data:
        if not REPO_NAME.fullmatch(name):
            table.problem(
                name,
                "a repository name is 1 to 64 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
            )
            ok = False
        elif (entry := table.table(name)) is None:
            ok = False
        else:
            folder = state_dir / REPOS_FOLDER / name if valid(state_dir) else state_dir
            found.append((name, entry, folder))
    return found, ok


def _repository(
    t: Table, name: str | None, defaults: dict[str, Any], state_dir: Any
) -> dict[str, Any] | None:
    """One repository's keys, checked; ``None`` when any of them has a problem."""
    required: dict[str, Any] = {key: t.get(key, check) for key, check in _REQUIRED_PER_REPO.items()}
    optional: dict[str, Any] = {
        key: t.get(key, check, defaults[key]) for key, check in _PER_REPO.items()
    }
    target = required["target"]
    if name is None and valid(target) and valid(state_dir):
        if state_dir.is_relative_to(target):
            t.problem(
                "state_dir", f"must be outside target ({target}): rsync --delete would remove it"
            )
            return None
        if target.is_relative_to(state_dir):
            t.problem("target", INSIDE_STATE_DIR.format(state_dir=state_dir))
            return None
    check_programs(t, optional)
    apart_in_tree(t, optional)
    keys = _keys(t, optional["public_key_file"], defaults.get("public_keys", ()))
    if keys is None or not all(map(valid, required.values())):
        return None
    password = check_subscriptions(t, optional, keys["public_keys"])
    if password is INVALID:
        return None
    if any(value is INVALID for value in optional.values()):
        return None
    return {
        **keys,
        **required,
        **optional,
        "mqtt_password": password,
        "name": name,
        "state_dir": state_dir,
    }


def _keys(t: Table, public_key_file: Any, inherited: Any) -> dict[str, Any] | None:
    """The repository's webhook keys: its ``secret_file`` and/or a ``public_key_file`` (its
    own, or the host level's, read there once); at least one."""
    secret_file: Any = t.get("secret_file", absolute_path, None)
    if secret_file is INVALID or public_key_file is INVALID:
        return None
    secret = None
    if secret_file is not None and (secret := load_secret(t, "secret_file", secret_file)) is None:
        return None
    public_keys = _public_keys(t, public_key_file) if "public_key_file" in t.data else inherited
    if public_keys is INVALID:
        return None
    if secret_file is None and public_key_file is None:
        t.problem(
            "secret_file",
            "missing: set secret_file (a secret shared with the upstream), public_key_file "
            "(the upstream's public key), or both",
        )
        return None
    return {"secret": secret, "secret_file": secret_file, "public_keys": public_keys}


def _public_keys(t: Table, path: Any) -> Any:
    """The keys in the ``public_key_file`` that ``t`` sets; ``INVALID`` when it cannot be read."""
    if path is None or path is INVALID:
        return ()
    keys = load_public_keys(t, "public_key_file", path)
    return INVALID if keys is None else keys


def _finish(
    repo: dict[str, Any], listen: tuple[Listen, ...], max_body: int, locks_dir: Path
) -> ReceiverConfig:
    return ReceiverConfig(listen=listen, max_body=max_body, locks_dir=locks_dir, **repo)


def repositories(host: ReceiverHost | None) -> Iterator[ReceiverConfig]:
    """Every repository of ``host`` (none without a ``[receiver]`` section)."""
    if host is not None:
        yield from host.repos
