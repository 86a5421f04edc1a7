"""Public answers rendered at most once per ``max_age``: shared by the requests that wait
for a rendering, never lost when one of them goes away, gzipped only for those that say
they accept it."""

from __future__ import annotations

import asyncio
import gzip
import threading

import pytest

from mirrorhook.response_cache import Body, ResponseCache, accepts_gzip
from tests.helpers import until


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip, deflate", True),
        ("deflate, GZIP;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, identity", False),
        ("identity", False),
        ("", False),
        ("gzip;q=nonsense", False),
    ],
)
def test_gzip_only_for_clients_that_accept_it(header: str, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


def test_a_body_is_gzipped_once_and_the_same_bytes() -> None:
    body = Body.of(b"<html>" * 1000)
    assert gzip.decompress(body.gzipped) == body.data
    assert len(body.gzipped) < len(body.data) // 10
    assert Body.of(body.data) == body  # no time in the gzip header: the same bytes each time


async def test_a_request_that_goes_away_leaves_the_rendering_to_the_others() -> None:
    rendering, release = threading.Event(), threading.Event()

    def render(text: str) -> str:
        rendering.set()
        assert release.wait(10)
        return text

    cache: ResponseCache[None, str, str] = ResponseCache(render)
    leaving = asyncio.create_task(cache.get(None, lambda: "page"))
    staying = asyncio.create_task(cache.get(None, lambda: "not taken: one is rendering"))
    await until(rendering.is_set)  # both tasks have asked: the second waits for the first's
    leaving.cancel()
    release.set()
    assert await staying == "page"
    assert leaving.cancelled()
    assert cache.renders == 1


async def test_a_failed_rendering_fails_its_requests_and_the_next_one_renders_again() -> None:
    attempts = []

    def render(text: str) -> str:
        attempts.append(text)
        if len(attempts) == 1:
            raise OSError("disk gone")
        return text

    cache: ResponseCache[None, str, str] = ResponseCache(render, clock=lambda: 0.0)
    with pytest.raises(OSError, match="disk gone"):
        await cache.get(None, lambda: "first")
    assert await cache.get(None, lambda: "second") == "second"
    assert await cache.get(None, lambda: "third") == "second"  # within max_age
    assert attempts == ["first", "second"]


async def test_each_key_is_rendered_on_its_own_once_per_max_age() -> None:
    now = [0.0]
    cache: ResponseCache[str, str, str] = ResponseCache(str.upper, clock=lambda: now[0])
    assert await cache.get("a", lambda: "a") == "A"
    assert await cache.get("b", lambda: "b") == "B"
    assert await cache.get("a", lambda: "changed") == "A"
    now[0] = 1.0
    assert await cache.get("a", lambda: "changed") == "CHANGED"
    assert await cache.get("b", lambda: "changed") == "CHANGED"
    assert cache.renders == 4


async def test_a_new_version_of_the_data_is_rendered_at_once() -> None:
    """A caller with a version (the mirror lists: the freshness record's change count) sees
    a change at once, not up to a second later; the same version reuses the rendering."""
    cache: ResponseCache[str, int, int] = ResponseCache(lambda taken: taken, clock=lambda: 0.0)
    assert await cache.get("k", lambda: 1, version=1) == 1
    assert await cache.get("k", lambda: 2, version=1) == 1
    assert await cache.get("k", lambda: 3, version=2) == 3
    assert cache.renders == 2
