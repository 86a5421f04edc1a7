"""Freshness at the upstream: real HTTP servers serve each mirror's marker, real checks
read them, the states follow, and the mirror list hands out fresh mirrors only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mirrorhook import mirrorlist, page, reports, signing
from mirrorhook.checker import Checker, CheckError, serving
from mirrorhook.config import load_config
from mirrorhook.freshness import Announcement, Freshness, State, freshness_path
from mirrorhook.public_addresses import public_session
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig, PublisherHost
from mirrorhook.response_cache import ResponseCache
from mirrorhook.state import iso_time
from tests.helpers import (
    ClientFactory,
    Clock,
    LiveUpstream,
    ReportPoster,
    ServerFactory,
    listed_urls,
    publisher_toml,
    report_body,
    signed_report,
    until,
    write_secret,
)


def static_mirror(folder: Path) -> web.Application:
    """A mirror's web server: its tree served as files, as users get them."""
    folder.mkdir(parents=True, exist_ok=True)
    app = web.Application()
    app.router.add_static("/", folder)
    return app


async def mirrors_config(
    tmp_path: Path, aiohttp_server: ServerFactory, names: list[str], **overrides: Any
) -> tuple[PublisherConfig, dict[str, Path], dict[str, TestServer]]:
    """A publisher whose mirrors each serve their marker from a real static server."""
    trees = {name: tmp_path / "mirrors" / name for name in names}
    servers = {name: await aiohttp_server(static_mirror(tree)) for name, tree in trees.items()}
    (tmp_path / "repo").mkdir(exist_ok=True)
    path = publisher_toml(
        tmp_path,
        root=tmp_path / "repo",
        mirrors=[(name, f"http://127.0.0.1:1/{name}") for name in names],
        **overrides,
    )
    text = path.read_text()
    for name, server in servers.items():
        text = text.replace(
            f'url = "http://127.0.0.1:1/{name}"',
            f'check_url = "{server.make_url("/CURRENT")}"\nurls = ["https://{name}.example/repo/"]',
        )
    path.write_text(text)
    config = load_config(path).publisher
    assert config is not None
    return config, trees, servers


def serve_marker(tree: Path, value: str) -> None:
    (tree / "CURRENT").write_text(value + "\n")


async def check_each(freshness: Freshness) -> list[State]:
    """Check each mirror of ``freshness`` once, as the checker does; the states found."""
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public)
        return [await checker.check(mirror) for mirror in freshness.config.mirrors]


async def checked_once(config: PublisherConfig, *announced: str) -> tuple[Freshness, list[State]]:
    """The record once ``announced`` values were published in turn and each mirror was
    checked once; and the states those checks found."""
    freshness = Freshness(config)
    for value in announced:
        freshness.published(value)
    return freshness, await check_each(freshness)


@contextlib.asynccontextmanager
async def running(checker: Checker) -> AsyncIterator[None]:
    """The checker's own loop, for the block; stopped (cancelled) after it."""
    task = asyncio.create_task(checker.run())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_states_follow_what_each_mirror_serves(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """fresh when serving the newest marker, behind (these mirrors get no webhooks) until
    stale_after, then stale;
    unreachable after three failed checks; the lag of the publish is recorded."""
    now = 1_800_000_000.0
    config, trees, servers = await mirrors_config(
        tmp_path, aiohttp_server, ["a", "b", "c"], stale_after=60
    )
    for tree in trees.values():
        serve_marker(tree, "1")
    freshness = Freshness(config, clock=lambda: now)
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public)
        checker.published("2")
        serve_marker(trees["a"], "2")
        now += 12.5
        states = {mirror.name: await checker.check(mirror) for mirror in config.mirrors}
        assert states == {"a": State.FRESH, "b": State.BEHIND, "c": State.BEHIND}  # no webhooks
        now += 60
        assert freshness.state("b") is State.STALE
        await servers["c"].close()
        for _ in range(3):
            await checker.check(config.mirrors[2])
        assert freshness.state("c") is State.UNREACHABLE
    rows = {row["name"]: row for row in freshness.rows()}
    assert (rows["a"]["serving"], rows["a"]["lag"]) == ("2", 12.5)
    assert rows["b"]["serving"] == "1"
    assert rows["c"]["error"]
    # A restart keeps the record (written within SAVE_DELAY, or at shutdown).
    freshness.flush()
    again = Freshness(config, clock=lambda: now)
    assert (again.newest, again.state("a"), again.state("c")) == ("2", "fresh", "unreachable")


async def test_a_check_is_bounded_and_never_trusts_the_answer(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """Over-long bodies, error statuses, redirect loops and answers that are no marker are
    check errors, each saying why; a plain marker is read as the marker rules say."""
    app = web.Application()

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 10_000)

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.url))

    async def broken(_request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def escape(_request: web.Request) -> web.Response:
        return web.Response(body=b"\x1b[2J7\n")

    async def fine(_request: web.Request) -> web.Response:
        return web.Response(body=b"Wed Nov 25 12:00:00 UTC 2026\n")

    for path, handler in [("/big", big), ("/loop", loop), ("/500", broken), ("/esc", escape)]:
        app.router.add_get(path, handler)
    app.router.add_get("/fine", fine)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session, public_session() as public:
        reasons = {}
        for path in ("/big", "/loop", "/500", "/esc"):
            with pytest.raises(CheckError) as caught:
                await serving(session, str(server.make_url(path)), public=public)
            reasons[path] = str(caught.value)
        assert await serving(session, str(server.make_url("/fine")), public=public) == (
            "Wed Nov 25 12:00:00 UTC 2026"
        )
    assert "larger than" in reasons["/big"]
    assert reasons["/loop"] == "more than 3 redirects"
    assert reasons["/500"] == "HTTP 500"
    assert "non-printable" in reasons["/esc"]


async def test_the_mirror_list_hands_out_fresh_mirrors_only(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a", "b"])
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    freshness, _states = await checked_once(config, "2")
    app = web.Application()
    mirrorlist.add_routes(app, LiveUpstream.of(freshness))
    client = await aiohttp_client(app)
    listed = await (await client.get("/mirrorlist")).text()
    assert listed.splitlines()[1:] == ["https://a.example/repo/"]
    assert (await (await client.get("/mirrorlist?protocol=http")).text()).splitlines()[1:] == []
    document = await (await client.get("/v1/mirrors")).json()
    assert [(m["name"], m["state"]) for m in document["mirrors"]] == [
        ("a", "fresh"),
        ("b", "behind"),
    ]
    assert (await client.get("/mirrorlist?repo=nope")).status == 404


def with_mirror(config: PublisherConfig, name: str, **changes: Any) -> PublisherConfig:
    """``config`` with mirror ``name`` changed (its ``check_url``, its ``urls``)."""
    mirrors = tuple(
        dataclasses.replace(m, **changes) if m.name == name else m for m in config.mirrors
    )
    return dataclasses.replace(config, mirrors=mirrors)


async def listed(client: TestClient[web.Request, web.Application], query: str = "") -> list[str]:
    """The base URLs ``/mirrorlist`` hands out, without its comment line."""
    return listed_urls(await (await client.get(f"/mirrorlist{query}")).text())


async def test_with_no_fresh_mirror_the_list_names_those_serving_the_newest_announced_value(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """Users are never sent nowhere, nor to a mirror serving what was never published: with
    nobody serving the newest value yet, the list names the mirrors serving the most
    recently announced value any of them serves; a mirror serving a new random value at
    each check is never listed (before the fix, the value seen most recently won: it alone
    was listed)."""
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a", "b", "evil"])

    async def random_value(_request: web.Request) -> web.Response:
        return web.Response(text=f"{secrets.token_hex(8)}\n")

    app = web.Application()
    app.router.add_get("/CURRENT", random_value)
    evil = await aiohttp_server(app)
    config = with_mirror(config, "evil", check_url=str(evil.make_url("/CURRENT")))
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    now = 1_800_000_000.0
    freshness = Freshness(config, clock=lambda: now)
    front = web.Application()
    mirrorlist.add_routes(front, LiveUpstream.of(freshness))
    # Each request here follows a change: on a clock where every list is stale at once
    # (the daemon's is a second old at most).
    front[mirrorlist.LISTS] = ResponseCache(
        mirrorlist.listings, clock=itertools.count(0, 10).__next__
    )
    client = await aiohttp_client(front)
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public)
        for value in ("1", "2", "3"):  # nobody serves 3 yet
            checker.published(value)
        for mirror in config.mirrors:  # b, a, then evil: the value seen most recently
            now += 10
            await checker.check(mirror)
        assert await listed(client) == ["https://a.example/repo/"]
        for _ in range(3):
            now += 10
            await checker.check(config.mirrors[2])  # evil's next random value
            assert await listed(client) == ["https://a.example/repo/"]
        serve_marker(trees["b"], "3")
        await checker.check(config.mirrors[1])
        assert await listed(client) == ["https://b.example/repo/"]  # fresh: the newest


async def test_the_list_is_chosen_among_the_mirrors_it_can_list(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """The only fresh mirror has no urls (or none of the protocol asked for): the list names
    the listable mirrors serving the newest announced value they serve, never nobody (before
    the fix it was empty until they caught up)."""
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a", "b", "c"])
    config = with_mirror(config, "a", urls=())
    config = with_mirror(config, "c", urls=("https://c.example/repo/", "rsync://c.example/repo/"))
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    serve_marker(trees["c"], "1")
    freshness, states = await checked_once(config, "1", "2")
    assert states == [State.FRESH, State.BEHIND, State.BEHIND]
    app = web.Application()
    mirrorlist.add_routes(app, LiveUpstream.of(freshness))
    client = await aiohttp_client(app)
    assert await listed(client) == [
        "https://b.example/repo/",
        "https://c.example/repo/",
        "rsync://c.example/repo/",
    ]
    assert await listed(client, "?protocol=rsync") == ["rsync://c.example/repo/"]
    assert await listed(client, "?protocol=ftp") == []  # nobody can be listed


def test_the_values_announced_survive_a_restart_and_an_older_record_loads(tmp_path: Path) -> None:
    """The record keeps the last ten values announced with their times (a value announced
    again moves to the end); a record written before it kept them loads its newest alone."""
    (tmp_path / "repo").mkdir()
    path = publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("a", "http://a.example/")])
    config = load_config(path).publisher
    assert config is not None
    now = 1_800_000_000.0
    freshness = Freshness(config, clock=lambda: now)  # outside an event loop: written at once
    for value in range(12):
        freshness.published(str(value))
        now += 1
    freshness.published("5")  # a rollback
    again = Freshness(config)
    assert [known.value for known in again.announced] == [
        *("2", "3", "4", "6", "7", "8", "9", "10", "11"),
        "5",
    ]
    assert (again.newest, again.published_at) == ("5", now)
    assert again.announced[0] == Announcement("2", now - 10)
    freshness_path(config).write_text(json.dumps({"newest": "7", "published_at": 5.5}))
    older = Freshness(config)
    assert older.announced == [Announcement("7", 5.5)]
    assert (older.newest, older.published_at) == ("7", 5.5)


async def test_a_failed_write_of_the_record_is_retried_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """freshness.json cannot be replaced (the path is a folder that is not empty): the record
    stays unsaved and the failure is logged once, however many attempts; once the path is
    free, the retry writes every change, logged as written again (before the fix, a failed
    write's changes were dropped until some later change)."""
    caplog.set_level(logging.INFO, logger="mirrorhook.freshness")
    (tmp_path / "repo").mkdir()
    path = publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("a", "http://a.example/")])
    config = load_config(path).publisher
    assert config is not None
    record = freshness_path(config)
    record.mkdir(parents=True)
    (record / "in-the-way").write_text("x\n")
    freshness = Freshness(config, retry_write=0.05)
    freshness.published("2")
    freshness.observed("a", "2", None)
    for _ in range(3):  # attempts while the fault holds (the retries keep trying too)
        freshness.flush()
    assert not record.is_file()
    shutil.rmtree(record)
    await until(record.is_file)  # no flush from here: the retry's own write
    written = json.loads(record.read_text())
    assert (written["newest"], written["mirrors"]["a"]["serving"]) == ("2", "2")
    assert [known["value"] for known in written["announced"]] == ["2"]
    messages = [entry.getMessage() for entry in caplog.records]
    assert len([text for text in messages if text.startswith("cannot write")]) == 1, messages
    assert len([text for text in messages if text.endswith("written again")]) == 1, messages


def test_a_cron_mirror_needs_no_webhook_url_but_some_url(tmp_path: Path) -> None:
    write_secret(tmp_path / "s.secret")
    base = (
        f'[publisher]\nroot = "{tmp_path}/repo"\nstate_dir = "{tmp_path}/state"\n'
        f'[[publisher.mirrors]]\nname = "cron"\nsecret_file = "{tmp_path}/s.secret"\n'
    )
    path = tmp_path / "p.toml"
    path.write_text(base + 'check_url = "https://cron.example/ius/CURRENT"\n')
    config = load_config(path).publisher
    assert config is not None
    assert (config.mirrors[0].url, config.mirrors[0].check_url) == (
        None,
        "https://cron.example/ius/CURRENT",
    )
    path.write_text(base)
    with pytest.raises(Exception, match=r"publisher.mirrors\[0\].url: required key is missing"):
        load_config(path)
    # Nothing is signed for a cron mirror: it needs no secret either.
    unsigned = base.replace(f'secret_file = "{tmp_path}/s.secret"\n', "")
    path.write_text(unsigned + 'check_url = "https://cron.example/ius/CURRENT"\n')
    config = load_config(path).publisher
    assert config is not None
    assert config.mirrors[0].signers == ()


def test_the_state_of_a_mirror_without_check_url_is_unknown(tmp_path: Path) -> None:
    write_secret(tmp_path / "s.secret")
    config = PublisherConfig(tmp_path / "repo", tmp_path / "state", ())
    mirror = dataclasses.replace(load_mirror(tmp_path), check_url=None)
    freshness = Freshness(dataclasses.replace(config, mirrors=(mirror,)))
    assert freshness.state("m") is State.UNKNOWN


def load_mirror(tmp_path: Path) -> MirrorConfig:
    path = tmp_path / "p.toml"
    path.write_text(
        f'[publisher]\nroot = "{tmp_path}/repo"\nstate_dir = "{tmp_path}/state"\n'
        f'[[publisher.mirrors]]\nname = "m"\nurl = "https://m.example/v1/hook"\n'
        f'secret_file = "{tmp_path}/s.secret"\n'
    )
    config = load_config(path).publisher
    assert config is not None
    return config.mirrors[0]


async def test_checks_follow_the_schedule_after_a_publish(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """The checker's own loop: a mirror checked at start, then — after a publish — at the
    first step of the schedule, which finds it fresh."""
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a"])
    serve_marker(trees["a"], "1")
    freshness = Freshness(config)
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public, after_publish=(0.2, 0.4))
        async with running(checker):
            await asyncio.sleep(0.1)
            serve_marker(trees["a"], "2")
            checker.published("2")
            await until(lambda: freshness.state("a") is State.FRESH)


async def test_the_checker_says_when_each_mirror_is_checked_next(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """What the page shows as the next check: a mirror serving the publish is due at
    ``check_interval``, one not serving it at the schedule's next step counted from the
    publish; one whose check is queued or running is being checked now (``None``)."""
    config, trees, _servers = await mirrors_config(
        tmp_path, aiohttp_server, ["a", "b"], check_interval=600
    )
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    freshness = Freshness(config)
    freshness.published("2")
    published = freshness.published_at
    assert published is not None
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public, after_publish=(30.0, 60.0))
        async with running(checker):
            await until(lambda: len([t for t in checker.next_checks().values() if t]) == 2)
            due = checker.next_checks()
            assert time.time() + 590 < (due["a"] or 0) <= time.time() + 600
            assert due["b"] == pytest.approx(published + 30.0, abs=0.5)
            checker.check_soon(config.mirrors[1])  # a report asks
            assert checker.next_checks()["b"] is None
            # Its check done before the servers stop (a file answer cut short is unclosed).
            await until(lambda: checker.next_checks()["b"] is not None)


async def test_the_same_marker_announced_again_does_not_restart_the_checks(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """The watcher announces the marker at every rescan: only a new value starts the checks
    after a publish (before the fix, a fresh mirror was re-checked every rescan)."""
    requests = 0

    async def current(_request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return web.Response(text="2\n")

    app = web.Application()
    app.router.add_get("/CURRENT", current)
    server = await aiohttp_server(app)
    config, _trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a"])
    mirror = dataclasses.replace(config.mirrors[0], check_url=str(server.make_url("/CURRENT")))
    config = dataclasses.replace(config, mirrors=(mirror,))
    freshness = Freshness(config)
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public, after_publish=(0.1,))
        checker.published("2")
        async with running(checker):
            await until(lambda: requests >= 2)  # at start, then the schedule's step
            for _ in range(5):
                checker.published("2")  # rescans: the same value
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
    assert requests == 2


async def test_after_a_restart_the_checks_of_a_recent_publish_go_on(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """The publisher restarts 5 s after a publish it recorded: a mirror not yet serving it
    is checked at start, then at the schedule's next time (6 s after the publish: 1 s after
    the restart), not an hour later, nor 6 s after the restart — the same value announced
    again does not restart the schedule."""
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a"])
    serve_marker(trees["a"], "1")
    before = Freshness(config, clock=lambda: time.time() - 5)
    before.published("2")  # recorded by the publisher that stopped, 5 s ago
    before.flush()  # as it does at shutdown
    freshness = Freshness(config)  # the restarted publisher's
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public, after_publish=(6.0, 600.0))
        checker.published("2")  # its watcher announces the same marker
        async with running(checker):
            await until(lambda: "last_check" in freshness.mirrors["a"])
            assert freshness.state("a") is State.BEHIND
            serve_marker(trees["a"], "2")
            await until(lambda: freshness.state("a") is State.FRESH, timeout=30)
    # The check that found it fresh came at the schedule's time counted from the publish (a
    # lag of 6 s), not from the restart 5 s later (a lag of 11 s).
    assert freshness.mirrors["a"]["lag"] < 6.0 + 5.0, freshness.mirrors["a"]


async def test_freshness_is_exported_as_metrics(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """mirrorhook_mirror_fresh per mirror, its lag, and the publish-to-fresh histogram."""
    from mirrorhook.metrics import Metrics  # noqa: PLC0415 - prometheus_client, this test only

    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a", "b"])
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    clock = Clock(1_800_000_000.0)
    metrics = Metrics()
    freshness = Freshness(config, clock=clock, metrics=metrics.tree(None))
    freshness.published("2")
    clock.now += 3
    await check_each(freshness)
    lines = set(metrics.render().decode().splitlines())
    assert 'mirrorhook_mirror_fresh{mirror="a"} 1.0' in lines
    assert 'mirrorhook_mirror_fresh{mirror="b"} 0.0' in lines
    assert 'mirrorhook_mirror_lag_seconds{mirror="a"} 3.0' in lines
    assert "mirrorhook_publish_to_fresh_seconds_count 1.0" in lines


async def test_a_report_is_verified_and_what_the_mirror_serves_is_recorded(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """A verified report makes the publisher check at once; a mirror that says "synced 2"
    but serves 1 stays syncing; bad signatures, another mirror's name, unknown mirrors and
    bodies that are no report change nothing."""
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a", "b"])
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    secrets = {m.name: m.secret for m in config.mirrors if m.secret is not None}
    freshness = Freshness(config)
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public)
        checker.published("2")
        desk = reports.ReportDesk(PublisherHost(config.state_dir, (config,)))
        desk.checkers[None] = checker
        post = (await ReportPoster.to(desk, aiohttp_client)).post

        honest = report_body("a", "2")
        assert await post(honest, signed_report(secrets["a"], honest)) == 202
        liar = report_body("b", "2")
        assert await post(liar, signed_report(secrets["b"], liar)) == 202
        await until(
            lambda: "last_check" in freshness.mirrors["b"] and freshness.state("a") == "fresh"
        )
        assert freshness.state("a") is State.FRESH
        assert freshness.state("b") is State.BEHIND  # what it serves, not what it says
        forged = report_body("a", "2")
        # b's secret, a's name:
        assert await post(forged, signed_report(secrets["b"], forged)) == 401
        # Unsigned: a hint (a mirror that just dropped its secret): checked, never recorded.
        before = dict(freshness.mirrors["a"])
        unsigned = report_body("a", "lie")
        assert await post(unsigned, {"Content-Type": "application/json"}) == 202
        await until(lambda: freshness.mirrors["a"]["last_check"] != before["last_check"])  # hint
        assert freshness.mirrors["a"]["reported"] == before["reported"] == "2"
        assert freshness.mirrors["a"]["serving"] == "2"
        as_text = {**signed_report(secrets["a"], forged), "Content-Type": "text/plain"}
        assert await post(forged, as_text) == 415
        nobody = report_body("zz", "2")
        assert await post(nobody, signed_report(secrets["a"], nobody)) == 401
        assert await post(b"not json", signed_report(secrets["a"], b"not json")) == 400
        assert await post(b"x" * 20_000, signed_report(secrets["a"], b"x")) == 413


async def test_with_several_repositories_the_list_must_name_one(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    config, _trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a"])
    ius = dataclasses.replace(config, repo="ius")
    epel = dataclasses.replace(config, repo="epel")
    app = web.Application()
    mirrorlist.add_routes(app, LiveUpstream.of(Freshness(ius), Freshness(epel)))
    client = await aiohttp_client(app)
    assert (await client.get("/mirrorlist")).status == 400
    assert (await client.get("/mirrorlist?repo=ius")).status == 200
    assert (await client.get("/v1/mirrors?repo=nope")).status == 404


def checks() -> list[asyncio.Task[Any]]:
    """The live tasks of checkers: their loops, schedules and checks."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith("Checker.")
    ]


async def test_a_flood_of_signed_reports_from_one_mirror_costs_one_check_at_a_time(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """5,000 reports signed with the attacker's own secret while its web server hangs: it
    never has more than one check in flight nor more than one queued, the live tasks stay
    bounded, and after a publish every healthy mirror is seen fresh at the schedule's first
    step and is what /mirrorlist lists; once the server answers, one follow-up check ends
    the flood's cost (before the fix, each report queued a check: 5,000 at the 16 slots)."""
    healthy = ["h1", "h2", "h3", "h4"]
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, [*healthy, "attacker"])
    gate = asyncio.Event()
    gate.set()
    asked = {"requests": 0, "in_flight": 0, "most_in_flight": 0}

    async def slow(_request: web.Request) -> web.Response:
        asked["requests"] += 1
        asked["in_flight"] += 1
        asked["most_in_flight"] = max(asked["most_in_flight"], asked["in_flight"])
        try:
            await gate.wait()
        finally:
            asked["in_flight"] -= 1
        return web.Response(text="1\n")

    app = web.Application()
    app.router.add_get("/CURRENT", slow)
    attacker_web = await aiohttp_server(app)
    config = with_mirror(config, "attacker", check_url=str(attacker_web.make_url("/CURRENT")))
    mirrors = config.mirrors
    secret = next(m.secret for m in mirrors if m.name == "attacker")
    assert secret is not None
    for name in healthy:
        serve_marker(trees[name], "1")
    freshness = Freshness(config)
    async with aiohttp.ClientSession() as session, public_session() as public:
        checker = Checker(freshness, session, public=public, after_publish=(0.5, 30.0))
        desk = reports.ReportDesk(PublisherHost(config.state_dir, (config,)))
        desk.checkers[None] = checker
        front = web.Application()
        reports.add_routes(front, desk)
        mirrorlist.add_routes(front, desk)
        client = await aiohttp_client(front)
        async with running(checker):
            await until(lambda: all("last_check" in freshness.mirrors[m.name] for m in mirrors))
            gate.clear()  # the attacker's server hangs from now on
            senders, count = 40, 5000
            most_tasks, numbers = 0, iter(range(count))

            async def send() -> None:
                nonlocal most_tasks
                for number in numbers:
                    body = report_body("attacker", str(number))
                    headers = signing.signed_headers(
                        secret, f"flood-{number}", int(time.time()), body
                    )
                    headers["Content-Type"] = "application/json"
                    async with client.post("/v1/report", data=body, headers=headers) as answer:
                        assert answer.status == 202
                    assert checker.in_line("attacker") <= 2  # one in flight, one queued
                    if number % 50 == 0:
                        most_tasks = max(most_tasks, len(checks()))

            async with asyncio.timeout(120):
                await asyncio.gather(*(send() for _ in range(senders)))
            # Each mirror's schedule, the checker's loop, and two checks per mirror at most.
            assert most_tasks <= 3 * len(mirrors) + 1, most_tasks
            assert asked["most_in_flight"] == 1

            for name in healthy:
                serve_marker(trees[name], "2")
            checker.published("2")
            await until(lambda: all(freshness.state(name) is State.FRESH for name in healthy), 60)
            # Seen fresh by the schedule's first step (0.5 s), not its second (30 s).
            lags = {name: freshness.mirrors[name]["lag"] for name in healthy}
            assert all(lag < 30.0 for lag in lags.values()), lags
            assert await listed(client) == [f"https://{name}.example/repo/" for name in healthy]

            before = asked["requests"]
            gate.set()
            await until(lambda: checker.in_line("attacker") == 0)
            assert asked["requests"] - before <= 1  # the one follow-up, whatever was sent
            assert asked["most_in_flight"] == 1


async def test_staleness_counts_from_the_first_publish_a_mirror_does_not_serve(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """Publishes every 5 minutes, stale_after 15 minutes: a mirror left at publish 1 is
    stale 25 minutes and three publishes later (counted from publish 2, the first it does
    not serve), though the newest publish is only 5 minutes old; one that serves publish 3
    is one behind and still within its window. A mirror that gets webhooks is syncing
    meanwhile, one that syncs by cron behind (before the fix: syncing both, for ever)."""
    config, _trees, _servers = await mirrors_config(
        tmp_path, aiohttp_server, ["pushed", "cron", "close"], stale_after=900
    )
    config = with_mirror(config, "pushed", url="http://127.0.0.1:1/v1/hook")
    now = 1_800_000_000.0
    freshness = Freshness(config, clock=lambda: now)
    freshness.published("1")
    for name in ("pushed", "cron", "close"):
        freshness.observed(name, "1", None)
    first_missed = now + 300
    for value in ("2", "3", "4"):
        now += 300
        freshness.published(value)
    freshness.observed("close", "3", None)
    rows = {row["name"]: row for row in freshness.rows()}
    assert (rows["pushed"]["state"], rows["cron"]["state"]) == ("syncing", "behind")
    assert (rows["cron"]["behind"], rows["close"]["behind"]) == (3, 1)
    assert rows["cron"]["behind_since"] == iso_time(first_missed)
    now = first_missed + 901  # the newest publish is 301 s old
    assert freshness.state("pushed") is State.STALE
    assert freshness.state("cron") is State.STALE
    assert freshness.state("close") is State.BEHIND  # publish 4: 301 s ago


async def test_checks_feed_the_history_its_json_and_the_pages_curve(
    tmp_path: Path, aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    """A publish and the checks after it land in the history: /v1/history gives each
    mirror's delay and score, and the page draws the publish's curve (inline SVG, no
    script); both survive a restart, since history.json keeps them."""
    config, trees, _servers = await mirrors_config(tmp_path, aiohttp_server, ["a", "b"])
    clock = Clock(1_800_000_000.0)
    freshness = Freshness(config, clock=clock)
    serve_marker(trees["a"], "2")
    serve_marker(trees["b"], "1")
    freshness.published("2")
    clock.now += 4.0
    await check_each(freshness)
    freshness.close()
    restarted = Freshness(config, clock=clock)
    app = web.Application()
    upstream = LiveUpstream.of(restarted)
    mirrorlist.add_routes(app, upstream)
    page.add_routes(app, upstream)
    client = await aiohttp_client(app)
    document = await (await client.get("/v1/history")).json()
    assert [(p["value"], p["fresh"]) for p in document["publishes"]] == [("2", {"a": 4.0})]
    assert document["mirrors"]["a"]["share_fresh"] == 1.0
    assert document["mirrors"]["b"] == {
        "checks": 1,
        "fresh_checks": 0,
        "share_fresh": 0.0,
        "mean_delay": None,
    }
    html = await (await client.get("/")).text()
    assert html.count("<svg ") == 1
    assert 'class="newest"' in html
    assert "Share of the 2 checked mirrors" in html
    assert "<h2>repo</h2>" in html  # the single form's tree, named by its root folder
