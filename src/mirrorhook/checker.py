"""Reading what a mirror serves: its copy of the marker at ``check_url``, as a user would.

One GET, bounded every way a hostile or broken mirror could stretch it: a deadline, at most
``MAX_BODY`` bytes read (however the answer is split on the wire), at most ``MAX_REDIRECTS``
redirects followed (never from https to http, and off the ``check_url``'s origin only to
public addresses), and the answer must be a marker by the rules of ``marker.py``
(docs/design.md#freshness, docs/design.md#where-a-check-may-be-redirected). Whatever goes
wrong is a ``CheckError`` with a one-line reason; nothing else is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from mirrorhook import bodies, marker
from mirrorhook.errors import MarkerError, MirrorhookError
from mirrorhook.freshness import AFTER_PUBLISH, Freshness, State
from mirrorhook.publisher_config import MirrorConfig

logger = logging.getLogger(__name__)

MAX_BODY = 4096
"""Bytes of a mirror's answer read at most: a marker is a short line."""
MAX_REDIRECTS = 3
CHECK_TIMEOUT = 10.0
"""Seconds one check may take, redirects included."""
CHECK_CONCURRENCY = 16
"""Checks in flight at once: their own bound, so that they never hold up deliveries."""
REFUSED = "redirected off its origin to an address that is not public (not followed)"
"""The one reason of every refused redirect: whatever is behind it, it reads the same."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CheckError(MirrorhookError):
    """What a mirror's ``check_url`` did not give: a reason in a few words."""


class NotPublicError(OSError):
    """A name resolved to an address that is not public: raised by ``PublicResolver``,
    before any connection is made."""


def is_public(address: Address) -> bool:
    """Whether a redirect off a ``check_url``'s origin may lead to ``address``: one that is
    global and neither loopback, private, link-local, site-local, unspecified, multicast
    nor reserved. An IPv6 address with an IPv4 address inside is judged by that one too:
    IPv4-mapped and NAT64 (64:ff9b::/96) addresses as the IPv4 address they reach, 6to4
    only when its IPv4 address is public as well; Teredo, whose relay reaches whatever its
    client part says, never."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address in _NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        if address.teredo is not None or address.is_site_local:
            return False
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
    return address.is_global and not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def is_public_host(host: str) -> bool | None:
    """Whether a URL's host (as yarl has it: IPv6 without brackets) spells a public address:
    ``True`` or ``False`` for an address, ``None`` for a name, whose addresses
    ``PublicResolver`` judges when it is resolved.

    An IPv4 address counts only in dotted-quad form: every other spelling the socket layer
    reads as one (``2130706433``, ``0x7f000001``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``) is
    ``False``, since no mirror needs one and aiohttp before 3.14 connected to some of them
    without asking the resolver."""
    if ":" in host:
        try:
            return is_public(ipaddress.IPv6Address(host))
        except ValueError:
            return False
    if host.replace(".", "").isdigit() or _inet_aton_reads(host):
        try:
            return is_public(ipaddress.IPv4Address(host))
        except ValueError:
            return False
    return None


def _inet_aton_reads(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


class PublicResolver(AbstractResolver):
    """A resolver that answers only with public addresses: it refuses a name (raises
    ``NotPublicError``) when any address it resolves to is not public, since the connector
    tries every one of them. It is the resolver of the connection itself, so what was
    judged is what is connected to: a second look-up could answer otherwise (DNS
    rebinding). aiohttp resolves no IP literal: ``is_public_host`` judges those first."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` with the inner resolver; refuse it unless every address is public."""
        results = await self._inner.resolve(host, port, family)
        for result in results:
            try:
                address = ipaddress.ip_address(result["host"])
            except ValueError:
                raise NotPublicError(REFUSED) from None
            if not is_public(address):
                raise NotPublicError(REFUSED)
        return results

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


@contextlib.asynccontextmanager
async def public_session(**options: Any) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session that connects to public addresses only (through ``PublicResolver``),
    for checks redirected off their ``check_url``'s origin; ``options`` go to
    ``aiohttp.ClientSession``. Connections are not kept: such redirects are rare."""
    resolver = PublicResolver(DefaultResolver())
    connector = aiohttp.TCPConnector(resolver=resolver, limit=0, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, **options) as session:
            yield session
    finally:
        await resolver.close()  # the connector closes only a resolver it made itself


async def serving(
    session: aiohttp.ClientSession,
    url: str,
    *,
    public: aiohttp.ClientSession,
    timeout: float = CHECK_TIMEOUT,
) -> str:
    """Return the marker value ``url`` serves; raise ``CheckError`` saying why not.

    ``session`` fetches ``url`` and redirects within its origin, ``public`` (a
    ``public_session``) redirects elsewhere."""
    try:
        async with asyncio.timeout(timeout):
            return await _follow(session, public, url)
    except TimeoutError:
        raise CheckError(f"no answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as err:
        if isinstance(err.os_error, NotPublicError):
            raise CheckError(REFUSED) from None
        reason = os.strerror(err.errno) if err.errno else str(err.os_error)
        raise CheckError(f"cannot connect to {err.host}:{err.port}: {reason}"[:200]) from None
    except aiohttp.ClientError as err:
        raise CheckError(f"{type(err).__name__}: {err}"[:200]) from None
    except OSError as err:
        raise CheckError(err.strerror or str(err)) from None


async def _follow(session: aiohttp.ClientSession, public: aiohttp.ClientSession, url: str) -> str:
    try:
        target = URL(url)
    except ValueError:
        raise CheckError("check_url is not a URL that can be read") from None
    home = origin(target)
    for _hop in range(MAX_REDIRECTS + 1):
        fetcher = session
        if origin(target) != home:
            # Decided before any connection, the same whatever listens there: an address
            # here, a name in the public session's resolver.
            if not target.raw_host or is_public_host(target.raw_host) is False:
                raise CheckError(REFUSED)
            fetcher = public
        # The URL judged is the one fetched: a second parse could read another host.
        async with fetcher.get(target, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                target = _next(target, response.headers.get("Location", ""))
                continue
            if response.status != 200:
                raise CheckError(f"HTTP {response.status}")
            try:
                data = await bodies.read_stream(response.content, MAX_BODY)
            except bodies.TooLargeError:
                raise CheckError(
                    f"does not serve a marker: it is larger than {MAX_BODY} bytes"
                ) from None
        try:
            value = marker.value_of(data, str(target))
        except MarkerError as err:
            raise CheckError(f"does not serve a marker: {err.reason}") from None
        if not value:
            raise CheckError("serves an empty marker")
        return value
    raise CheckError(f"more than {MAX_REDIRECTS} redirects")


def origin(url: URL) -> tuple[str, str | None, int | None]:
    """A URL's origin: scheme, host and port (yarl fills in the scheme's default port)."""
    return url.scheme, url.raw_host, url.port


def _next(url: URL, location: str) -> URL:
    """The redirect's target, refused when it leaves https or is no http(s) URL."""
    try:
        target = URL(urllib.parse.urljoin(str(url), location))
    except ValueError:
        raise CheckError("redirected to a URL that cannot be read") from None
    if target.scheme not in ("http", "https"):
        raise CheckError("redirected to a URL that is not http(s)")
    if url.scheme == "https" and target.scheme == "http":
        raise CheckError("redirected from https to http (not followed)")
    return target


class Checker:
    """Checks every mirror of a tree that has a ``check_url``, on the schedule above."""

    def __init__(
        self,
        freshness: Freshness,
        session: aiohttp.ClientSession,
        *,
        public: aiohttp.ClientSession,
        after_publish: tuple[float, ...] = AFTER_PUBLISH,
    ) -> None:
        """``session`` fetches each ``check_url`` and redirects within its origin; ``public``
        (a ``public_session``) fetches redirects elsewhere."""
        self.freshness = freshness
        self.mirrors = tuple(mirror for mirror in freshness.config.mirrors if mirror.check_url)
        """The mirrors there is something to check of: those with a ``check_url``."""
        self._session = session
        self._public = public
        self._after_publish = after_publish
        self._slots = asyncio.Semaphore(CHECK_CONCURRENCY)
        self._woken = {mirror.name: asyncio.Event() for mirror in self.mirrors}

    def published(self, value: str) -> None:
        """A new marker starts each mirror's schedule of checks after a publish; the same
        value again (a rescan, a restart) changes nothing."""
        if not self.freshness.published(value):
            return
        for event in self._woken.values():
            event.set()

    async def run(self) -> None:
        """Check every mirror on its schedule until cancelled."""
        async with asyncio.TaskGroup() as group:
            for mirror in self.mirrors:
                group.create_task(self._watch(mirror), name=f"check {mirror.name}")

    async def check(self, mirror: MirrorConfig) -> State:
        """Check ``mirror`` now and record what it serves."""
        assert mirror.check_url is not None  # noqa: S101 - only such mirrors are checked
        async with self._slots:
            try:
                value: str | None = await serving(
                    self._session, mirror.check_url, public=self._public
                )
                error = None
            except CheckError as err:
                value, error = None, str(err)
        state = self.freshness.observed(mirror.name, value, error)
        if error is not None:
            logger.info("check of %s failed: %s", mirror.name, error)
        return state

    async def _watch(self, mirror: MirrorConfig) -> None:
        woken = self._woken[mirror.name]
        state = await self.check(mirror)
        # After a restart within a publish's schedule, it goes on where it stands.
        step = self._step_after(state, 0)
        while True:
            if step < len(self._after_publish):
                since = self.freshness.since_publish() or 0.0
                delay = max(0.0, self._after_publish[step] - since)
            else:
                delay = self.freshness.config.check_interval
            try:
                async with asyncio.timeout(delay):
                    await woken.wait()
                woken.clear()
                step = 0
                continue  # a publish: its schedule starts now
            except TimeoutError:
                pass
            state = await self.check(mirror)
            step = self._step_after(state, step + 1)

    def _step_after(self, state: State, step: int) -> int:
        """The next step of the schedule after a publish (its length: none, back to the
        regular interval): none once fresh, and none left when its last time has passed."""
        since = self.freshness.since_publish()
        if state is State.FRESH or since is None:
            return len(self._after_publish)
        steps = range(step, len(self._after_publish))
        return next((i for i in steps if self._after_publish[i] > since), len(self._after_publish))
