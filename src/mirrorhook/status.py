"""Status of this host's roles: one JSON document for ``GET /v1/status`` and ``status``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from mirrorhook import marker, receiver_state, snapshots
from mirrorhook.addresses import redact_upstream
from mirrorhook.config import Config
from mirrorhook.errors import MarkerError
from mirrorhook.escape import printable
from mirrorhook.freshness import Freshness
from mirrorhook.publisher_config import PublisherConfig
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import DaemonNote, SubscriptionNote, SyncResult
from mirrorhook.record import DeliveryLog, DeliveryResult, publisher_state_path
from mirrorhook.report_refusals import as_json, read_refused
from mirrorhook.state import iso_time, pid_alive
from mirrorhook.table import colour_of, format_table, paint


def receiver_status(config: ReceiverConfig) -> dict[str, Any]:
    """Return the receiver's state, from the state file that syncs and the daemon keep.

    Whoever is syncing notes it (with its pid) before it starts; a dead pid means the sync
    was interrupted, and the next one repairs it.
    """
    recorded = receiver_state.read(config)
    daemon = recorded.daemon if recorded.daemon and pid_alive(recorded.daemon.pid) else None
    if recorded.in_progress is not None:
        state = "syncing" if pid_alive(recorded.in_progress.pid) else "interrupted"
    else:
        state = daemon.phase if daemon and daemon.phase else "idle"
        if state == "idle" and recorded.held is not None:
            state = "held"  # by the safety valve, until a sync completes
    return {
        "role": "receiver",
        "upstream": redact_upstream(config.upstream),
        "target": str(config.target),
        "marker_file": config.marker,
        **_marker_entries("local_marker", config.target / config.marker),
        "state": state,
        "daemon_pid": None if daemon is None else daemon.pid,
        "sync_starts_at": daemon.sync_starts_at if daemon and state == "waiting" else None,
        "next_poll": None if daemon is None else daemon.next_poll,
        "subscriptions": _subscriptions(config, daemon),
        "last_sync": None if recorded.last_sync is None else recorded.last_sync.as_json(),
        "last_success": recorded.last_success,
        "held": None if recorded.held is None else dataclasses.asdict(recorded.held),
        "publish": config.publish,
        "snapshots": _snapshots(config) if config.publish == "snapshot" else [],
    }


def _snapshots(config: ReceiverConfig) -> list[dict[str, Any]]:
    """The complete snapshots, newest first: role, age, and (for replaced ones) the disk
    they use beyond the others and when their grace ends."""
    now = time.time()
    shown = []
    for snapshot in snapshots.listing(config):
        path = snapshots.layout(config).folder / snapshot.name
        replaced = snapshot.replaced
        shown.append(
            {
                "name": snapshot.name,
                "role": snapshot.role,
                "path": str(path),
                "age_seconds": round(now - snapshot.built),
                "replaced": None if replaced is None else iso_time(replaced),
                "removed_after": None if replaced is None else iso_time(replaced + config.grace),
                "own_bytes": snapshot.own_bytes,
            }
        )
    return shown


def _subscriptions(config: ReceiverConfig, daemon: DaemonNote | None) -> list[dict[str, Any]]:
    """Each subscription as the running daemon last noted it (``connected`` false and the
    rest empty when no daemon runs the tree)."""
    noted = {} if daemon is None else {note.url: note for note in daemon.subscriptions}
    found = []
    for entry in config.subscribe:
        note = noted.get(entry.shown) or SubscriptionNote(entry.shown, None, None, 0, 0, None)
        found.append(
            {
                **dataclasses.asdict(note),
                "via": str(entry.via),
                "connected": note.connected_since is not None,
            }
        )
    return found


def publisher_status(config: PublisherConfig) -> dict[str, Any]:
    """Return the publisher's record: the current marker and one entry per mirror."""
    recorded = DeliveryLog(publisher_state_path(config)).mirrors()
    seen = {row["name"]: row for row in Freshness(config).rows()}
    mirrors = []
    for mirror in config.mirrors:
        entry = recorded.get(mirror.name, {})
        mirrors.append(
            {
                "name": mirror.name,
                "url": mirror.url,
                "delivered": entry.get("delivered"),
                "delivered_at": entry.get("delivered_at"),
                "pending": entry.get("pending"),
                "result": entry.get("result"),
                "attempts": entry.get("attempts"),
                "last_status": entry.get("last_status"),
                "last_error": entry.get("last_error"),
                "state": seen[mirror.name]["state"],
                "serving": seen[mirror.name]["serving"],
                "lag": seen[mirror.name]["lag"],
                "last_check": seen[mirror.name]["last_check"],
                "check_error": seen[mirror.name]["error"],
            }
        )
    return {
        "root": str(config.root),
        "marker_file": config.marker,
        **_marker_entries("current_marker", config.root / config.marker),
        "mirrors": mirrors,
    }


def _marker_entries(key: str, path: Path) -> dict[str, str | None]:
    """Return ``key``, the marker's value (``None`` without one), and ``key_error``, why the
    marker was refused (``None`` when it was not); a refused marker's content is never shown."""
    try:
        return {key: marker.read(path), f"{key}_error": None}
    except MarkerError as err:
        return {key: None, f"{key}_error": err.reason}


def host_status(config: Config) -> dict[str, Any]:
    """Return the status of every role in ``config`` (what ``status --json`` prints)."""
    status: dict[str, Any] = {}
    if config.receiver is not None:
        status["receiver"] = receiver_status(config.receiver)
    elif config.receivers is not None:
        status["repos"] = [repo_status(repo) for repo in config.receivers.repos]
    if config.publishers is None:
        return status
    # Reports refused: per repository where the report named one, else for the publisher.
    refused = read_refused(config.publishers.state_dir)
    if config.publisher is not None:
        status["publisher"] = {
            **publisher_status(config.publisher),
            "refused_reports": as_json(refused.get(None)),
        }
    else:
        status["publishers"] = [
            {
                "repo": tree.repo,
                **publisher_status(tree),
                "refused_reports": as_json(refused.get(tree.repo)),
            }
            for tree in config.publishers.repos
        ]
        status["refused_reports"] = as_json(refused.get(None))
    return status


def repo_status(config: ReceiverConfig) -> dict[str, Any]:
    """One repository of the host form: its name and its tree's state (``disabled`` when
    it is kept in the config but not synced)."""
    status = {"name": config.name, "enabled": config.enabled, **receiver_status(config)}
    if not config.enabled:
        status["state"] = "disabled"
    return status


def is_failing(status: dict[str, Any]) -> bool:
    """Return whether the last sync or any delivery is failing (``status`` then exits 1)."""
    trees = [status.get("receiver", {}), *status.get("repos", [])]
    for tree in trees:
        last = tree.get("last_sync")
        enabled = tree.get("enabled", True)
        if enabled and isinstance(last, dict) and last.get("result") == SyncResult.FAILED:
            return True
    trees = [status.get("publisher", {}), *status.get("publishers", [])]
    mirrors = [mirror for tree in trees for mirror in tree.get("mirrors", [])]
    return any(
        mirror["result"] in (DeliveryResult.RETRYING, DeliveryResult.FAILED) for mirror in mirrors
    )


def format_status(status: dict[str, Any], *, colour: bool = False) -> str:
    """Return every role's status for a terminal (status words coloured if ``colour``)."""
    parts = [line] if (line := config_line(status.get("config"))) else []
    if "receiver" in status:
        parts.append("receiver\n" + _indent(format_receiver(status["receiver"], colour=colour)))
    if "repos" in status:
        parts.append("repositories\n" + _indent(format_repos(status["repos"], colour=colour)))
    if "publisher" in status:
        parts.append("publisher\n" + _indent(format_publisher(status["publisher"], colour=colour)))
    for tree in status.get("publishers", []):
        heading = f"publisher, repository {tree['repo']}\n"
        parts.append(heading + _indent(format_publisher(tree, colour=colour)))
    if status.get("refused_reports"):
        refused = format_refused(status["refused_reports"], colour=colour)
        parts.append("publisher, reports naming no repository it has\n" + _indent(refused))
    return "\n\n".join(parts)


def config_line(entry: dict[str, Any] | None) -> str | None:
    """One line when the running daemon's config is not the file on disk (``running_config``):
    the file was refused at a reload, does not load, or was not reloaded yet."""
    if entry is None or entry["state"] == "applied":
        return None
    file, loaded = entry["file"], entry["loaded_at"]
    problems = [problem.removeprefix(f"{file}: ") for problem in entry["problems"]]
    more = f" (and {len(problems) - 1} more: mirrorhook check-config lists them)"
    why = (problems[0] + (more if len(problems) > 1 else "")) if problems else ""
    if entry["state"] == "refused":
        said = f"was refused at the reload of {entry['refused_at']}: {why}"
    elif entry["state"] == "broken":
        said = f"does not load (a reload would be refused): {why}"
    else:
        said = "has changed since and was not reloaded (systemctl reload mirrorhook applies it)"
    runs = f"the daemon (pid {entry['daemon_pid']}) runs the config it loaded at {loaded}"
    return printable(f"config {file}: {runs}; the file on disk {said}")


def format_repos(repos: list[dict[str, Any]], *, colour: bool = False) -> str:
    """Return one aligned row per repository: state, local marker, last sync, its error."""
    rows = [("REPO", "STATE", "MARKER", "LAST SYNC", "FINISHED", "LAST SUCCESS", "ERROR")]
    for repo in repos:
        last = repo.get("last_sync") or {}
        rows.append(
            (
                str(repo["name"]),
                str(repo["state"]),
                _marker_text(repo, "local_marker", "-"),
                str(last.get("result") or "never"),
                str(last.get("finished") or "-"),
                str(repo.get("last_success") or "-"),
                str(last.get("error") or ""),
            )
        )
    return format_table(rows, colour=colour)


def format_publisher(status: dict[str, Any], *, colour: bool = False) -> str:
    """Return the publisher's status: its marker, then one aligned row per mirror."""
    rows = [("MIRROR", "DELIVERED", "WHEN", "RESULT", "ATTEMPTS", "SERVING", "STATE", "LAST ERROR")]
    rows += [
        (
            mirror["name"],
            mirror["delivered"] or "-",
            mirror["delivered_at"] or "-",
            mirror["result"] or ("never tried" if mirror["url"] else "no webhook"),
            str(mirror["attempts"] or "-"),
            mirror.get("serving") or "-",
            mirror.get("state") or "unknown",
            mirror["last_error"] or mirror.get("check_error") or "",
        )
        for mirror in status["mirrors"]
    ]
    current = _marker_text(status, "current_marker", "(none)")
    heading = printable(f"marker {status['root']}/{status['marker_file']}: {current}")
    text = heading + "\n" + format_table(rows, right=(4,), colour=colour)
    if status.get("refused_reports"):
        text += "\n" + format_refused(status["refused_reports"], colour=colour)
    return text


def format_refused(refused: dict[str, Any], *, colour: bool = False) -> str:
    """One line on the reports refused: how many, and the last one's time, sender, answer
    and reason (and the mirror it named, when the publisher has it)."""
    mirror = f" naming mirror {refused['last_mirror']}" if refused.get("last_mirror") else ""
    text = printable(
        f"refused reports: {refused['count']}, the last at {refused['last_at']} from "
        f"{refused['last_peer']}{mirror}: {refused['last_status']} {refused['last_reason']}"
    )
    return paint(text, colour_of("failed"), enabled=colour)


def _marker_text(status: dict[str, Any], key: str, missing: str) -> str:
    if status.get(f"{key}_error"):
        return f"(refused: {status[f'{key}_error']})"
    return str(status[key] or missing)


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())


def format_receiver(status: dict[str, Any], *, colour: bool = False) -> str:
    """Return the receiver's status as aligned ``key: value`` lines."""
    last = status.get("last_sync") or {}
    rows = [
        ("upstream", status["upstream"]),
        ("target", status["target"]),
        ("local marker", _marker_text(status, "local_marker", "(none: never synced)")),
        ("state", status["state"]),
        ("last sync", _describe(last) if last else "(never)"),
        ("last success", status.get("last_success") or "(never)"),
    ]
    if status.get("next_poll"):
        rows.append(("next poll", status["next_poll"]))
    rows.extend(
        ("subscription", _subscription_line(entry)) for entry in status.get("subscriptions", [])
    )
    if last.get("error"):
        rows.append(("error", last["error"]))
    if held := status.get("held"):
        rows.append(("held", f"since {held['since']}: {held['reason']}"))
        rows.append(("to apply it", "check the upstream, then: mirrorhook sync --allow-deletes"))
    rows.extend(("rsync said", line) for line in last.get("stderr_tail", [])[-5:])
    rows.extend(("snapshot", _snapshot_line(entry)) for entry in status.get("snapshots", []))
    width = max(len(key) for key, _ in rows)
    shade = {
        "state": status["state"],
        "last sync": last.get("result"),
        "error": "failed",
        "held": "held",
    }
    return "\n".join(
        f"{key + ':':<{width + 1}} "
        + paint(printable(str(value)), colour_of(str(shade.get(key))), enabled=colour)
        for key, value in rows
    )


def _snapshot_line(entry: dict[str, Any]) -> str:
    age = f"built {entry['age_seconds']} s ago"
    if entry["role"] == "current":
        return f"{entry['name']} (current, {age})"
    if entry["role"] == "spare":
        age = "retired, the next build starts from it"
    own = entry["own_bytes"]
    kept = f", {_size(own)} of its own" if own is not None else ""
    until = f", removed after {entry['removed_after']}" if entry["removed_after"] else ""
    return f"{entry['name']} ({entry['role']}, {age}{kept}{until})"


def _size(count: int) -> str:
    """Bytes in the largest unit that keeps a digit before the point (1000s, as df -H)."""
    value, unit = float(count), "B"
    for larger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, larger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _describe(last: dict[str, Any]) -> str:
    return (
        f"{last.get('result')} ({last.get('trigger')}), started {last.get('started')}, "
        f"took {last.get('duration')} s"
    )


def _subscription_line(entry: dict[str, Any]) -> str:
    """``URL: connected since T, last announcement T, N reconnects`` (or why it is down)."""
    if entry.get("connected"):
        state = f"connected since {entry['connected_since']}"
    elif entry.get("last_error"):
        state = f"down: {printable(entry['last_error'])}"
    else:
        state = "not connected"
    parts = [state, f"last announcement {entry.get('last_announcement') or '(none)'}"]
    parts.append(f"{entry.get('reconnects', 0)} reconnects")
    return f"{entry['url']}: " + ", ".join(parts)
