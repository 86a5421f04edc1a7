"""What a configuration would run, in words: the output of ``mirrorhook check-config``."""

from __future__ import annotations

from mirrorhook import rsync
from mirrorhook.config import Config
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig
from mirrorhook.receiver_config import ReceiverConfig, ReceiverHost


def describe(config: Config) -> str:
    """Every role of ``config``: what it listens on, follows, announces, and which rsync runs."""
    lines = [f"{config.path}: valid"]
    if config.receivers is not None:
        lines += _receivers(config.receivers)
    if config.publishers is not None:
        if (key := config.publishers.signing_key) is not None:
            lines.append(
                f"signing key: {config.publishers.signing_key_file}, public key {key.public()}"
            )
        for tree in config.publishers.repos:
            lines += _publisher(tree)
    return "\n".join(lines)


def _receivers(host: ReceiverHost) -> list[str]:
    lines = ["receiver:", f"  listen on      {', '.join(str(listen) for listen in host.listen)}"]
    if host.single:
        return lines + _tree(host.repos[0], indent="  ")
    lines.append(f"  syncs at once  {host.max_syncs}, all repositories together")
    for repo in host.repos:
        state = "" if repo.enabled else " (disabled: kept in the config, not synced)"
        lines.append(f"  repository {repo.name}{state}:")
        lines.append(f"    hook         /v1/hook/{repo.name}")
        lines += _tree(repo, indent="    ")
    return lines


def _tree(r: ReceiverConfig, indent: str) -> list[str]:
    poll = f"every {r.poll_interval:g} s + 0..{r.poll_jitter:g} s" if r.poll_interval else "off"
    width = 15 - len(indent) + 2
    rows = [
        ("follow", f"{r.upstream} -> {r.target} (marker {r.marker})"),
        ("webhook sync", f"after a random 0..{r.backoff:g} s backoff"),
        ("poll", poll),
        ("retries", f"{r.retries} attempts; one rsync run is killed after {r.timeout:g} s"),
        ("state", str(r.state_dir)),
        ("verify with", _verifiers(r)),
        ("rsync command", " ".join(rsync.tree_args(r))),
    ]
    if r.trace is not None:
        rows.append(("trace file", f"{r.target / r.trace} (Debian ftpsync format)"))
    if r.lastsync is not None:
        rows.append(("lastsync file", f"{r.target / r.lastsync} (Unix time of the last sync)"))
    if r.exec_on_success:
        rows.append(("on success", " ".join(r.exec_on_success)))
    if r.exec_on_failure:
        rows.append(("on failure", " ".join(r.exec_on_failure)))
    return [f"{indent}{key:<{width}}{value}" for key, value in rows]


def _publisher(p: PublisherConfig) -> list[str]:
    lines = [
        "publisher:" if p.repo is None else f"publisher, repository {p.repo}:",
        f"  watch          {p.root / p.marker} ({p.watch}, rescan every {p.rescan:g} s)",
        f"  announce as    {p.name}",
        f"  deliveries     {p.concurrency} at once, {p.timeout:g} s each, "
        f"retried for {p.retry_for:g} s",
        f"  state          {p.state_dir}",
    ]
    return lines + [f"  mirror         {_mirror(mirror)}" for mirror in p.mirrors]


def _verifiers(r: ReceiverConfig) -> str:
    """The keys webhooks are verified with: files and the public key, never a secret."""
    keys = []
    if r.secret_file is not None:
        keys.append(f"v1, the secret in {r.secret_file}")
    if r.public_keys:
        shown = ", ".join(map(str, r.public_keys))
        keys.append(f"v1a, the upstream's public key {shown} ({r.public_key_file})")
    return "; or ".join(keys)


def _mirror(mirror: MirrorConfig) -> str:
    schemes = "+".join(("v1",) * bool(mirror.secret) + ("v1a",) * bool(mirror.signing_key))
    where = mirror.url or f"no webhook, checked at {mirror.check_url}"
    return f"{mirror.name}: {where} (signed {schemes})" if mirror.url else f"{mirror.name}: {where}"
