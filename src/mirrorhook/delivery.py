"""Sending one webhook to one mirror, and what its answer means (docs/design.md#delivery-semantics).

One ``Courier`` owns the publisher's ``ClientSession``: explicit timeouts (aiohttp's
default is five minutes), no redirects followed, a User-Agent; and, for the freshness checks
redirected off their ``check_url``'s origin, a second one that connects to public addresses
only (``public_addresses.public_session``). Every non-2xx answer or
network failure becomes a ``DeliveryError`` whose ``kind`` is the policy: retry soon,
retry at the longest interval (the mirror is misconfigured), or stop (410 Gone).

``concurrency`` bounds the requests being *started* — connecting, TLS, writing — which is
where the publisher spends its CPU. A request whose bytes are out only waits for its
answer and holds no slot, nor does one stuck for over ``SLOT_HOLD`` seconds in a connect
or handshake, so mirrors that never answer cannot starve the healthy ones. Connections
are not kept alive: publishes are minutes apart, and each mirror has at most one request
in flight, so open sockets stay bounded by the mirrors that are mid-delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import math
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

import mirrorhook
from mirrorhook import signing
from mirrorhook.changes import Change
from mirrorhook.errors import DeliveryError, DeliveryKind
from mirrorhook.message import CHANGES_PATH, REPORT_PATH, Update, new_update
from mirrorhook.public_addresses import public_session
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig

SLOT_HOLD = 1.0
"""Seconds at most that one attempt holds one of the ``concurrency`` slots."""
INLINE_CHANGES = 48 * 1024
"""Bytes of a change document that travel inline in an announcement (``data.changes``): it
then stays below a receiver's default ``max_body`` (64 KiB)."""
MAX_RETRY_AFTER = 3600.0
"""A Retry-After longer than this is capped: a typo on the mirror must not silence it for days."""


@dataclass(frozen=True, slots=True)
class Message:
    """One announcement of a marker value: its id and body stay the same across retries."""

    update: Update
    msg_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    body: bytes = b""
    created: float = field(default_factory=time.time)
    """When the publisher noticed the marker (for the publish-to-delivered lag)."""

    bodies: dict[str, bytes] = field(default_factory=dict, compare=False)
    """The body for each mirror, when it names the mirror (a report is asked for)."""

    @classmethod
    def of(cls, update: Update) -> Message:
        return cls(update=update, body=update.encode())

    @classmethod
    def announcing(
        cls,
        config: PublisherConfig,
        value: str,
        now: float,
        changes: Change | None = None,
    ) -> Message:
        """The announcement of marker ``value`` of ``config``'s tree (``serve`` and
        ``notify`` alike): asking for reports at ``public_url`` when the publisher has one;
        with ``changes`` (a publisher that keeps manifests), where the changes are served,
        and the change from the previous publish itself when it is small."""
        public = None if config.public_url is None else config.public_url.rstrip("/")
        update = new_update(
            config.marker,
            value,
            config.name,
            now,
            repo=config.repo,
            report_url=None if public is None else public + REPORT_PATH,
        )
        if changes is not None:
            encoded = changes.encode()
            inline = json.loads(encoded) if len(encoded) <= INLINE_CHANGES else None
            url = None if public is None else f"{public}{CHANGES_PATH}/{config.url_name}"
            update = dataclasses.replace(update, changes_url=url, changes=inline)
        return cls.of(update)

    def body_for(self, mirror: str) -> bytes:
        """The body ``mirror`` gets: with its own name in it when reports are asked for."""
        if self.update.report_url is None:
            return self.body
        if mirror not in self.bodies:
            self.bodies[mirror] = dataclasses.replace(self.update, mirror=mirror).encode()
        return self.bodies[mirror]


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivered webhook: the mirror's status code and its answer."""

    status: int
    answer: str


def classify(status: int) -> DeliveryKind | None:
    """Return the policy for an HTTP status, ``None`` for success (the one place it lives)."""
    if 200 <= status < 300:
        return None
    if status == 410:
        return DeliveryKind.GONE
    if status == 429 or status >= 500:
        return DeliveryKind.TRANSIENT
    return DeliveryKind.MISCONFIGURED


def retry_after(value: str | None, now: float) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date) into seconds from ``now``.

    The value comes from a mirror and may be anything: whatever cannot be read as ASCII
    digits or an HTTP date with a zone is ignored (``None``), never an exception. The
    result lies within [0, ``MAX_RETRY_AFTER``].
    """
    if not value:
        return None
    value = value.strip()
    # ASCII only: "²" or "٣" pass str.isdigit() but are no HTTP delay-seconds.
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - now if when.tzinfo is not None else None
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class Courier:
    """Posts signed webhooks over one shared HTTP session (an async context manager)."""

    def __init__(
        self, *, timeout: float, concurrency: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._slots = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._public: aiohttp.ClientSession | None = None
        self._sessions = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Courier:
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_request_written)
        tracing.on_request_chunk_sent.append(_request_written)
        # No pool limit: the slots bound the requests being started.
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        headers = {"User-Agent": f"mirrorhook/{mirrorhook.__version__}"}
        self._session = await self._sessions.enter_async_context(
            aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=headers, trace_configs=[tracing]
            )
        )
        self._public = await self._sessions.enter_async_context(
            public_session(timeout=self._timeout, headers=headers)
        )
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: types.TracebackType | None,
    ) -> None:
        await self._sessions.aclose()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session, shared with the freshness checks."""
        assert self._session is not None, "use Courier as an async context manager"  # noqa: S101
        return self._session

    @property
    def public_session(self) -> aiohttp.ClientSession:
        """The HTTP session of checks redirected off their ``check_url``'s origin: it
        connects to public addresses only."""
        assert self._public is not None, "use Courier as an async context manager"  # noqa: S101
        return self._public

    async def send(self, mirror: MirrorConfig, message: Message) -> Receipt:
        """POST ``message`` to ``mirror`` once; raise ``DeliveryError`` unless it is accepted."""
        assert self._session is not None, "use Courier as an async context manager"  # noqa: S101
        if mirror.url is None:
            raise DeliveryError(DeliveryKind.MISCONFIGURED, "this mirror has no webhook url")
        # Signed afresh on every attempt: a retry hours later still needs a fresh timestamp,
        # while the id stays the same so the mirror can tell it is a retry.
        now = self._clock()
        body = message.body_for(mirror.name)
        headers = signing.signed_headers(mirror.signers, message.msg_id, int(now), body)
        headers["Content-Type"] = "application/json"
        slot = _Slot(self._slots)
        await slot.take()
        # Past SLOT_HOLD an attempt is waiting on the network (a connect or TLS handshake
        # that never completes), not using this host: it holds no slot any more.
        releaser = asyncio.get_running_loop().call_later(SLOT_HOLD, slot.give_back)
        try:
            async with self._session.post(
                mirror.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=slot,
            ) as response:
                slot.give_back()
                answer = (await response.content.read(512)).decode("utf-8", "replace")
                status = response.status
                after = retry_after(response.headers.get("Retry-After"), self._clock())
                location = response.headers.get("Location", "")
        except TimeoutError:
            raise DeliveryError(
                DeliveryKind.TRANSIENT, f"no answer within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientConnectorError as err:
            reason = err.os_error.strerror or str(err.os_error) or type(err.os_error).__name__
            raise DeliveryError(DeliveryKind.TRANSIENT, f"cannot connect: {reason}") from None
        except aiohttp.ClientError as err:
            raise DeliveryError(DeliveryKind.TRANSIENT, f"{type(err).__name__}: {err}") from None
        finally:
            releaser.cancel()
            slot.give_back()
        kind = classify(status)
        if kind is None:
            return Receipt(status, answer)
        reason = f"HTTP {status}"
        if 300 <= status < 400:
            reason += f" redirect to {location or '?'} (not followed: fix the mirror's url)"
        elif status in (400, 401):
            reason += f" (check this mirror's secret and url): {answer.strip()[:200]}"
        elif answer.strip():
            reason += f": {answer.strip()[:200]}"
        raise DeliveryError(kind, reason, status=status, retry_after=after)


class _Slot:
    """One request's claim on the courier's concurrency, given back once (whichever first:
    the request is written, an answer arrives, or the attempt ends)."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False

    async def take(self) -> None:
        await self._slots.acquire()
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


async def _request_written(
    _session: aiohttp.ClientSession, context: types.SimpleNamespace, _params: object
) -> None:
    slot = context.trace_request_ctx
    if isinstance(slot, _Slot):
        slot.give_back()
