"""Delivery and fan-out against real aiohttp mirrors on loopback
(docs/design.md#delivery-semantics)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from mirrorhook import endpoints, signing
from mirrorhook.checker import Checker
from mirrorhook.config import Config, load_config
from mirrorhook.delivery import MAX_RETRY_AFTER, Courier, Message, classify, retry_after
from mirrorhook.errors import DeliveryKind, MarkerError
from mirrorhook.freshness import Freshness
from mirrorhook.message import new_update
from mirrorhook.metrics import Metrics
from mirrorhook.notify import notify
from mirrorhook.publisher import Outcome, Publisher, deliver
from mirrorhook.publisher_config import PublisherConfig, PublisherHost
from mirrorhook.record import DeliveryLog, DeliveryResult, publisher_state_path
from mirrorhook.retry import Backoff
from mirrorhook.state import iso_time
from mirrorhook.status import host_status
from mirrorhook.watcher import MarkerWatcher
from tests.helpers import (
    ClientFactory,
    ServerFactory,
    mirror_secret,
    publish,
    publisher_toml,
    until,
    write_secret,
)
from tests.mirrors import HookMirror, always, hang

FAST = Backoff(first=0.01, cap=0.05)


def sequence(
    *statuses: int, then: int = 202, headers: dict[str, str] | None = None
) -> Callable[[int], web.Response]:
    """Answer the given statuses in turn (with ``headers``), then ``then`` forever."""

    def answer(n: int) -> web.Response:
        if n > len(statuses):
            return web.json_response({}, status=then)
        return web.json_response({}, status=statuses[n - 1], headers=headers or {})

    return answer


class Sleeps:
    """Records the waits between attempts instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


async def start(aiohttp_server: ServerFactory, mirror: HookMirror) -> str:
    server = await aiohttp_server(mirror.app())
    return str(server.make_url("/v1/hook"))


def load(path: Path) -> PublisherConfig:
    config = load_config(path).publisher
    assert config is not None
    return config


def a_message(value: str = "20261125") -> Message:
    return Message.of(new_update("CURRENT", value, "test-upstream", time.time()))


async def deliver_once(
    tmp_path: Path,
    aiohttp_server: ServerFactory,
    answer: Callable[[int], web.Response | None],
    *,
    attempts: int = 4,
    sleeps: Sleeps | None = None,
) -> tuple[HookMirror, Sleeps, Outcome]:
    """Deliver one message to one test mirror; return the mirror, the waits and the outcome."""
    (tmp_path / "repo").mkdir(exist_ok=True)
    config = load(
        publisher_toml(tmp_path, root=tmp_path / "repo", mirrors=[("m", "http://127.0.0.1:1/")])
    )
    mirror = HookMirror(mirror_secret(tmp_path, "m"), answer)
    url = await start(aiohttp_server, mirror)
    target = dataclasses.replace(config.mirrors[0], url=url)
    sleeps = sleeps or Sleeps()
    async with Courier(timeout=1, concurrency=4) as courier:
        outcome = await deliver(
            courier,
            target,
            a_message(),
            record=DeliveryLog(publisher_state_path(config)),
            within=60,
            attempts=attempts,
            backoff=FAST,
            sleep=sleeps,
        )
    return mirror, sleeps, outcome


# --- the policy table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, None),
        (202, None),
        (204, None),
        (301, DeliveryKind.MISCONFIGURED),
        (308, DeliveryKind.MISCONFIGURED),
        (400, DeliveryKind.MISCONFIGURED),
        (401, DeliveryKind.MISCONFIGURED),
        (404, DeliveryKind.MISCONFIGURED),
        (410, DeliveryKind.GONE),
        (429, DeliveryKind.TRANSIENT),
        (500, DeliveryKind.TRANSIENT),
        (503, DeliveryKind.TRANSIENT),
    ],
)
def test_status_policy(status: int, kind: DeliveryKind | None) -> None:
    """docs/design.md#delivery-semantics: 2xx delivered, 410 stop, 429/5xx transient,
    3xx/400/401 misconfiguration."""
    assert classify(status) is kind


def test_retry_after_forms() -> None:
    """Retry-After as seconds or an HTTP date; junk is ignored; absurd values are capped."""
    now = 1_700_000_000.0
    assert retry_after("7", now) == 7
    assert retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None
    assert retry_after("999999", now) == 3600


@given(st.text())
def test_retry_after_never_raises(value: str) -> None:
    """Any header text is a delay within [0, MAX_RETRY_AFTER] or ignored, never an error."""
    delay = retry_after(value, 1_700_000_000.0)
    assert delay is None or 0 <= delay <= MAX_RETRY_AFTER


def test_retry_after_is_ascii_digits_or_a_date() -> None:
    """Unicode digits, signs, exponents and dates without a zone are ignored."""
    now = 1_700_000_000.0
    for value in ("²", "٣", "-5", "1e3", "nan", "Tue, 14 Nov 2023 22:13:40", " "):
        assert retry_after(value, now) is None, value
    assert retry_after("9" * 400, now) == MAX_RETRY_AFTER
    assert retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == MAX_RETRY_AFTER
    assert retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now) == 0


# --- one delivery ---------------------------------------------------------------------------


async def test_delivered_webhook_verifies_with_the_mirrors_secret(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    mirror, _sleeps, outcome = await deliver_once(tmp_path, aiohttp_server, always(202))
    assert outcome.result is DeliveryResult.DELIVERED
    assert [hook.verified for hook in mirror.received] == [True]
    assert mirror.values() == ["20261125"]


async def test_retries_keep_the_id_and_resign_each_attempt(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """500, 503, then 202: three attempts, one webhook-id, each a valid signature."""
    mirror, sleeps, outcome = await deliver_once(tmp_path, aiohttp_server, sequence(500, 503))
    assert outcome.result is DeliveryResult.DELIVERED
    assert outcome.attempts == 3
    assert len({hook.msg_id for hook in mirror.received}) == 1
    assert all(hook.verified for hook in mirror.received)
    assert len(sleeps.delays) == 2


async def test_retry_after_is_honoured(tmp_path: Path, aiohttp_server: ServerFactory) -> None:
    """A 429 with Retry-After: 7 makes the next attempt wait 7 s."""
    _mirror, sleeps, outcome = await deliver_once(
        tmp_path, aiohttp_server, sequence(429, headers={"Retry-After": "7"})
    )
    assert outcome.result is DeliveryResult.DELIVERED
    assert sleeps.delays == [7]


@pytest.mark.parametrize(
    ("status", "header"),
    [(503, "0"), (429, "0"), (503, "Thu, 01 Jan 1970 00:00:00 GMT")],
)
async def test_retry_after_now_still_waits_the_backoff(
    tmp_path: Path, aiohttp_server: ServerFactory, status: int, header: str
) -> None:
    """Retry-After of 0 or a past date does not turn retries into a tight loop."""
    _mirror, sleeps, outcome = await deliver_once(
        tmp_path, aiohttp_server, sequence(status, status, headers={"Retry-After": header})
    )
    assert outcome.result is DeliveryResult.DELIVERED
    assert len(sleeps.delays) == 2
    assert all(delay >= FAST.first / 2 for delay in sleeps.delays)


async def test_gone_stops_retrying(tmp_path: Path, aiohttp_server: ServerFactory) -> None:
    mirror, sleeps, outcome = await deliver_once(tmp_path, aiohttp_server, always(410))
    assert outcome.result is DeliveryResult.GONE
    assert len(mirror.received) == 1
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [301, 307, 308])
async def test_redirect_is_not_followed_and_waits_longest(
    tmp_path: Path, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A 301 is a failed delivery: the target of the redirect receives nothing; the next
    attempt waits the longest interval and the log says the mirror is misconfigured."""
    elsewhere = HookMirror(signing.Secret.parse(signing.new_secret()))
    target_url = await start(aiohttp_server, elsewhere)
    _mirror, sleeps, outcome = await deliver_once(
        tmp_path, aiohttp_server, sequence(status, headers={"Location": target_url}), attempts=2
    )
    assert outcome.result is DeliveryResult.DELIVERED
    assert elsewhere.received == []
    assert sleeps.delays == [FAST.cap]
    assert "redirect" in caplog.text


async def test_a_misconfigured_mirror_waits_the_longest_interval_whatever_its_retry_after(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """401 with "Retry-After: 0": still the longest interval, not a quick retry."""
    _mirror, sleeps, outcome = await deliver_once(
        tmp_path, aiohttp_server, sequence(401, headers={"Retry-After": "0"}), attempts=2
    )
    assert outcome.result is DeliveryResult.DELIVERED
    assert sleeps.delays == [FAST.cap]


async def test_unauthorised_is_logged_as_an_error(
    tmp_path: Path, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _mirror, sleeps, outcome = await deliver_once(tmp_path, aiohttp_server, always(401), attempts=2)
    assert outcome.result is DeliveryResult.FAILED
    assert sleeps.delays == [FAST.cap]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("secret" in r.getMessage() for r in errors)


# --- fan-out ---------------------------------------------------------------------------------


async def fan_out(
    tmp_path: Path,
    aiohttp_server: ServerFactory,
    answers: dict[str, Callable[[int], web.Response | None]],
    **overrides: Any,
) -> tuple[PublisherConfig, dict[str, HookMirror]]:
    """Start one test mirror per answer; return a publisher config listing them."""
    root = tmp_path / "repo"
    root.mkdir(exist_ok=True)
    placeholder = [(name, "http://127.0.0.1:1/") for name in answers]
    publisher_toml(tmp_path, root=root, mirrors=placeholder, **overrides)
    mirrors = {
        name: HookMirror(mirror_secret(tmp_path, name), answer) for name, answer in answers.items()
    }
    urls = [(name, await start(aiohttp_server, mirror)) for name, mirror in mirrors.items()]
    return load(publisher_toml(tmp_path, root=root, mirrors=urls, **overrides)), mirrors


async def test_hanging_mirrors_do_not_delay_the_others(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """Four mirrors that accept and never answer, with only two slots: the healthy mirrors
    still receive their webhook before the first hanging attempt times out."""
    answers: dict[str, Callable[[int], web.Response | None]] = {
        f"hangs{i}": hang() for i in range(4)
    }
    answers |= {f"ok{i}": always(202) for i in range(5)}
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers, timeout=2, concurrency=2)
    async with Courier(timeout=config.timeout, concurrency=config.concurrency) as courier:
        publisher = Publisher(config, courier, backoff=FAST)
        task = asyncio.create_task(publisher.run())
        publisher.publish("7")
        await until(lambda: all(m.received for m in mirrors.values()))
        first_hang = min(mirrors[f"hangs{i}"].received[0].at for i in range(4))
        await until(lambda: all(mirrors[f"ok{i}"].values() == ["7"] for i in range(5)))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    latest_healthy = max(mirrors[f"ok{i}"].received[0].at for i in range(5))
    assert latest_healthy < first_hang + config.timeout


async def test_newest_marker_wins_over_one_still_retrying(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """A mirror down during publish 1 and 2 receives only 2 once it is back."""
    down = True

    def answer(_n: int) -> web.Response:
        return web.json_response({}, status=503 if down else 202)

    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"m": answer})
    async with Courier(timeout=1, concurrency=4) as courier:
        publisher = Publisher(config, courier, backoff=FAST)
        task = asyncio.create_task(publisher.run())
        publisher.publish("1")
        await until(lambda: len(mirrors["m"].received) >= 2)
        publisher.publish("2")
        await until(lambda: mirrors["m"].values()[-1:] == ["2"])
        seen = len(mirrors["m"].received)
        down = False
        await until(lambda: publisher.workers[0].delivered == "2")
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    after_recovery = mirrors["m"].values()[seen:]
    assert after_recovery
    assert set(after_recovery) == {"2"}
    assert DeliveryLog(publisher_state_path(config)).mirrors()["m"]["delivered"] == "2"


async def test_restart_redelivers_only_what_was_not_acknowledged(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """The record survives a restart: a mirror that acknowledged marker 1 is not sent it
    again; one that did not is."""
    answers: dict[str, Callable[[int], web.Response | None]] = {
        "ok": always(202),
        "down": always(503),
    }
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers)
    async with Courier(timeout=1, concurrency=4) as courier:
        first = Publisher(config, courier, backoff=FAST)
        task = asyncio.create_task(first.run())
        first.publish("1")
        await until(
            lambda: first.workers[0].delivered == "1" and len(mirrors["down"].received) >= 2
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ok_before, down_before = len(mirrors["ok"].received), len(mirrors["down"].received)
    mirrors["down"].answer = always(202)
    async with Courier(timeout=1, concurrency=4) as courier:
        second = Publisher(config, courier, backoff=FAST)
        task = asyncio.create_task(second.run())
        second.publish("1")
        await until(lambda: second.workers[1].delivered == "1")
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(mirrors["ok"].received) == ok_before
    assert len(mirrors["down"].received) > down_before


async def test_notify_reports_every_mirror_when_its_record_cannot_be_written(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """A state dir that cannot take the record (here publisher.json is a folder): the
    deliveries happened, so notify still returns a row per mirror."""
    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"ok": always(202)})
    publisher_state_path(config).mkdir(parents=True)
    publish(config.root, "42")
    value, outcomes = await notify(config)
    assert value == "42"
    assert [(outcome.mirror, outcome.result) for outcome in outcomes] == [
        ("ok", DeliveryResult.DELIVERED)
    ]
    assert mirrors["ok"].values() == ["42"]


async def test_a_record_of_the_wrong_shape_is_replaced_not_trusted(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """publisher.json edited into another shape: the publisher starts, delivers, and writes
    a record of the right shape."""
    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"m": always(202)})
    path = publisher_state_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"mirrors": {"m": 5, "other": "x"}}')
    async with Courier(timeout=1, concurrency=4) as courier:
        publisher = Publisher(config, courier, backoff=FAST)
        task = asyncio.create_task(publisher.run())
        publisher.publish("1")
        await until(lambda: publisher.workers[0].delivered == "1")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert DeliveryLog(path).mirrors()["m"]["delivered"] == "1"
    assert mirrors["m"].values() == ["1"]


async def test_changes_being_written_when_the_record_stops_are_on_disk_once_it_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while a write runs in its thread: the last flush writes the same changes
    again, so they are on disk when the task is done (before the fix, the flush had
    nothing left to write and the file still held the old record). The write is slowed
    by a wrapper: a real disk is too fast to be caught in the act on demand."""
    path = tmp_path / "publisher.json"
    writing = threading.Event()
    real_write = DeliveryLog._write

    def slow_write(self: DeliveryLog, pending: dict[str, dict[str, Any]]) -> None:
        writing.set()
        time.sleep(0.3)
        real_write(self, pending)

    monkeypatch.setattr(DeliveryLog, "_write", slow_write)
    log = DeliveryLog(path)
    task = asyncio.create_task(log.run())
    log.note("m", delivered="1")
    assert await asyncio.to_thread(writing.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert DeliveryLog(path).mirrors()["m"]["delivered"] == "1"


@pytest.mark.slow
async def test_notify_reports_each_mirror_and_records_it(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """notify delivers the current marker to all mirrors; a failing one is reported, the
    others delivered; the record shows both."""
    answers: dict[str, Callable[[int], web.Response | None]] = {
        "ok": always(202),
        "broken": always(500),
    }
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers)
    publish(config.root, "42")
    value, outcomes = await notify(config)
    assert value == "42"
    results = {outcome.mirror: outcome.result for outcome in outcomes}
    assert results == {"ok": DeliveryResult.DELIVERED, "broken": DeliveryResult.FAILED}
    assert len(mirrors["broken"].received) == 3
    recorded = DeliveryLog(publisher_state_path(config)).mirrors()
    assert recorded["ok"]["delivered"] == "42"
    assert recorded["broken"]["result"] == "failed"


async def test_a_redelivery_keeps_the_time_of_the_first_delivery(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """The page's "delivered" is when the mirror first accepted the current publish: sending
    the same marker again (``notify`` twice, or after the daemon) leaves ``delivered_at``
    as it was; a new marker moves it."""
    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"m": always(202)})
    path = publisher_state_path(config)
    start = time.time()
    publish(config.root, "42")
    await notify(config, clock=lambda: start)
    await notify(config, clock=lambda: start + 100)
    assert mirrors["m"].values() == ["42", "42"]  # delivered twice
    assert DeliveryLog(path).mirrors()["m"]["delivered_at"] == iso_time(start)
    publish(config.root, "43")
    await notify(config, clock=lambda: start + 200)
    assert DeliveryLog(path).mirrors()["m"]["delivered_at"] == iso_time(start + 200)


async def run_publisher(publisher: Publisher) -> asyncio.Task[None]:
    return asyncio.create_task(publisher.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_going_back_to_an_acknowledged_marker_stops_the_newer_ones_retries(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """Mirror has A; B is published while the mirror fails; the upstream goes back to A:
    the retries of B stop and the mirror's record stays at A."""
    failing = False

    def answer(_n: int) -> web.Response:
        return web.json_response({}, status=503 if failing else 202)

    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"m": answer})
    async with Courier(timeout=1, concurrency=4) as courier:
        publisher = Publisher(config, courier, backoff=FAST)
        task = await run_publisher(publisher)
        publisher.publish("A")
        await until(lambda: publisher.workers[0].delivered == "A")
        failing = True
        publisher.publish("B")
        await until(lambda: mirrors["m"].values().count("B") >= 2)
        publisher.publish("A")
        await asyncio.sleep(0.1)
        requests = len(mirrors["m"].received)
        failing = False
        await asyncio.sleep(0.3)
        await stop(task)
    assert len(mirrors["m"].received) == requests, "B was still being retried"
    assert publisher.workers[0].delivered == "A"
    assert DeliveryLog(publisher_state_path(config)).mirrors()["m"]["delivered"] == "A"


async def test_a_marker_refused_with_410_is_not_sent_again_after_a_restart(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"m": always(410)})
    for _run in range(2):
        async with Courier(timeout=1, concurrency=4) as courier:
            publisher = Publisher(config, courier, backoff=FAST)
            task = await run_publisher(publisher)
            publisher.publish("1")
            await asyncio.sleep(0.3)
            await stop(task)
    assert mirrors["m"].values() == ["1"]
    assert DeliveryLog(publisher_state_path(config)).mirrors()["m"]["gone"] == "1"


@contextlib.asynccontextmanager
async def stalling_server() -> AsyncIterator[tuple[int, list[float]]]:
    """A TCP server that accepts connections and never says a word (a stuck TLS peer);
    yields its port and the times it accepted."""
    accepted: list[float] = []
    held: list[asyncio.StreamWriter] = []

    async def stall(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        held.append(writer)

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.slow
async def test_mirrors_stuck_in_the_tls_handshake_do_not_starve_the_others(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """Four https mirrors that accept TCP and never answer, two slots: healthy mirrors
    still get their webhook long before the stuck attempts time out."""
    answers: dict[str, Callable[[int], web.Response | None]] = {
        f"ok{i}": always(202) for i in range(5)
    }
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers, timeout=6, concurrency=2)
    async with stalling_server() as (port, accepted):
        stuck = [
            dataclasses.replace(
                config.mirrors[0], name=f"stuck{i}", url=f"https://127.0.0.1:{port}/"
            )
            for i in range(4)
        ]
        config = dataclasses.replace(config, mirrors=(*stuck, *config.mirrors))
        async with Courier(timeout=config.timeout, concurrency=config.concurrency) as courier:
            publisher = Publisher(config, courier, backoff=FAST)
            task = await run_publisher(publisher)
            published = time.monotonic()
            publisher.publish("7")
            await until(lambda: all(m.values() == ["7"] for m in mirrors.values()))
            latest = max(m.received[0].at for m in mirrors.values())
            await stop(task)
    assert len(accepted) >= 2, "the stuck mirrors were contacted first"
    assert latest - published < config.timeout / 2


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "poll"])
@pytest.mark.slow
async def test_every_way_of_publishing_gives_one_webhook_per_value_per_mirror(
    tmp_path: Path, aiohttp_server: ServerFactory, polling: bool
) -> None:
    """Real observer + publisher + mirrors: rename-into-place, in-place write, rename from
    another folder and a burst of duplicate rewrites each give exactly one webhook per
    marker value to each mirror."""
    answers: dict[str, Callable[[int], web.Response | None]] = {
        "a": always(202),
        "b": always(202),
    }
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers)
    publish(config.root, "1")
    staging = tmp_path / "staging"
    staging.mkdir()

    def rename_into_place(value: str, folder: Path) -> None:
        temporary = folder / ".CURRENT.new"
        temporary.write_text(value + "\n")
        temporary.replace(config.root / "CURRENT")

    def in_place(value: str, times: int = 1) -> None:
        for _ in range(times):
            with (config.root / "CURRENT").open("w") as file:
                file.write(value + "\n")

    steps: list[tuple[str, Callable[[], None]]] = [
        ("2", lambda: rename_into_place("2", config.root)),
        ("3", lambda: in_place("3")),
        ("4", lambda: rename_into_place("4", staging)),
        ("5", lambda: in_place("5", times=30)),
    ]
    async with Courier(timeout=2, concurrency=4) as courier:
        publisher = Publisher(config, courier, backoff=FAST)
        watcher = MarkerWatcher(config.root, "CURRENT", publisher.publish, polling=polling)
        tasks = [await run_publisher(publisher), asyncio.create_task(watcher.run())]
        await until(lambda: all(m.values() == ["1"] for m in mirrors.values()))
        for value, act in steps:
            act()
            await until(lambda: all(m.values()[-1:] == [value] for m in mirrors.values()))  # noqa: B023
        await asyncio.sleep(0.3)
        for task in tasks:
            await stop(task)
    for mirror in mirrors.values():
        assert mirror.values() == ["1", "2", "3", "4", "5"]


async def test_delivery_metrics(tmp_path: Path, aiohttp_server: ServerFactory) -> None:
    """Deliveries by mirror and result, attempt latency, publish-to-delivered lag, pending."""
    metrics = Metrics()
    answers: dict[str, Callable[[int], web.Response | None]] = {
        "ok": always(202),
        "flaky": sequence(503),
        "down": always(503),
    }
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers)
    async with Courier(timeout=1, concurrency=4) as courier:
        publisher = Publisher(config, courier, backoff=FAST, metrics=metrics.tree(None))
        task = await run_publisher(publisher)
        publisher.publish("9")
        await until(lambda: mirrors["flaky"].values() == ["9", "9"])
        await until(lambda: publisher.workers[1].delivered == "9")
        text = metrics.render().decode()
        await stop(task)
    lines = set(text.splitlines())
    assert 'mirrorhook_deliveries_total{mirror="ok",result="delivered"} 1.0' in lines
    assert 'mirrorhook_deliveries_total{mirror="flaky",result="transient"} 1.0' in lines
    assert 'mirrorhook_deliveries_total{mirror="flaky",result="delivered"} 1.0' in lines
    assert "mirrorhook_publish_to_delivered_seconds_count 2.0" in lines
    assert "mirrorhook_deliveries_pending 1.0" in lines


async def test_symlinked_marker_sends_nothing_and_shows_the_secret_nowhere(
    tmp_path: Path,
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Release tooling replaces CURRENT by a symlink to mirror b's secret file: a real
    watcher and publisher send no webhook, the log says why, and the secret is in no log
    record, no webhook and not in GET /v1/status, which shows the marker as refused."""
    caplog.set_level(logging.DEBUG)
    answers: dict[str, Callable[[int], web.Response | None]] = {
        "a": always(202),
        "b": always(202),
    }
    config, mirrors = await fan_out(tmp_path, aiohttp_server, answers)
    secret_file = tmp_path / "secrets" / "b.secret"
    secret = secret_file.read_text().strip()
    publish(config.root, "1")
    status = await aiohttp_client(
        endpoints.make_app(
            endpoints.Endpoints(
                lambda: host_status(
                    Config(Path("-"), publishers=PublisherHost(config.state_dir, (config,)))
                ),
                Metrics(),
            )
        )
    )
    async with Courier(timeout=2, concurrency=4) as courier:
        publisher = Publisher(config, courier, backoff=FAST)
        watcher = MarkerWatcher(config.root, "CURRENT", publisher.publish)
        tasks = [await run_publisher(publisher), asyncio.create_task(watcher.run())]
        await until(lambda: all(m.values() == ["1"] for m in mirrors.values()))
        planted = config.root / ".CURRENT.planted"
        planted.symlink_to(secret_file)
        planted.replace(config.root / "CURRENT")
        await until(lambda: any("symbolic link" in r.getMessage() for r in caplog.records))
        async with status.get("/v1/status") as response:
            text = await response.text()
            document = (await response.json())["publisher"]
        publish(config.root, "2")  # the sentinel: events are handled in order
        await until(lambda: all(m.values() == ["1", "2"] for m in mirrors.values()))
        for task in tasks:
            await stop(task)
    assert document["current_marker"] is None
    assert document["current_marker_error"] == "it is a symbolic link (not followed)"
    for shown in (secret, secret.removeprefix("whsec_")):
        assert shown not in text
        assert not any(shown in record.getMessage() for record in caplog.records)
        assert not any(shown in hook.current for m in mirrors.values() for hook in m.received)
    for mirror in mirrors.values():
        assert mirror.values() == ["1", "2"]


async def test_notify_refuses_a_symlinked_marker_and_sends_nothing(
    tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    """notify with CURRENT a symlink to a mirror's secret: MarkerError naming the path and
    the problem, not the secret; no mirror receives anything."""
    config, mirrors = await fan_out(tmp_path, aiohttp_server, {"a": always(202)})
    secret_file = tmp_path / "secrets" / "a.secret"
    (config.root / "CURRENT").symlink_to(secret_file)
    with pytest.raises(MarkerError) as caught:
        await notify(config)
    assert str(caught.value) == (
        f"refusing marker {config.root / 'CURRENT'}: it is a symbolic link (not followed)"
    )
    assert secret_file.read_text().strip() not in str(caught.value)
    assert mirrors["a"].received == []


def test_each_published_tree_has_its_own_series_when_there_are_several() -> None:
    """Two repositories' publishers in one daemon: pending and deliveries per repository,
    not the last one's figures for all."""
    metrics = Metrics(repos=True)
    ius, epel = metrics.tree("ius"), metrics.tree("epel")
    ius.watch_pending(lambda: 3)
    epel.watch_pending(lambda: 0)
    ius.delivery_attempted("m", "delivered", 0.01)
    lines = set(metrics.render().decode().splitlines())
    assert 'mirrorhook_deliveries_pending{repo="ius"} 3.0' in lines
    assert 'mirrorhook_deliveries_pending{repo="epel"} 0.0' in lines
    assert 'mirrorhook_deliveries_total{mirror="m",repo="ius",result="delivered"} 1.0' in lines


def test_a_forgotten_tree_leaves_no_series_behind() -> None:
    """A repository removed by a reload: its last success, markers and counters go, so an
    age alert on it does not fire for ever; the other tree's stay."""
    metrics = Metrics(repos=True)
    ius, epel = metrics.tree("ius"), metrics.tree("epel")
    for tree in (ius, epel):
        tree.succeeded_at(1_800_000_000)
        tree.set_marker("local", "7")
        tree.sync_finished("synced", success_at=None)
    assert metrics.tree("ius") is ius  # one object per tree: a rebuilt tree reuses it
    metrics.forget("ius")
    text = metrics.render().decode()
    assert 'repo="ius"' not in text
    assert 'mirrorhook_marker_info{marker="7",repo="epel",side="local"} 1.0' in text


async def test_a_hosts_publisher_log_names_the_repository_in_every_line(
    tmp_path: Path, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Two repositories announced to mirrors of the same names: every line of the delivery
    workers, their retries and the checks names its repository (``ius: ...``), and a count
    of one says "1 mirror" (docs/design.md#many-repositories)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("a", "g"):
        write_secret(secrets / f"{name}.secret")
    answers = {"ius": sequence(503, then=202), "epel": always(401)}
    urls = {}
    for repo, answer in answers.items():
        mirror = HookMirror(mirror_secret(tmp_path, "a"), answer)
        urls[repo] = await start(aiohttp_server, mirror)
    gone = await start(aiohttp_server, HookMirror(mirror_secret(tmp_path, "g"), always(410)))
    text = f'[publisher]\nstate_dir = "{tmp_path / "state"}"\nname = "up"\n'
    for repo, extra in (("ius", ("g", gone)), ("epel", None)):
        (tmp_path / repo).mkdir()
        text += f'[publisher.repos.{repo}]\nroot = "{tmp_path / repo}"\n'
        for name, url in [("a", urls[repo]), *([extra] if extra else [])]:
            text += (
                f'[[publisher.repos.{repo}.mirrors]]\nname = "{name}"\nurl = "{url}"\n'
                f'secret_file = "{secrets / f"{name}.secret"}"\n'
            )
        text += (
            f'[[publisher.repos.{repo}.mirrors]]\nname = "c"\ncheck_url = "http://127.0.0.1:1/"\n'
        )
    (tmp_path / "host.toml").write_text(text)
    host = load_config(tmp_path / "host.toml").publishers
    assert host is not None
    caplog.set_level(logging.INFO, logger="mirrorhook")
    async with Courier(timeout=2, concurrency=4) as courier:
        for tree in host.repos:
            publisher = Publisher(tree, courier, backoff=FAST)
            task = asyncio.create_task(publisher.run())
            publisher.publish("7")
            checker = Checker(Freshness(tree), courier.session, public=courier.public_session)
            await checker.check(tree.mirrors[-1])
            expected = "delivered marker" if tree.repo == "ius" else "refused the webhook"
            await until(lambda: expected in caplog.text)  # noqa: B023 - awaited in the loop
            await stop(task)
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if not line.startswith(("ius: ", "epel: "))], lines
    for line in (
        "ius: marker '7': announcing to 2 of 2 mirrors",
        "epel: marker '7': announcing to 1 of 1 mirror",
        "ius: mirror g answered 410 Gone: not retrying marker '7'",
        "epel: mirror a refused the webhook: ",
        "ius: webhook to a failed (attempt 1): ",
        "ius: delivered marker '7' to a (HTTP 202) in ",
        "ius: check of c failed: ",
        "epel: check of c failed: ",
    ):
        # Whole lines, or the beginning of those that go on (ending in a space).
        assert any(
            shown == line or (line.endswith(" ") and shown.startswith(line)) for shown in lines
        ), (line, lines)
