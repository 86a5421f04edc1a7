"""Checks of a mirror's ``check_url``: where a redirect may lead and how much of the answer
is read (docs/design.md#where-a-check-may-be-redirected). Real HTTP servers on 127.0.0.1; no
traffic leaves the loopback addresses: what only a public address could show is tested on
the policy itself."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from mirrorhook.checker import MAX_BODY, CheckError, origin, serving
from mirrorhook.delivery import Courier
from mirrorhook.public_addresses import (
    REFUSED,
    NotPublicError,
    PublicResolver,
    is_public,
    is_public_host,
    public_session,
)
from tests.helpers import ServerFactory, free_port, until

VALUE = "Wed Nov 25 12:00:00 UTC 2026"


class Counted:
    """A mirror's web server serving ``VALUE`` at every path, counting the requests."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.app = web.Application()
        self.app.router.add_get("/{tail:.*}", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.host}{request.path}")
        return web.Response(body=f"{VALUE}\n".encode())


def redirector(locations: list[str]) -> web.Application:
    """A mirror whose ``/to/N`` redirects to ``locations[N]``."""
    app = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(locations[int(request.match_info["index"])])

    app.router.add_get("/to/{index}", moved)
    return app


async def check(url: str, **options: float) -> str:
    """What ``url`` serves, or the check's error, through a session and a public session
    as the publisher has them."""
    async with aiohttp.ClientSession() as session, public_session() as public:
        try:
            return await serving(session, url, public=public, **options)
        except CheckError as err:
            return f"error: {err}"


async def test_a_redirect_off_its_origin_to_loopback_is_refused_alike_in_every_spelling(
    aiohttp_server: ServerFactory,
) -> None:
    """A check_url on 127.0.0.1 redirecting to another port there (serving a marker), to a
    closed port, to localhost, to 127.0.0.1 spelled in decimal, hex or short form, to [::1]
    or to IPv4-mapped IPv6: each is the one refusal, word for word, and the server behind
    the open port is never asked (its count, after the checks returned)."""
    victim = Counted()
    port = (await aiohttp_server(victim.app)).port
    closed = free_port()
    targets = [
        f"http://127.0.0.1:{port}/CURRENT",
        f"http://127.0.0.1:{closed}/CURRENT",
        f"http://localhost:{port}/CURRENT",
        f"http://LocalHost:{port}/CURRENT",
        f"http://2130706433:{port}/CURRENT",
        f"http://0x7f000001:{port}/CURRENT",
        f"http://0x7f.1:{port}/CURRENT",
        f"http://127.1:{port}/CURRENT",
        f"http://0177.0.0.1:{port}/CURRENT",
        f"http://127.0.0.1.:{port}/CURRENT",
        f"http://[::1]:{port}/CURRENT",
        f"http://[::ffff:127.0.0.1]:{port}/CURRENT",
        f"http://[::ffff:7f00:1]:{port}/CURRENT",
        f"http://user@127.0.0.1:{port}/CURRENT",
    ]
    mirror = await aiohttp_server(redirector(targets))
    answers = {
        target: await check(str(mirror.make_url(f"/to/{index}")))
        for index, target in enumerate(targets)
    }
    assert answers == dict.fromkeys(targets, f"error: {REFUSED}")
    assert victim.requests == []


async def test_a_redirect_within_its_origin_is_followed_and_its_marker_read(
    aiohttp_server: ServerFactory,
) -> None:
    """Another path on the same host and port, relative or absolute, is the mirror's own:
    it is fetched, and the marker there is what the check reads."""
    mirror = Counted()
    app = web.Application()

    async def relative(_request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/real/CURRENT")

    async def absolute(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(str(request.url.with_path("/real/other")))

    app.router.add_get("/relative", relative)
    app.router.add_get("/absolute", absolute)
    app.add_subapp("/real", mirror.app)
    server = await aiohttp_server(app)
    assert await check(str(server.make_url("/relative"))) == VALUE
    assert await check(str(server.make_url("/absolute"))) == VALUE
    assert mirror.requests == [
        f"127.0.0.1:{server.port}{path}" for path in ("/real/CURRENT", "/real/other")
    ]


def test_an_origin_is_scheme_host_and_port_with_default_ports_filled_in() -> None:
    assert origin(URL("http://h/")) == origin(URL("http://h:80/x")) == ("http", "h", 80)
    assert origin(URL("https://H/")) == origin(URL("https://h:443/")) == ("https", "h", 443)
    assert origin(URL("http://h/")) != origin(URL("https://h/"))
    assert origin(URL("http://h/")) != origin(URL("http://h:8080/"))
    assert origin(URL("http://h/")) != origin(URL("http://h.example/"))


async def test_an_off_origin_redirect_to_a_public_address_goes_through_the_public_session(
    tmp_path: Path,
) -> None:
    """A redirect to a public address or name is followed, with the public session. Stubs
    stand for both sessions here — each over a unix socket, whatever the URL's host —
    because nothing public can be served on this machine and no test may send traffic
    beyond the loopback addresses (not even when the code under test is broken)."""
    public_mirror = Counted()
    targets = ["http://93.184.215.14/CURRENT", "http://mirror.example:8080/CURRENT"]
    async with (
        unix_server(redirector(targets), tmp_path / "own.sock") as own_path,
        unix_server(public_mirror.app, tmp_path / "public.sock") as public_path,
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(own_path)) as session,
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(public_path)) as public,
    ):
        for index in range(len(targets)):
            url = f"http://mirror-a.example/to/{index}"
            assert await serving(session, url, public=public) == VALUE
    assert public_mirror.requests == ["93.184.215.14/CURRENT", "mirror.example:8080/CURRENT"]


@contextlib.asynccontextmanager
async def unix_server(app: web.Application, path: Path) -> AsyncIterator[str]:
    """Serve ``app`` on the unix socket ``path`` for the block."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        yield str(path)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped: what it reaches is 8.8.8.8
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("0.0.0.0", False),  # noqa: S104 - an address judged, not bound
        ("0.1.2.3", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # the cloud metadata service
        ("100.64.0.1", False),  # shared address space (carrier-grade NAT)
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("224.0.0.1", False),  # multicast, which ipaddress calls global
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%2", False),
        ("fec0::1", False),  # site-local, which ipaddress calls global
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),  # multicast, which ipaddress calls global
        ("ff0e::1", False),
        ("2001:db8::1", False),
        ("100::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),  # IPv4-compatible, long deprecated
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1, which ipaddress calls global
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::808:808", False),  # local-use NAT64
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1, which ipaddress calls global
        ("2002:a00:1::1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ],
)
def test_is_public_on_addresses_of_every_kind(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("host", "verdict"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("2130706433", False),
        ("134744072", False),  # 8.8.8.8 in decimal: only dotted quads count
        ("0x7f000001", False),
        ("0x7f.1", False),
        ("0x08.0x08.0x08.0x08", False),
        ("127.1", False),
        ("0177.0.0.1", False),
        ("010.8.8.8", False),
        ("127.0.0.1.", False),
        ("0", False),
        ("::ffff:7f00:1", False),
        ("fe80::1%25eth0", False),
        ("1::2::3", False),
        ("localhost", None),  # a name: judged when resolved
        ("mirror.example", None),
        ("1e100.net", None),
    ],
)
def test_is_public_host_on_every_spelling(host: str, verdict: bool | None) -> None:
    assert is_public_host(host) is verdict


class Answers(AbstractResolver):
    """A stub resolver answering every name with ``addresses``."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_the_public_resolver_passes_public_answers_and_refuses_any_other() -> None:
    """A name whose every address is public resolves as the inner resolver says; one with
    any address that is not (the connector would try them all) is refused. The inner
    resolver is a stub because no name on this machine resolves to a public address and no
    test may depend on the network's DNS."""
    public = await PublicResolver(Answers("8.8.8.8", "2606:4700::1111")).resolve("m.example", 80)
    assert [(result["host"], result["port"]) for result in public] == [
        ("8.8.8.8", 80),
        ("2606:4700::1111", 80),
    ]
    for answers in [
        ("127.0.0.1",),
        ("8.8.8.8", "10.0.0.1"),
        ("2606:4700::1111", "::1"),
        ("fe80::1%eth0",),
        ("::ffff:127.0.0.1",),
        ("not an address",),
    ]:
        with pytest.raises(NotPublicError, match=re.escape(REFUSED)):
            await PublicResolver(Answers(*answers)).resolve("m.example", 80)
    inner = Answers()
    await PublicResolver(inner).close()
    assert inner.closed


def _ipv4_spellings(number: int) -> list[str]:
    """Every way the socket layer (``inet_aton``) reads ``number`` as an IPv4 address."""
    octets = number.to_bytes(4, "big")
    return [
        ".".join(map(str, octets)),
        str(number),
        f"{number:#x}",
        f"0{number:o}",
        ".".join(f"{octet:#x}" for octet in octets),
        ".".join(f"0{octet:o}" for octet in octets),
        f"{octets[0]}.{number & 0xFFFFFF}",
        f"{octets[0]}.{octets[1]}.{number & 0xFFFF}",
        f"{octets[0]:#x}.{number & 0xFFFFFF:#x}",
    ]


@given(number=st.integers(0, 2**32 - 1))
def test_every_spelling_of_an_ipv4_address_is_refused_unless_global(number: int) -> None:
    """Whatever the spelling, an IPv4 address is never taken for a name; it passes only as
    a dotted quad of a global address."""
    address = ipaddress.IPv4Address(number)
    for spelling in _ipv4_spellings(number):
        assert socket.inet_aton(spelling) == address.packed  # the spelling means the address
        verdict = is_public_host(spelling)
        assert verdict is not None, spelling
        if verdict:
            assert spelling == str(address), spelling
            assert address.is_global, spelling


@given(number=st.integers(0, 2**32 - 1), high=st.integers(0, 2**128 - 1))
def test_every_ipv6_form_of_an_address_is_refused_unless_global(number: int, high: int) -> None:
    """IPv6 with an IPv4 address inside (mapped, NAT64, 6to4, IPv4-compatible), in every
    textual form, passes only when that IPv4 address is global; any other IPv6 address
    only when it is global."""
    inner = ipaddress.IPv4Address(number)
    word = f"{number >> 16:x}:{number & 0xFFFF:x}"
    embedding = [
        f"::ffff:{inner}",
        f"::ffff:{word}",
        f"0:0:0:0:0:ffff:{inner}",
        f"64:ff9b::{inner}",
        f"64:ff9b::{word}",
        f"2002:{word}::1",
        f"::{inner}",
    ]
    for spelling in embedding:
        if is_public_host(spelling):
            assert inner.is_global, spelling
    other = ipaddress.IPv6Address(high)
    for spelling in (str(other), other.exploded):
        if is_public_host(spelling):
            mapped = other.ipv4_mapped
            assert (mapped or other).is_global, spelling


TwoPieces = Callable[..., Awaitable[str]]


@pytest.fixture
async def two_pieces() -> AsyncIterator[TwoPieces]:
    """Start raw HTTP servers that send a body in two TCP segments: ``await two_pieces(body,
    length=..., rest=...)`` is one's URL. Each writes its head and the first half of
    ``body``, waits, then the rest (unless not ``rest``); with a Content-Length when
    ``length``, else up to the end of the connection."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    finished: list[asyncio.StreamWriter] = []

    async def start(body: bytes, *, length: bool, rest: bool = True) -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await reader.readuntil(b"\r\n\r\n")
                head = "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                if length:
                    head += f"Content-Length: {len(body)}\r\n"
                writer.write(head.encode() + b"\r\n" + body[: len(body) // 2])
                await writer.drain()
                # The first piece leaves on its own: asyncio sets TCP_NODELAY.
                await asyncio.sleep(0.1)
                if rest:
                    writer.write(body[len(body) // 2 :])
                    await writer.drain()
                else:
                    await reader.read()  # until the check gives up and hangs up
            finally:
                writer.close()
                finished.append(writer)

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/CURRENT"

    yield start
    for writer in writers:
        writer.close()
    await until(lambda: len(finished) == len(writers))
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_marker_arriving_in_two_pieces_is_read_whole(two_pieces: TwoPieces) -> None:
    """A mirror that writes half its answer's body, waits, then the rest (with a length, or
    up to the end of the connection) is read whole — it was recorded cut short; a body
    that grows past the bound in its second piece is refused, and one whose second piece
    never comes ends at the check's deadline."""
    body = f"{VALUE}\n".encode()
    assert await check(await two_pieces(body, length=True)) == VALUE
    assert await check(await two_pieces(body, length=False)) == VALUE
    too_big = b"1" * (MAX_BODY // 2 + 1) * 2
    assert "larger than" in await check(await two_pieces(too_big, length=False))
    assert await check(await two_pieces(body, length=True, rest=False), timeout=0.5) == (
        "error: no answer within 0.5 s"
    )


async def test_the_courier_s_sessions_refuse_a_redirect_to_loopback_and_close_with_it(
    aiohttp_server: ServerFactory,
) -> None:
    """The publisher's own wiring: the courier's session and public session, used as the
    checks use them, refuse a redirect to localhost; both are closed with the courier."""
    victim = Counted()
    port = (await aiohttp_server(victim.app)).port
    mirror = await aiohttp_server(redirector([f"http://localhost:{port}/CURRENT"]))
    async with Courier(timeout=2, concurrency=1) as courier:
        with pytest.raises(CheckError, match=re.escape(REFUSED)):
            await serving(
                courier.session, str(mirror.make_url("/to/0")), public=courier.public_session
            )
        sessions = (courier.session, courier.public_session)
    assert [session.closed for session in sessions] == [True, True]
    assert victim.requests == []
