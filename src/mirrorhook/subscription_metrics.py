"""The subscriptions in ``/metrics``, read at each scrape from the live objects that hold
them (no copy to keep in step): per subscription of a mirror, whether it is connected,
its reconnects and the announcements it brought; per repository of a publisher, its event
stream subscribers (docs/design.md#subscriptions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mirrorhook.subscription import Seen

Followed = Callable[[], Iterable[tuple[str | None, Seen]]]
"""Every subscription of the daemon's trees now, with its repository's name."""
Counted = Callable[[], Iterable[tuple[str | None, int]]]
"""Every published repository with its number of event-stream subscribers."""


class SubscriptionCollector:
    """A Prometheus collector over the daemon's subscriptions and subscribers."""

    def __init__(self, followed: Followed, counted: Counted, *, repos: bool) -> None:
        self._followed = followed
        self._counted = counted
        self._repos = repos

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 - as metrics.py defers it
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        tree = ["repo"] if self._repos else []
        connected = GaugeMetricFamily(
            "mirrorhook_subscription_connected",
            "1 while the subscription's connection is up, else 0.",
            labels=[*tree, "url"],
        )
        reconnects = CounterMetricFamily(
            "mirrorhook_subscription_reconnects",
            "Times the subscription's connection dropped or failed and was made again.",
            labels=[*tree, "url"],
        )
        announcements = CounterMetricFamily(
            "mirrorhook_subscription_announcements",
            "Announcements the subscription brought that verified.",
            labels=[*tree, "url"],
        )
        for repo, seen in self._followed():
            labels = [*self._label(repo), seen.url]
            connected.add_metric(labels, 1.0 if seen.connected_since is not None else 0.0)
            reconnects.add_metric(labels, seen.reconnects)
            announcements.add_metric(labels, seen.announcements)
        subscribers = GaugeMetricFamily(
            "mirrorhook_subscribers",
            "Event streams (GET /v1/events) open for the repository.",
            labels=tree,
        )
        for repo, count in self._counted():
            subscribers.add_metric(self._label(repo), count)
        yield from (connected, reconnects, announcements, subscribers)

    def _label(self, repo: str | None) -> list[str]:
        return [repo or ""] if self._repos else []
