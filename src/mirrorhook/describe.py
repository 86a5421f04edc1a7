"""What a configuration would run, in words: the output of ``mirrorhook check-config``."""

from __future__ import annotations

from mirrorhook import rsync, snapshots
from mirrorhook.config import Config
from mirrorhook.form_switch import planned
from mirrorhook.message import HOOK_PATH
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig, PublisherHost
from mirrorhook.receiver_config import ReceiverConfig, ReceiverHost

LABEL_WIDTH = 15
"""Columns a label takes, two spaces after the longest ("rsync command")."""


def describe(config: Config) -> str:
    """Every role of ``config``: what it listens on, follows, announces, and which rsync runs."""
    lines = [f"{config.path}: valid"]
    moves = {move.role: [("state move", move.describe(now=False))] for move in planned(config)}
    if config.receivers is not None:
        lines += _receivers(config.receivers, moves.get("receiver", []))
    if config.publishers is not None:
        if (key := config.publishers.signing_key) is not None:
            lines.append(
                f"signing key: {config.publishers.signing_key_file}, public key {key.public()}"
            )
        lines += _rows("  ", _publisher_urls(config.publishers) + moves.get("publisher", []))
        for tree in config.publishers.repos:
            lines += _publisher(tree, config.publishers)
    return "\n".join(lines)


def _rows(indent: str, rows: list[tuple[str, str]]) -> list[str]:
    return [f"{indent}{key:<{LABEL_WIDTH}}{value}" for key, value in rows]


def _receivers(host: ReceiverHost, moves: list[tuple[str, str]]) -> list[str]:
    rows = [("listen on", ", ".join(map(str, host.listen))), *moves]
    if host.single:
        rows += [("hook", HOOK_PATH), ("send upstream", _hook_url(HOOK_PATH))]
        return ["receiver:", *_rows("  ", rows), *_tree(host.repos[0], indent="  ")]
    rows += [
        ("syncs at once", f"{host.max_syncs}, all repositories together"),
        ("send upstream", _hook_url(f"{HOOK_PATH}/NAME") + ", for each repository below"),
    ]
    lines = ["receiver:", *_rows("  ", rows)]
    for repo in host.repos:
        state = "" if repo.enabled else " (disabled: kept in the config, not synced)"
        lines.append(f"  repository {repo.name}{state}:")
        lines += _rows("    ", [("hook", f"{HOOK_PATH}/{repo.name}")])
        lines += _tree(repo, indent="    ")
    return lines


def _hook_url(path: str) -> str:
    """The webhook URL the upstream's operator needs: where the web server in front of the
    listen serves it, which only the operator knows."""
    return f"https://YOUR-HOST[/PREFIX]{path} (the listen, as your web server serves it)"


def _publisher_urls(host: PublisherHost) -> list[tuple[str, str]]:
    """Where users and mirrors reach the publisher's listen: its page and mirror lists."""
    if not host.listen:
        return []
    base = host.public_url or f"http://{host.listen[0]}"
    query = "" if host.single else "?repo=NAME"
    rows = [
        ("page", f"{base}/"),
        ("mirror list", f"{base}/mirrorlist{query}"),
        ("metalink", f"{base}/metalink{query or '?'}{'&' if query else ''}path=PATH"),
    ]
    if host.signing_key is not None:
        rows.append(("event stream", f"{base}/v1/events{query}"))
    if host.public_url is None:
        rows.append(("public_url", "not set: mirrors get no report URL"))
    return rows


def _tree(r: ReceiverConfig, indent: str) -> list[str]:
    poll = f"every {r.poll_interval:g} s + 0..{r.poll_jitter:g} s" if r.poll_interval else "off"
    rows = [
        ("follow", f"{r.upstream} -> {r.target} (marker {r.marker})"),
        ("webhook sync", f"after a random 0..{r.backoff:g} s backoff"),
        ("poll", poll),
        ("retries", f"{r.retries} attempts; one rsync run is killed after {r.timeout:g} s"),
        ("state", str(r.state_dir)),
        ("verify with", _verifiers(r)),
        ("rsync command", " ".join(rsync.tree_args(r))),
    ]
    rows += [("subscribe", f"{entry.shown} ({entry.via})") for entry in r.subscribe]
    rows += _publish(r)
    if r.trace is not None:
        rows.append(("trace file", f"{r.target / r.trace} (Debian ftpsync format)"))
    if r.lastsync is not None:
        rows.append(("lastsync file", f"{r.target / r.lastsync} (Unix time of the last sync)"))
    if r.exec_on_success:
        rows.append(("on success", " ".join(r.exec_on_success)))
    if r.exec_on_failure:
        rows.append(("on failure", " ".join(r.exec_on_failure)))
    return _rows(indent, rows)


def _publish(r: ReceiverConfig) -> list[tuple[str, str]]:
    """How a sync changes the tree; in snapshot mode, where the snapshots go and what the
    first sync does with a folder it finds at ``target``."""
    if r.publish != "snapshot":
        return [("publish", "in place (rsync writes into the target)")]
    where = snapshots.layout(r)
    rows = [
        (
            "publish",
            f"snapshot: {r.target} is a symlink to {where.folder}/NAME, switched at once; "
            f"the one replaced is kept {r.grace:g} s, at {where.previous}",
        )
    ]
    if snapshots.takeover_needed(r):
        rows.append(
            (
                "takeover",
                f"{r.target} is a folder: the first sync renames it to {where.folder}/NAME "
                "(no copy) and puts the symlink in its place",
            )
        )
    return rows


def _publisher(p: PublisherConfig, host: PublisherHost) -> list[str]:
    rows = [
        ("watch", f"{p.root / p.marker} ({p.watch}, rescan every {p.rescan:g} s)"),
        ("announce as", p.name),
        (
            "deliveries",
            f"{p.concurrency} at once, {p.timeout:g} s each, retried for {p.retry_for:g} s",
        ),
        ("state", str(p.state_dir)),
    ]
    if host.listen and p.repo is not None:
        base = host.public_url or f"http://{host.listen[0]}"
        rows.append(("mirror list", f"{base}/mirrorlist?repo={p.repo}"))
    if host.mqtt is not None:
        topic = host.mqtt.topic_of(host.mqtt.topic, p.name, p.repo)
        rows.append(("MQTT topic", f"{topic} on {host.mqtt.url} (retained, QoS 1)"))
    rows += [("mirror", _mirror(mirror)) for mirror in p.mirrors]
    heading = "publisher:" if p.repo is None else f"publisher, repository {p.repo}:"
    return [heading, *_rows("  ", rows)]


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
