"""Which addresses a check may be redirected to off its ``check_url``'s origin: public ones
only, in every spelling, judged by the resolver of the connection itself
(docs/design.md#where-a-check-may-be-redirected).

A mirror's redirect must not make the publisher fetch loopback, private or link-local
addresses and publish what it read there (or, from the errors, which ports are open).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

REFUSED = "redirected off its origin to an address that is not public (not followed)"
"""The one reason of every refused redirect: whatever is behind it, it reads the same."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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
