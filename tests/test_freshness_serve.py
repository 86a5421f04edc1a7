"""Freshness at the upstream with every part real: a serving publisher, two receivers that
sync, report and serve their trees over HTTP, a cron mirror the test syncs by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorhook.freshness import AFTER_PUBLISH
from tests.helpers import Processes, RsyncDaemon, publish, wait_until
from tests.scene import Mirror, scene

pytestmark = pytest.mark.slow

MIRRORS = (
    Mirror("a", urls=("https://a.example/repo/",)),
    Mirror("b", urls=("https://b.example/repo/",)),
    Mirror("cron", kind="cron", urls=("https://cron.example/repo/",)),
)


def test_each_mirror_turns_fresh_stale_or_unreachable_and_the_record_survives_a_restart(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """After a publish both receivers report and are seen fresh before the first scheduled
    check; the cron mirror is behind, stale after stale_after, fresh once synced; a mirror
    whose web server stops becomes unreachable; /mirrorlist lists exactly the fresh ones;
    a restarted publisher keeps every record."""
    with scene(tmp_path, processes, daemon, MIRRORS, check_interval=1, stale_after=3) as upstream:
        upstream.sync_cron("cron")
        wait_until(
            lambda: set(upstream.states().values()) == {"fresh"}, what="every mirror fresh at 1"
        )
        publish(daemon.root, "2", {"dir0/new.rpm": "new package\n"})
        wait_until(
            lambda: upstream.rows()["cron"]["newest"] == "2", what="the publish seen", timeout=10
        )
        assert upstream.states()["cron"] == "behind"
        wait_until(
            lambda: upstream.states() == {"a": "fresh", "b": "fresh", "cron": "stale"},
            what="receivers fresh, the cron mirror stale",
        )
        rows = upstream.rows()
        for name in ("a", "b"):
            assert rows[name]["serving"] == "2"
            # Seen fresh before the first check after a publish was due: the report did it.
            assert rows[name]["lag"] < AFTER_PUBLISH[0], rows[name]
            assert rows[name]["reported"] == "2"
        assert upstream.listed() == ["https://a.example/repo/", "https://b.example/repo/"]

        upstream.sync_cron("cron")
        wait_until(lambda: upstream.states()["cron"] == "fresh", what="cron fresh once synced")
        upstream.webs["b"].stop()
        wait_until(lambda: upstream.states()["b"] == "unreachable", what="b unreachable")
        assert upstream.rows()["b"]["error"]
        assert upstream.listed() == ["https://a.example/repo/", "https://cron.example/repo/"]

        before = upstream.rows()
        upstream.restart_publisher()
        after = upstream.rows()
        for name in ("a", "b", "cron"):
            kept = ("state", "serving", "since", "lag", "reported_at", "newest")
            assert {key: after[name][key] for key in kept} == {
                key: before[name][key] for key in kept
            }, name
