"""The publisher's event stream (docs/design.md#subscriptions) against the real aiohttp app:
the last value on connect, Last-Event-ID, heartbeats, the subscriber bound, newest-wins
queues, and the names ``?repo=`` takes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from mirrorhook import envelope as envelopes
from mirrorhook.broadcast import envelope_of
from mirrorhook.config import load_config
from mirrorhook.delivery import Message
from mirrorhook.envelope import Envelope
from mirrorhook.events import EventStreams, add_routes
from mirrorhook.keys import SigningKey
from mirrorhook.message import new_update
from mirrorhook.publisher_config import PublisherHost
from mirrorhook.sse import EventReader
from tests.helpers import ClientFactory, key_pair

Client = TestClient[web.Request, web.Application]


class Host:
    def __init__(self, host: PublisherHost) -> None:
        self.host = host

    def running(self) -> PublisherHost:
        return self.host


def host_form(tmp_path: Path, *, key: bool = True) -> PublisherHost:
    """Two repositories, ius and epel: with the signing key and no mirrors, or without the
    key and one cron mirror each."""
    private, _public = key_pair(tmp_path / "keys", "upstream")
    lines = ["[publisher]", f'state_dir = "{tmp_path}/state"']
    if key:
        lines.append(f'signing_key_file = "{private}"')
    mirrors = "[]" if key else '[{name = "m", check_url = "https://m.example.org/CURRENT"}]'
    for name in ("ius", "epel"):
        (tmp_path / name).mkdir()
        lines += [
            f"[publisher.repos.{name}]",
            f'root = "{tmp_path / name}"',
            f"mirrors = {mirrors}",
        ]
    path = tmp_path / "publisher.toml"
    path.write_text("\n".join(lines) + "\n")
    host = load_config(path).publishers
    assert host is not None
    return host


def announcement(key: SigningKey, repo: str, current: str) -> Envelope:
    update = new_update("CURRENT", current, "upstream", 1_800_000_000 + int(current), repo=repo)
    return envelope_of(Message.of(update), key)


async def serve(
    aiohttp_client: ClientFactory, host: PublisherHost, streams: EventStreams
) -> Client:
    app = web.Application()
    add_routes(app, streams, Host(host))
    return await aiohttp_client(app)


async def read_events(response: ClientResponse, count: int) -> list[tuple[str | None, Envelope]]:
    reader = EventReader()
    found: list[tuple[str | None, Envelope]] = []
    content = response.content
    while len(found) < count:
        chunk = await asyncio.wait_for(content.readany(), 5)
        assert chunk, "the stream ended"
        for event in reader.feed(chunk):
            assert event.event == "announcement"
            found.append((event.id, envelopes.decode(event.data, 65536)))
    return found


async def test_the_last_value_of_each_repository_asked_for_then_each_new_one(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    host = host_form(tmp_path)
    assert host.signing_key is not None
    streams = EventStreams()
    streams.announce("ius", announcement(host.signing_key, "ius", "1"))
    streams.announce("epel", announcement(host.signing_key, "epel", "7"))
    client = await serve(aiohttp_client, host, streams)
    async with client.get("/v1/events?repo=ius") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        (first,) = await read_events(response, 1)
        assert first[1].msg_id == first[0] == streams.latest["ius"].msg_id
        streams.announce("epel", announcement(host.signing_key, "epel", "8"))  # not asked for
        streams.announce("ius", announcement(host.signing_key, "ius", "2"))
        (second,) = await read_events(response, 1)
        assert b'"current":"2"' in second[1].body
    async with client.get("/v1/events") as response:  # every repository
        got = await read_events(response, 2)
        assert {envelope.msg_id for _id, envelope in got} == {
            streams.latest["ius"].msg_id,
            streams.latest["epel"].msg_id,
        }


async def test_last_event_id_skips_the_value_the_subscriber_has_and_heartbeats_keep_it_up(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    host = host_form(tmp_path)
    assert host.signing_key is not None
    streams = EventStreams(heartbeat=0.05)
    streams.announce("ius", announcement(host.signing_key, "ius", "1"))
    client = await serve(aiohttp_client, host, streams)
    seen = streams.latest["ius"].msg_id
    async with client.get("/v1/events?repo=ius", headers={"Last-Event-ID": seen}) as response:
        chunk = await asyncio.wait_for(response.content.readany(), 5)
        assert chunk == b": keep-alive\n\n"  # no event first: the subscriber had it


async def test_at_most_max_subscribers_streams_and_a_slot_freed_by_one_that_leaves(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    host = host_form(tmp_path)
    streams = EventStreams(1, heartbeat=0.05)
    client = await serve(aiohttp_client, host, streams)
    async with client.get("/v1/events") as first:
        await asyncio.wait_for(first.content.readany(), 5)
        async with client.get("/v1/events") as refused:
            assert refused.status == 503
            assert refused.headers["Retry-After"] == "60"
    for _ in range(100):
        if len(streams) == 0:
            break
        await asyncio.sleep(0.05)
    async with client.get("/v1/events") as again:
        assert again.status == 200


async def test_a_subscriber_that_does_not_read_keeps_one_announcement_per_repository(
    tmp_path: Path,
) -> None:
    """Announcing never waits on a subscriber, and a slow one costs the newest envelope
    per repository, however many publishes it misses."""
    key = SigningKey.generate()
    streams = EventStreams()
    slow = streams.subscribe(["ius", "epel"])
    assert slow is not None
    for value in range(1, 1001):
        streams.announce("ius", announcement(key, "ius", str(value)))
        streams.announce("epel", announcement(key, "epel", str(value)))
    assert len(slow.queued) == 2
    taken = slow.take()
    assert taken.count(b"event: announcement") == 2
    assert taken.count(b'\\"current\\":\\"1000\\"') == 2
    assert slow.queued == {}


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("?repo=nope", 404, "no repository 'nope' here; there are ius, epel"),
        ("?repo=ius&repo=nope", 404, "no repository 'nope' here"),
    ],
)
async def test_unknown_names_are_a_404_listing_the_names(
    tmp_path: Path, aiohttp_client: ClientFactory, query: str, status: int, text: str
) -> None:
    client = await serve(aiohttp_client, host_form(tmp_path), EventStreams())
    async with client.get(f"/v1/events{query}") as response:
        assert response.status == status
        assert text in await response.text()


async def test_an_upstream_without_a_signing_key_has_no_stream(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await serve(aiohttp_client, host_form(tmp_path, key=False), EventStreams())
    async with client.get("/v1/events") as response:
        assert response.status == 404
        assert "signing_key_file" in await response.text()


async def test_an_announcement_reaches_a_crowd_a_batch_per_loop_pass_and_always_the_newest(
    tmp_path: Path,
) -> None:
    """600 subscribers: 256 get it at once, the rest in the next passes (a /healthz between
    them need not wait); a newer announcement meanwhile is what the late ones get."""
    key = SigningKey.generate()
    streams = EventStreams()
    crowd = [streams.subscribe(["ius"]) for _ in range(600)]
    assert all(subscriber is not None for subscriber in crowd)
    streams.announce("ius", announcement(key, "ius", "1"))
    assert sum(bool(s.queued) for s in crowd if s is not None) == 256
    streams.announce("ius", announcement(key, "ius", "2"))
    for _ in range(10):
        await asyncio.sleep(0)
    taken = [s.take() for s in crowd if s is not None]
    assert all(b'\\"current\\":\\"2\\"' in chunk for chunk in taken)


async def test_at_shutdown_each_stream_says_when_to_come_back(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """The reconnections of many subscribers are spread: each stream ends with a random
    retry: within a spread that grows with their number (at least a second)."""
    host = host_form(tmp_path)
    streams = EventStreams(heartbeat=60)
    client = await serve(aiohttp_client, host, streams)
    async with client.get("/v1/events") as response:
        await asyncio.sleep(0.1)  # the stream is up
        streams.close()
        rest = await asyncio.wait_for(response.content.read(), 5)
    reader = EventReader()
    assert reader.feed(rest) == []
    assert reader.retry is not None
    assert 0 <= reader.retry <= 1000
