"""One signed envelope per announcement, handed to every broadcast transport: the event
streams (``events.py``) and, with ``[publisher.mqtt]``, the broker (docs/design.md#subscriptions).

A broadcast is signed ``v1a`` only, with the upstream's key: every mirror receives the same
bytes, so no shared secret may sign them. Without ``signing_key_file`` nothing is broadcast.
Handing an envelope over never waits: each transport queues the newest one per repository.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from mirrorhook import signing
from mirrorhook.broker import Broker
from mirrorhook.delivery import Message
from mirrorhook.envelope import Envelope
from mirrorhook.events import EventStreams
from mirrorhook.keys import SigningKey
from mirrorhook.publisher_config import PublisherHost
from mirrorhook.supervisor import Supervisor


class Transport(Protocol):
    """Somewhere announcements are broadcast to."""

    def announce(self, repo: str | None, envelope: Envelope) -> None:
        """Take the newest announcement of ``repo``; must not wait."""


def envelope_of(message: Message, key: SigningKey) -> Envelope:
    """``message`` signed for everyone: the body without a mirror's name, stamped with the
    moment the publisher noticed the marker (a late subscriber still gets it: see
    docs/design.md#intake)."""
    timestamp = int(message.created)
    signature = signing.sign(key, message.msg_id, timestamp, message.body)
    return Envelope(message.msg_id, timestamp, signature, message.body)


class Broadcast:
    """Signs each announcement once and hands it to each transport."""

    def __init__(self, key: SigningKey | None, transports: Sequence[Transport]) -> None:
        self._key = key
        self._transports = tuple(transports)

    def announce(self, repo: str | None, message: Message) -> None:
        if self._key is None or not self._transports:
            return
        envelope = envelope_of(message, self._key)
        for transport in self._transports:
            transport.announce(repo, envelope)


def start_broadcast(
    publishers: PublisherHost,
    streams: EventStreams | None,
    supervisor: Supervisor,
    stack: contextlib.AsyncExitStack,
) -> Broadcast:
    """The publisher's broadcast: to the event streams, and to the broker when configured
    (its task runs until the stack closes)."""
    transports: list[Transport] = [] if streams is None else [streams]
    if publishers.mqtt is not None:
        broker = Broker(publishers.mqtt, publishers.name)
        transports.append(broker)
        task = asyncio.create_task(supervisor.keep("MQTT broker", broker.run))
        stack.push_async_callback(_cancelled, task)
    return Broadcast(publishers.signing_key, transports)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel("shutting down")
    await asyncio.gather(task, return_exceptions=True)
