"""Prometheus metrics (``GET /metrics``): one registry per process, passed explicitly.

prometheus_client is imported when a ``Metrics`` is made (by the daemon): it costs some
50 ms of start-up that a one-shot ``mirrorhook sync`` from cron has no use for; that one
records into ``NoMetrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)
_FAST = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class SyncMetrics(Protocol):
    """What the sync engine records (``Metrics`` in the daemon, ``NoMetrics`` elsewhere)."""

    def time_stage(self, stage: str) -> AbstractContextManager[object]: ...
    def set_marker(self, side: str, value: str | None) -> None: ...
    def count_received_bytes(self, received: int) -> None: ...
    def sync_finished(self, result: str, *, success_at: float | None) -> None: ...
    def snapshot_switched(self) -> None: ...
    def kept_bytes(self, measure: Callable[[], int]) -> None: ...


class DeliveryMetrics(Protocol):
    """What the publisher records (``Metrics`` in the daemon, ``NoMetrics`` in ``notify``)."""

    def delivery_attempted(self, mirror: str, result: str, seconds: float) -> None: ...
    def delivered(self, lag: float) -> None: ...
    def watch_pending(self, count: Callable[[], float]) -> None: ...
    def mirror_checked(self, mirror: str, *, fresh: bool, first_lag: float | None) -> None: ...


class NoMetrics:
    """Records nothing (for one-shot commands, which have no /metrics to show it)."""

    def delivery_attempted(self, mirror: str, result: str, seconds: float) -> None:
        pass

    def delivered(self, lag: float) -> None:
        pass

    def watch_pending(self, count: Callable[[], float]) -> None:
        pass

    def mirror_checked(self, mirror: str, *, fresh: bool, first_lag: float | None) -> None:
        pass

    def time_stage(self, _stage: str) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def set_marker(self, side: str, value: str | None) -> None:
        pass

    def count_received_bytes(self, received: int) -> None:
        pass

    def sync_finished(self, result: str, *, success_at: float | None) -> None:
        pass

    def snapshot_switched(self) -> None:
        pass

    def kept_bytes(self, measure: Callable[[], int]) -> None:
        """Not measured: the walk it takes has no one to show its result to."""


class Metrics:
    """Every metric mirrorhook exports; the roles update the ones that concern them."""

    def __init__(self, *, repos: bool = False) -> None:
        """``repos``: label every per-tree metric with its repository (the host form)."""
        from prometheus_client import (  # noqa: PLC0415 - deferred, see the module's docstring
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
        )

        self.registry: CollectorRegistry = CollectorRegistry()
        self.repos = repos
        self._trees: dict[str | None, TreeMetrics] = {}
        tree = ["repo"] if repos else []
        registry = self.registry
        self.syncs = Counter(
            "mirrorhook_syncs", "Syncs by result.", [*tree, "result"], registry=registry
        )
        self.stage_seconds = Histogram(
            "mirrorhook_sync_stage_seconds",
            "Duration of the stages of a sync: reading the upstream marker, transferring "
            "the tree (stage 1), installing the marker (stage 2).",
            [*tree, "stage"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.bytes_received = Counter(
            "mirrorhook_rsync_received_bytes",
            "Bytes rsync received while transferring trees (from --stats).",
            tree,
            registry=registry,
        )
        self.last_success = Gauge(
            "mirrorhook_last_success_timestamp_seconds",
            "When the last sync succeeded (or found the mirror up to date).",
            tree,
            registry=registry,
        )
        self.marker = Gauge(
            "mirrorhook_marker_info",
            "The marker value, local (installed) and upstream (last read), as a label.",
            [*tree, "side", "marker"],
            registry=registry,
        )
        self.switches = Counter(
            "mirrorhook_snapshot_switches",
            "Times the tree switched to a new snapshot (publish = snapshot).",
            tree,
            registry=registry,
        )
        self.kept = Gauge(
            "mirrorhook_snapshot_kept_bytes",
            "Disk used by the replaced snapshots kept for their grace, beyond the current "
            "tree (measured after each switch).",
            tree,
            registry=registry,
        )
        self.webhooks = Counter(
            "mirrorhook_webhooks",
            "Webhooks received, by outcome.",
            [*tree, "outcome"],
            registry=registry,
        )
        self.deliveries = Counter(
            "mirrorhook_deliveries",
            "Delivery attempts to mirrors, by mirror and result.",
            [*tree, "mirror", "result"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "mirrorhook_delivery_attempt_seconds",
            "Duration of one delivery attempt.",
            tree,
            buckets=_FAST,
            registry=registry,
        )
        self.publish_lag = Histogram(
            "mirrorhook_publish_to_delivered_seconds",
            "From noticing a new marker to a mirror's acceptance of it.",
            tree,
            buckets=_SECONDS,
            registry=registry,
        )
        self.mirror_fresh = Gauge(
            "mirrorhook_mirror_fresh",
            "1 while the mirror serves the newest marker (by its check_url), else 0.",
            [*tree, "mirror"],
            registry=registry,
        )
        self.mirror_lag = Gauge(
            "mirrorhook_mirror_lag_seconds",
            "The last publish's lag at the mirror: publish noticed to first seen fresh.",
            [*tree, "mirror"],
            registry=registry,
        )
        self.publish_to_fresh = Histogram(
            "mirrorhook_publish_to_fresh_seconds",
            "From noticing a new marker to a mirror's check_url serving it.",
            tree,
            buckets=_SECONDS,
            registry=registry,
        )
        self.pending = Gauge(
            "mirrorhook_deliveries_pending",
            "Mirrors that have not accepted the newest marker yet.",
            tree,
            registry=registry,
        )
        self.publishing = (
            self.deliveries,
            self.delivery_seconds,
            self.publish_lag,
            self.mirror_fresh,
            self.mirror_lag,
            self.publish_to_fresh,
            self.pending,
        )
        """The publisher's families (beside a receiver's, in a hub's repository)."""

    def tree(self, repo: str | None) -> TreeMetrics:
        """The metrics of one tree (a receiver's or a publisher's): labelled with repository
        ``repo`` when the host has several (``repo=""`` for a single-form section beside
        them), unlabelled otherwise. One object per tree, so that a tree rebuilt by a
        reload replaces its own series instead of adding to them."""
        if repo not in self._trees:
            self._trees[repo] = TreeMetrics(self, repo)
        return self._trees[repo]

    def forget(self, repo: str | None) -> None:
        """Remove every series of ``repo`` (removed by a reload)."""
        if (tree := self._trees.pop(repo, None)) is not None:
            tree.forget()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client import generate_latest  # noqa: PLC0415 - see the docstring

        return generate_latest(self.registry)


class TreeMetrics:
    """The per-tree metrics of one repository (``SyncMetrics``, plus its webhooks)."""

    def __init__(self, metrics: Metrics, repo: str | None) -> None:
        self._metrics = metrics
        self._tree = {"repo": repo or ""} if metrics.repos else {}
        self._markers: dict[str, str] = {}
        """The marker value shown per side, so that a new one replaces it."""
        self._shown: set[tuple[Any, tuple[str, ...]]] = set()
        """Every series this tree has shown: (family, label values)."""

    def time_stage(self, stage: str) -> AbstractContextManager[object]:
        """Time one stage of a sync."""
        timer: AbstractContextManager[object] = self._series(
            self._metrics.stage_seconds, stage=stage
        ).time()
        return timer

    def sync_finished(self, result: str, *, success_at: float | None) -> None:
        """Count a sync by result; note when it succeeded."""
        self._series(self._metrics.syncs, result=result).inc()
        if success_at is not None:
            self.succeeded_at(success_at)

    def succeeded_at(self, when: float) -> None:
        """Show ``when`` as the last success (also restored from the state file at start)."""
        self._series(self._metrics.last_success).set(when)

    def set_marker(self, side: str, value: str | None) -> None:
        """Show ``value`` as the ``side`` marker (one series per side)."""
        family = self._metrics.marker
        shown = self._markers.pop(side, None)
        if shown is not None:
            self._drop(family, side=side, marker=shown)
        if value is not None:
            self._series(family, side=side, marker=value).set(1)
            self._markers[side] = value

    def count_received_bytes(self, received: int) -> None:
        """Add the bytes an rsync run received (from its --stats summary)."""
        self._series(self._metrics.bytes_received).inc(received)

    def snapshot_switched(self) -> None:
        self._series(self._metrics.switches).inc()

    def kept_bytes(self, measure: Callable[[], int]) -> None:
        """Show the kept snapshots' disk, as ``measure`` reads it from their record."""
        self._series(self._metrics.kept).set(measure())

    def webhook(self, outcome: str) -> None:
        """Count one webhook for this tree by its outcome."""
        self._series(self._metrics.webhooks, outcome=outcome).inc()

    def delivery_attempted(self, mirror: str, result: str, seconds: float) -> None:
        """Count one delivery attempt to ``mirror`` by result, and time it."""
        self._series(self._metrics.delivery_seconds).observe(seconds)
        self._series(self._metrics.deliveries, mirror=mirror, result=result).inc()

    def delivered(self, lag: float) -> None:
        """A mirror accepted a marker ``lag`` seconds after the publisher noticed it."""
        self._series(self._metrics.publish_lag).observe(lag)

    def watch_pending(self, count: Callable[[], float]) -> None:
        """Report ``count()`` as the number of mirrors still owed the newest marker."""
        self._series(self._metrics.pending).set_function(count)

    def mirror_checked(self, mirror: str, *, fresh: bool, first_lag: float | None) -> None:
        """A check of ``mirror``: fresh or not; ``first_lag`` when it just became fresh."""
        self._series(self._metrics.mirror_fresh, mirror=mirror).set(1 if fresh else 0)
        if first_lag is not None:
            self._series(self._metrics.mirror_lag, mirror=mirror).set(first_lag)
            self._series(self._metrics.publish_to_fresh).observe(first_lag)

    def keep_mirrors(self, names: Collection[str]) -> None:
        """Remove the series of every mirror not in ``names`` (removed by a reload)."""
        self._remove(lambda _family, labels: "mirror" in labels and labels["mirror"] not in names)

    def forget_publisher(self) -> None:
        """Remove this tree's publisher series (its published repository is removed by a
        reload); in a hub, the receiver of the same repository keeps its own."""
        publishing = self._metrics.publishing
        self._remove(lambda family, _labels: family in publishing)

    def forget(self) -> None:
        """Remove every series of this tree (a repository removed by a reload): an alert on
        its last success must not fire for ever."""
        self._remove(lambda _family, _labels: True)
        self._markers.clear()

    def _remove(self, which: Callable[[Any, dict[str, str]], bool]) -> None:
        """Remove each series shown whose family and labels ``which`` picks."""
        for family, values in list(self._shown):
            if which(family, dict(zip(family._labelnames, values, strict=True))):
                with contextlib.suppress(KeyError):
                    family.remove(*values)
                self._shown.discard((family, values))

    def _series(self, family: Any, **labels: str) -> Any:
        """``family``'s series for this tree and ``labels`` (the family itself when it has
        no labels at all), remembered for ``forget``."""
        every = {**self._tree, **labels}
        if not every:
            return family
        series = family.labels(**every)
        self._shown.add((family, tuple(every[name] for name in family._labelnames)))
        return series

    def _drop(self, family: Any, **labels: str) -> None:
        every = {**self._tree, **labels}
        values = tuple(every[name] for name in family._labelnames)
        with contextlib.suppress(KeyError):
            family.remove(*values)
        self._shown.discard((family, values))
