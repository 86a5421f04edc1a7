"""How publishes spread: the record kept for the page's curve, the scores and /v1/history."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import history, propagation, state
from mirrorhook.history import DAY, History
from tests.helpers import Clock, until


def test_each_publish_keeps_each_mirrors_first_delay_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    clock = Clock(100 * DAY)
    kept = History(tmp_path, clock)
    kept.published("1", clock.now)
    kept.fresh("a", "1", 2.5)
    kept.fresh("a", "1", 99.0)  # seen again later: the first time counts
    kept.fresh("b", "1", 40.0)
    kept.fresh("c", "unknown", 1.0)  # a value never published: nothing to record
    again = History(tmp_path, clock)
    assert again.publishes() == [{"value": "1", "at": clock.now, "fresh": {"a": 2.5, "b": 40.0}}]


def test_a_score_is_the_share_of_checks_fresh_and_the_mean_delay(tmp_path: Path) -> None:
    clock = Clock(100 * DAY)
    kept = History(tmp_path, clock)
    for value, lag in (("1", 10.0), ("2", 30.0)):
        kept.published(value, clock.now)
        kept.fresh("a", value, lag)
    for fresh in (True, True, True, False):
        kept.checked("a", fresh=fresh)
    score = kept.score("a")
    assert (score.checks, score.fresh_checks, score.share_fresh, score.mean_delay) == (
        4,
        3,
        0.75,
        20.0,
    )
    assert kept.score("never").share_fresh is None
    document = history.document(kept.record(), ["a"])
    assert document["mirrors"]["a"] == {
        "checks": 4,
        "fresh_checks": 3,
        "share_fresh": 0.75,
        "mean_delay": 20.0,
    }
    json.dumps(document)  # what /v1/history answers is JSON


def test_the_record_is_bounded_by_age_and_by_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_PUBLISHES", 50)
    clock = Clock(100 * DAY)
    kept = History(tmp_path, clock)
    kept.published("old", clock.now)
    kept.checked("a", fresh=True)
    clock.now += (history.DAYS + 1) * DAY  # the checks are counted by whole days
    kept.published("new", clock.now)
    assert [e["value"] for e in kept.publishes()] == ["new"]
    assert kept.score("a").checks == 0
    for number in range(history.MAX_PUBLISHES + 10):
        kept.published(str(number), clock.now)
    assert len(kept.publishes()) == history.MAX_PUBLISHES
    size = (tmp_path / history.STATE_NAME).stat().st_size
    assert size < 200 * history.MAX_PUBLISHES


def test_a_record_that_does_not_read_back_is_left_out(tmp_path: Path) -> None:
    (tmp_path / history.STATE_NAME).write_text(
        '{"publishes": [{"value": 1}, "x", {"value": "2", "at": 5, "fresh": {}}],'
        ' "checks": {"a": {"1": [1, 1], "2": "no"}, "b": 3}}'
    )
    kept = History(tmp_path, lambda: 5.0)
    assert [e["value"] for e in kept.publishes()] == ["2"]
    assert kept.score("a").checks == 1


async def test_in_the_daemon_the_record_is_written_off_the_loop_after_a_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes made on the loop are gathered for SAVE_DELAY, across turns of the loop, and
    written in one go by a thread other than the loop's."""
    monkeypatch.setattr(history, "SAVE_DELAY", 0.5)
    writers: list[threading.Thread] = []
    real_write = state.write_json  # what history.py calls

    def noting_the_writer(*args: Any, **kwargs: Any) -> None:
        writers.append(threading.current_thread())
        real_write(*args, **kwargs)

    monkeypatch.setattr(history, "write_json", noting_the_writer)
    kept = History(tmp_path)
    kept.published("1", time.time())
    await asyncio.sleep(0)  # a turn of the loop between two changes
    kept.fresh("a", "1", 2.5)
    assert not (tmp_path / history.STATE_NAME).exists()  # gathered, not written at once
    await until((tmp_path / history.STATE_NAME).exists)
    await asyncio.sleep(0)
    assert History(tmp_path).publishes()[0]["value"] == "1"
    assert History(tmp_path).publishes()[0]["fresh"] == {"a": 2.5}
    assert len(writers) == 1, writers  # one write for both changes
    assert writers[0] is not threading.current_thread()  # the loop's thread


def test_the_curve_steps_up_at_each_mirrors_delay() -> None:
    """Four mirrors, two fresh after 1 s and 100 s: the curve climbs to 25% then 50%."""
    corners = propagation.points([100.0, 1.0], mirrors=4, until=1000.0)
    shares = [round(1 - (y - propagation.TOP) / 180, 2) for _x, y in corners]
    assert shares == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5]
    assert corners[-1][0] == propagation._x(1000.0)
    assert propagation.points([5.0], mirrors=1, until=2.0)[-1][1] == propagation._y(0.0)


def test_the_chart_is_svg_with_the_newest_publish_bold() -> None:
    publishes = [
        {"value": "1", "at": 0.0, "fresh": {"a": 2.0}},
        {"value": "2", "at": 600.0, "fresh": {"a": 3.0, "b": 50.0}},
    ]
    chart = propagation.svg(publishes, mirrors=2, now=1200.0)
    root = ET.fromstring(chart)  # noqa: S314 - our own output, parsed to check its shape
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    assert lines[-1].get("class") == "newest"
    assert propagation.svg([], mirrors=2, now=0.0) == ""


def test_the_delays_kept_are_bounded_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With many mirrors the record keeps fewer publishes: at most MAX_DELAYS delays in all,
    the oldest publishes dropped first."""
    monkeypatch.setattr(history, "MAX_DELAYS", 25)
    clock = Clock(100 * DAY)
    kept = History(tmp_path, clock)
    for number in range(6):
        kept.published(str(number), clock.now)
        for mirror in range(10):
            kept.fresh(f"m{mirror}", str(number), 1.0)
    publishes = kept.publishes()
    assert sum(len(entry["fresh"]) for entry in publishes) <= 25
    assert [entry["value"] for entry in publishes] == ["4", "5"]


def test_the_scores_the_page_reads_are_the_records_after_trims_and_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running totals that score every mirror for the page in one step each give what
    scoring the whole record gives, once publishes and days of checks have aged out or
    been dropped for the bound on delays, and after a restart."""
    monkeypatch.setattr(history, "MAX_DELAYS", 60)
    clock = Clock(100 * DAY)
    kept = History(tmp_path, clock)
    names = [f"m{number}" for number in range(6)]
    for number in range(history.DAYS + 10):
        kept.published(str(number), clock.now)
        for index, name in enumerate(names):
            if (number + index) % 3:
                kept.fresh(name, str(number), (number * index) % 17 + 0.125)
            kept.checked(name, fresh=bool((number + index) % 3))
        clock.now += DAY
    expected = history.scores(kept.record(), [*names, "never"])
    assert expected["m1"].checks < history.DAYS + 10  # days did age out
    assert kept.scores([*names, "never"]) == expected
    assert History(tmp_path, clock).scores([*names, "never"]) == expected
