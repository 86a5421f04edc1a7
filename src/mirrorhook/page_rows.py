"""The page's mirror rows: what the upstream operator reads of each mirror, computed from one
repository's snapshot — plain values, rendered by ``page_table.py``.

Per mirror: its state, what it serves and how far behind that is (publishes, and the time
since the first one it does not serve), the last publish's timeline (webhook first
delivered → report → first seen fresh, in seconds after the publish), when it was last
seen to sync, its last and next check, its protocols and URLs, and its score over the
history kept (the share of checks that found it fresh, its mean delay). Everything comes
from memory: no lookup, no file, nothing that costs more than a step per mirror
(docs/design.md#freshness).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mirrorhook.freshness import Freshness
from mirrorhook.history import Score
from mirrorhook.publisher_config import PublisherConfig
from mirrorhook.record import DeliveryResult, Fields
from mirrorhook.report_refusals import Refused

LINKED = ("http", "https")
"""The schemes of the URLs the page links to (a browser follows no rsync:// link)."""


@dataclass(frozen=True, slots=True)
class Tree:
    """One repository as the page shows it: taken on the event loop, read in a worker thread."""

    config: PublisherConfig
    freshness: Freshness
    """A snapshot of the tree's freshness (see ``Freshness.snapshot``)."""
    deliveries: Fields
    publishes: list[dict[str, Any]]
    """The last publishes, with each mirror's delay, that the curve draws (a copy)."""
    scores: dict[str, Score]
    next_checks: dict[str, float | None]
    """When each checked mirror's next check is due (``None``: being checked now)."""
    refused: Refused | None = None
    """The reports refused for this repository."""
    subscribers: int | None = None
    """The event streams open for it (``None``: the publisher serves none)."""


@dataclass(frozen=True, slots=True)
class Url:
    """One of a mirror's base URLs, and whether the page links to it."""

    text: str
    linked: bool


@dataclass(frozen=True, slots=True)
class Row:
    """One mirror as the page shows it; times are Unix seconds, offsets seconds after the
    newest publish, ``None`` where there is nothing to show."""

    name: str
    state: str
    serving: str | None
    check_url: str | None
    urls: tuple[Url, ...]
    protocols: tuple[str, ...]
    """The schemes of its URLs, in the order first given (``https``, ``rsync``…)."""
    behind: int | None
    """Publishes announced since the one it serves (``None``: nothing known of it)."""
    behind_all: bool
    """It serves none of the publishes remembered: at least ``behind`` behind."""
    behind_since: float | None
    """When the first publish it does not serve was announced."""
    delivered: float | None
    """When the webhook of the newest publish was first delivered."""
    delivery: str | None
    """Instead of a delivery time: ``no webhook``, or how the delivery stands."""
    reported: float | None
    claimed: str | None
    """What its report of the newest publish claimed."""
    lag: float | None
    """When it was first seen serving the newest publish."""
    synced_at: float | None
    """When it was first seen serving what it serves now: its last sync the upstream saw."""
    checked_at: float | None
    next_check: float | None
    checking: bool
    """A check of it is running or queued now."""
    score: Score | None
    problem: str | None


def rows(shown: Tree) -> list[Row]:
    """Every mirror's row, in the config's order."""
    freshness = shown.freshness
    announced = {known.value for known in freshness.announced}
    mirrors = {mirror.name: mirror for mirror in shown.config.mirrors}
    return [
        _row(
            found,
            shown,
            webhook=mirrors[found["name"]].url is not None,
            announced=found["serving"] in announced,
        )
        for found in freshness.rows()
    ]


def _row(found: dict[str, Any], shown: Tree, *, webhook: bool, announced: bool) -> Row:
    name = found["name"]
    freshness = shown.freshness
    delivery = shown.deliveries.get(name, {})
    published = freshness.published_at
    known = found["last_check"] is not None and freshness.newest is not None
    behind = found["behind"] if known else None
    since = seconds(found["behind_since"])
    delivered, standing = _delivery(delivery, freshness.newest, published, webhook=webhook)
    reported_at = seconds(found["reported_at"])
    reported = None
    if reported_at is not None and published is not None and reported_at >= published:
        reported = reported_at - published
    retrying = delivery.get("result") in (DeliveryResult.RETRYING, DeliveryResult.FAILED)
    due = shown.next_checks.get(name)
    return Row(
        name=name,
        state=found["state"],
        serving=found["serving"],
        check_url=found["check_url"],
        urls=tuple(Url(url, _linked(url)) for url in found["urls"]),
        protocols=tuple(dict.fromkeys(_scheme(url) for url in found["urls"])),
        behind=behind,
        behind_all=bool(behind) and not announced,
        behind_since=since if behind else None,
        delivered=delivered,
        delivery=standing,
        reported=reported,
        claimed=found["reported"] if reported is not None else None,
        lag=found["lag"],
        synced_at=seconds(found["since"]),
        checked_at=seconds(found["last_check"]),
        next_check=due,
        checking=name in shown.next_checks and due is None,
        score=shown.scores.get(name),
        problem=found["error"] or (delivery.get("last_error") if retrying else None),
    )


def _delivery(
    delivery: dict[str, Any], newest: str | None, published: float | None, *, webhook: bool
) -> tuple[float | None, str | None]:
    """When the newest publish's webhook was first delivered, else why there is no time."""
    if not webhook:
        return None, "no webhook"
    delivered_at = seconds(delivery.get("delivered_at"))
    if published is not None and delivery.get("delivered") == newest and delivered_at:
        return max(0.0, delivered_at - published), None
    result = delivery.get("result")
    if result and result != DeliveryResult.DELIVERED:
        return None, str(result)
    return None, None


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower()


def _linked(url: str) -> bool:
    """Whether the page links to ``url``: an http(s) URL with a host (never ``javascript:``)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower() in LINKED and bool(parts.netloc)


def seconds(value: object) -> float | None:
    """A recorded RFC 3339 time as Unix seconds; ``None`` when absent or not a time."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
