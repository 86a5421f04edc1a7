"""A flood of 10,000 hostile and duplicate webhooks at a real ``mirrorhook serve``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import RsyncDaemon, free_port, publish, receiver_toml, wait_for_port

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`

TOTAL = 10_000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_flood_no_5xx_one_sync_and_a_follow_up_at_most_healthz_answers(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """10,000 requests from another process (bad signatures, stale, replays, oversized,
    not JSON, slow bodies, valid duplicates): no 5xx, every kind refused with its own code,
    at most one sync plus one follow-up, /healthz answers throughout, RSS stays bounded."""
    port = free_port()
    config = receiver_toml(tmp_path, upstream=daemon.url, port=port, backoff=1)
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "mirrorhook", "serve", "-c", str(config)], stderr=sink
        )
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 30
        while "already up to date" not in log.read_text() and "installed" not in log.read_text():
            assert time.monotonic() < deadline, "the startup sync did not finish"
            time.sleep(0.05)
        publish(daemon.root, "2")
        rss_before = rss_kb(server.pid)
        result = subprocess.run(
            [sys.executable, "-m", "tests.flood", f"http://127.0.0.1:{port}",
             str(tmp_path / "receiver.secret"), "2", str(TOTAL)],
            capture_output=True, text=True, timeout=180, check=True,
        )  # fmt: skip
        report = json.loads(result.stdout)
        time.sleep(3)  # let the scheduled sync and its follow-up run
        rss_after = rss_kb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
    statuses = report["statuses"]
    every = {code for counts in statuses.values() for code in map(int, counts)}
    assert not any(code >= 500 for code in every), statuses
    assert set(statuses["bad_signature"]) == {"401"}
    assert set(statuses["stale"]) == {"401"}
    assert set(statuses["not_json"]) == {"400"}
    assert set(statuses["oversized"]) <= {"413", "0"}
    assert set(statuses["replay"]) <= {"200", "202"}
    assert statuses["replay"].get("202", 0) <= 1
    assert set(statuses["valid"]) <= {"200", "202"}
    assert set(statuses["slow"]) == {"401"}  # read whole (slow, within the deadline), then refused
    text = log.read_text()
    webhook_syncs = text.count("sync started (webhook")
    assert 1 <= webhook_syncs <= 2, webhook_syncs
    # Every probe got a 200 (the flood tool fails otherwise) all along the flood; how fast
    # is measured by bench/capacity.py, not asserted here.
    assert report["healthz_probes"] > 10, report
    assert rss_after - rss_before < 60_000, (rss_before, rss_after)
