"""The page's mirror rows and their table: how far behind each mirror is, the last publish's
timeline from the first delivery, its last sync, last and next check, protocols and links,
its score; the legend and the totals across repositories."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mirrorhook import page, page_rows
from mirrorhook.freshness import Freshness, State
from mirrorhook.page_table import LEGEND
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig
from mirrorhook.record import DeliveryLog
from mirrorhook.state import iso_time
from tests.helpers import Clock, LiveUpstream

T0 = 1_800_000_000.0


def mirror(
    name: str, *, webhook: bool = True, checked: bool = True, urls: tuple[str, ...] = ()
) -> MirrorConfig:
    return MirrorConfig(
        name=name,
        url=f"https://{name}.example/v1/hook" if webhook else None,
        secret=None,
        secret_file=None,
        check_url=f"https://{name}.example/repo/CURRENT" if checked else None,
        urls=urls,
    )


def upstream(tmp_path: Path, clock: Clock) -> LiveUpstream:
    """Four mirrors after three publishes (at T0, +100 s, +200 s), seen at T0 + 300 s:
    ``a`` fresh, ``b`` two publishes behind with its webhook retried, ``cron`` serving a
    value never announced, ``plain`` never checked."""
    config = PublisherConfig(
        root=tmp_path / "ius",
        state_dir=tmp_path / "state",
        mirrors=(
            mirror(
                "a",
                urls=(
                    "https://a.example/repo/",
                    "rsync://a.example/repo/",
                    "http://a.example/repo/",
                ),
            ),
            mirror("b", urls=("ftp://b.example/repo/",)),
            mirror("cron", webhook=False),
            mirror("plain", checked=False),
        ),
    )
    freshness = Freshness(config, clock=clock)
    for value in ("1", "2", "3"):
        if value == "1":
            freshness.observed("b", "1", None)  # b synced the first publish, no more
        freshness.published(value)
        clock.now += 100
    clock.now = T0 + 210
    freshness.observed("a", "3", None)
    freshness.observed("cron", "x", None)
    clock.now = T0 + 300
    freshness.observed("a", "3", None)
    freshness.observed("b", "1", None)
    log = DeliveryLog(tmp_path / "publisher.json")
    log.delivered("a", "3", iso_time(T0 + 205))
    log.delivered("a", "3", iso_time(T0 + 250))  # again (notify): the first time stays
    log.note("b", result="retrying", last_error="HTTP 503: busy")
    live = LiveUpstream.of(freshness)
    live.records[None] = log
    live.schedules[None] = {"a": T0 + 330, "b": None, "cron": T0 + 3900}
    return live


def test_each_row_says_how_far_behind_its_mirror_is_and_what_comes_next(tmp_path: Path) -> None:
    clock = Clock(T0)
    view = page.snapshot(upstream(tmp_path, clock), now=clock.now)
    a, b, cron, plain = page_rows.rows(view.trees[0])
    assert (a.state, a.behind, a.behind_since) == (State.FRESH, 0, None)
    assert a.delivered == 5.0  # the first delivery, 5 s after the publish (not 50 s)
    assert a.lag == 10.0
    assert a.synced_at == T0 + 210  # first seen serving 3: the last check does not move it
    assert a.checked_at == T0 + 300
    assert (a.next_check, a.checking) == (T0 + 330, False)
    assert a.protocols == ("https", "rsync", "http")
    assert [url.linked for url in a.urls] == [True, False, True]
    assert a.score is not None
    assert (a.score.checks, a.score.fresh_checks) == (2, 2)
    assert (b.state, b.behind, b.behind_since, b.behind_all) == (State.SYNCING, 2, T0 + 100, False)
    assert (b.delivered, b.delivery, b.problem) == (None, "retrying", "HTTP 503: busy")
    assert (b.next_check, b.checking) == (None, True)
    assert b.protocols == ("ftp",)
    assert not b.urls[0].linked
    assert (cron.state, cron.behind, cron.behind_all, cron.behind_since) == (
        State.BEHIND,
        3,
        True,
        T0,
    )
    assert cron.delivery == "no webhook"
    assert (plain.state, plain.behind, plain.next_check, plain.checking) == (
        State.UNKNOWN,
        None,
        None,
        False,
    )
    assert plain.score is not None
    assert plain.score.share_fresh is None


def test_the_table_shows_each_value_with_the_key_it_sorts_by(tmp_path: Path) -> None:
    clock = Clock(T0)
    body = page.render(page.snapshot(upstream(tmp_path, clock), now=clock.now))
    rows = dict(re.findall(r'<tr class="\w+" data-mirror="(\w+)">(.*?)</tr>', body))
    cells = {name: re.findall(r"<td([^>]*)>(.*?)</td>", row) for name, row in rows.items()}

    def cell(name: str, column: int) -> tuple[str | None, str]:
        attributes, content = cells[name][column]
        key = re.search(r'data-v="([^"]*)"', attributes)
        return (None if key is None else key[1]), re.sub(r"<[^>]+>", "", content)

    assert cell("b", 3) == ("200", "2 · 3 min")  # behind: 2 publishes, 200 s
    assert cell("cron", 3) == ("300", "≥ 3 · 5 min")
    assert cell("a", 3) == ("0", "0")
    assert cell("plain", 3) == (None, "—")  # sorts last
    assert cell("a", 4) == ("10", "+5.00 s → — → +10 s")
    assert cell("cron", 4)[1] == "no webhook → — → —"
    assert cell("a", 5) == ("90", "90 s ago")  # synced, sorted by age
    assert cell("a", 7) == ("30", "in 30 s")  # next check, sorted by the wait
    assert cell("b", 7) == ("0", "now")
    assert cell("plain", 7) == (None, "—")
    assert cell("a", 8) == ("1", "100%")
    assert cell("b", 8) == ("0.5", "50%")  # fresh before the publishes, not since
    assert cell("a", 1) == ("0", "fresh")
    assert cell("plain", 1) == (str(list(State).index(State.UNKNOWN)), "unknown")
    # http(s) URLs are links, the rest text; the protocols under them.
    assert '<a href="https://a.example/repo/">' in rows["a"]
    assert '<a href="http://a.example/repo/">' in rows["a"]
    assert "<div>rsync://a.example/repo/</div>" in rows["a"]
    assert "<div>ftp://b.example/repo/</div>" in rows["b"]
    assert '<div class="protocols">https · rsync · http</div>' in rows["a"]
    # Every column sorts, numbers as numbers.
    headers = re.findall(r'<th data-sort="(\w+)"[^>]*>([^<]*)</th>', body)
    assert [name for _sort, name in headers][:4] == ["mirror", "state", "serving", "behind"]
    assert len(headers) == len(cells["a"])


def test_the_legend_explains_every_state_and_the_totals_count_every_repository(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    single = upstream(tmp_path / "one", clock)
    body = page.render(page.snapshot(single, now=clock.now))
    legend = re.search(r'<dl class="legend">(.*?)</dl>', body)
    assert legend is not None
    assert re.findall(r'<span class="state (\w+)">', legend[1]) == [str(s) for s in State]
    assert set(LEGEND) == set(State)
    assert "stale_after (15 min)" in legend[1]
    assert "<strong>1 of 4</strong> mirrors fresh: 1 fresh, 1 syncing, 1 behind, 1 unknown." in body
    assert "<h2>ius</h2>" in body  # the single form's tree by its root folder's name

    (freshness,) = single.trees.values()
    epel = Freshness(
        dataclasses.replace(freshness.config, repo="epel", state_dir=tmp_path / "epel"),
        clock=clock,
    )
    two = LiveUpstream.of(
        Freshness(dataclasses.replace(freshness.config, repo="ius"), clock=clock), epel
    )
    body = page.render(page.snapshot(two, now=clock.now))
    assert "<strong>1 of 8</strong> mirrors fresh across 2 repositories" in body
    assert '<li><a href="#repo-ius">ius</a>: 1 of 4 fresh, newest <code>3</code>' in body
    assert '<li><a href="#repo-epel">epel</a>: 0 of 4 fresh</li>' in body
    assert '<section id="repo-epel" data-repo="epel">' in body
