"""The replay cache: ids remembered until timestamp + tolerance, bounded in size."""

from __future__ import annotations

import tracemalloc

import pytest

from mirrorhook.errors import TimestampError
from mirrorhook.replay import ReplayCache
from mirrorhook.signing import TOLERANCE, Secret, signed_headers, verify

T = 1_700_000_000.0


def test_second_sighting_of_an_id_is_a_replay() -> None:
    """The first sighting of an id is new; every later one within the window is a replay."""
    cache = ReplayCache(TOLERANCE)
    assert not cache.seen("msg-1", T, now=T)
    assert cache.seen("msg-1", T, now=T + 1)
    assert cache.seen("msg-1", T, now=T + 2)


def test_a_later_sighting_extends_the_window() -> None:
    """A retry re-signed later keeps its id remembered until its own window ends."""
    cache = ReplayCache(tolerance=300)
    assert not cache.seen("a", 1000, now=1000)
    assert cache.seen("a", 1250, now=1250)
    assert cache.seen("a", 1250, now=1400)
    assert cache.seen("a", 1250, now=1550)
    assert not cache.seen("a", 1250, now=1551)


def test_distinct_ids_are_not_replays() -> None:
    """Different ids with the same timestamp are each new."""
    cache = ReplayCache(TOLERANCE)
    assert not cache.seen("msg-1", T, now=T)
    assert not cache.seen("msg-2", T, now=T)
    assert len(cache) == 2


def test_id_is_remembered_until_timestamp_plus_tolerance() -> None:
    """Up to and including timestamp + tolerance, the id is still a replay."""
    cache = ReplayCache(TOLERANCE)
    assert not cache.seen("msg-1", T, now=T)
    assert cache.seen("msg-1", T, now=T + TOLERANCE - 1)
    assert cache.seen("msg-1", T, now=T + TOLERANCE)


def test_id_is_forgotten_once_timestamp_plus_tolerance_has_passed() -> None:
    """After timestamp + tolerance the id is dropped (the timestamp check refuses it then)."""
    cache = ReplayCache(TOLERANCE)
    assert not cache.seen("msg-1", T, now=T)
    assert not cache.seen("msg-1", T, now=T + TOLERANCE + 0.001)


def test_expiry_counts_from_the_message_timestamp_not_its_arrival() -> None:
    """A message that arrives late is forgotten at its timestamp + tolerance, an early one
    (a clock ahead of ours) only then too, however long it has been in the cache."""
    cache = ReplayCache(TOLERANCE)
    assert not cache.seen("late", T - 200, now=T)
    assert not cache.seen("early", T + TOLERANCE, now=T)
    assert cache.seen("late", T - 200, now=T + 100)
    assert not cache.seen("late", T - 200, now=T + 101)
    assert cache.seen("early", T + TOLERANCE, now=T + 2 * TOLERANCE)


def test_expired_ids_no_longer_take_room() -> None:
    """Once their window has passed, old ids are dropped from the cache entirely."""
    cache = ReplayCache(TOLERANCE)
    for index in range(50):
        cache.seen(f"old-{index}", T, now=T)
    assert len(cache) == 50
    cache.seen("new", T + 2 * TOLERANCE, now=T + 2 * TOLERANCE)
    assert len(cache) == 1


def test_size_stays_bounded_when_flooded_with_distinct_ids() -> None:
    """A flood of distinct valid ids never grows the cache past its capacity."""
    cache = ReplayCache(TOLERANCE, capacity=100)
    for index in range(5000):
        cache.seen(f"flood-{index}", T + index % 600 - 300, now=T)
        assert len(cache) <= 100
    assert len(cache) == 100


def test_eviction_drops_the_ids_nearest_expiry_first() -> None:
    """When full, the id whose window ends soonest is dropped; later-expiring ids are kept."""
    cache = ReplayCache(TOLERANCE, capacity=3)
    assert not cache.seen("expires-first", T - 100, now=T)
    assert not cache.seen("expires-last", T + 100, now=T)
    assert not cache.seen("expires-second", T, now=T)
    assert not cache.seen("newcomer", T + 50, now=T)
    assert cache.seen("expires-last", T + 100, now=T)
    assert cache.seen("expires-second", T, now=T)
    assert cache.seen("newcomer", T + 50, now=T)
    assert not cache.seen("expires-first", T - 100, now=T)


@pytest.mark.parametrize(
    "late",
    [
        0.0,
        pytest.param(0.5),
        1.0,
    ],
)
def test_a_replay_the_timestamp_check_accepts_is_still_remembered(late: float) -> None:
    """No replay passes both checks: whenever verify() accepts a message again, the cache
    still knows its id (and once the cache forgets it, verify() refuses the timestamp)."""
    secret = Secret(bytes(32))
    body = b'{"type": "mirror.updated"}'
    headers = signed_headers(secret, "msg-1", int(T), body)
    cache = ReplayCache(TOLERANCE)
    first = verify(secret, headers, body, now=T)
    assert not cache.seen(first.msg_id, first.timestamp, now=T)

    now = T + TOLERANCE + late
    try:
        again = verify(secret, headers, body, now=now)
    except TimestampError:
        return
    assert cache.seen(again.msg_id, again.timestamp, now=now)


def test_ids_re_signed_again_and_again_take_bounded_memory() -> None:
    """A sender that re-signs the same ids with ever later timestamps (each a replay) never
    grows the cache: 600 rounds over 100 ids take what one round does (before the fix, every
    extension left a record in the heap until it expired: 60,000 of them, about 8 MB)."""
    cache = ReplayCache(TOLERANCE, capacity=100)
    for index in range(100):
        cache.seen(f"id-{index}", T, now=T)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for later in range(1, 600):
            for index in range(100):
                assert cache.seen(f"id-{index}", T + later, now=T)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 100
    assert grown < 100_000, grown
    assert cache.seen("id-0", T + 599, now=T + 599 + TOLERANCE)  # the latest window still holds
