"""Subscribing to an MQTT broker's topic (``mqtt://`` or ``mqtts://HOST[:PORT]/TOPIC``).

The publisher publishes each announcement retained with QoS 1, so the broker hands the
last one to a mirror the moment it subscribes; this side subscribes with QoS 1 on a clean
session and takes each message's payload as an envelope. The broker is trusted with
nothing: the intake verifies every signature. ``aiomqtt`` (over paho-mqtt) speaks the
protocol; its keep-alive finds a dead broker, and its incoming queue is bounded.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from mirrorhook.subscription import Seen, SubscriptionError, Take
from mirrorhook.subscription_config import Password, Subscription

CONNECT_TIMEOUT = 10.0
KEEPALIVE = 30
"""Seconds between the client's pings; a broker silent for 1.5 times that is dropped."""
MAX_QUEUED = 64
"""Messages waiting to be taken at most (beyond, the client drops them: each is only a
nudge to read the upstream marker, and the newest comes again as the retained one)."""


def mqtt_port(parts: urllib.parse.SplitResult) -> int:
    """The URL's port, or the protocol's: 8883 with TLS, 1883 without."""
    return parts.port or (8883 if parts.scheme == "mqtts" else 1883)


def tls_context(scheme: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """A verifying TLS context for ``mqtts`` (with ``ca_file``'s authorities when given)."""
    if scheme != "mqtts":
        return None
    return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))


def mqtt_client(
    url: str,
    username: str | None,
    password: Password | None,
    ca_file: Path | None,
    **options: Any,
) -> aiomqtt.Client:
    """A client of the broker at ``url`` (``mqtt://`` or ``mqtts://HOST[:PORT]``) with the
    timeouts both sides use: the publisher's broker transport and a mirror's subscription."""
    parts = urllib.parse.urlsplit(url)
    return aiomqtt.Client(
        parts.hostname or "",
        mqtt_port(parts),
        username=username,
        password=None if password is None else password.value,
        tls_context=tls_context(parts.scheme, ca_file),
        timeout=CONNECT_TIMEOUT,
        keepalive=KEEPALIVE,
        **options,
    )


class MqttTransport:
    """Follows one broker topic with the repository's credentials."""

    def __init__(
        self,
        username: str | None = None,
        password: Password | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self._username = username
        self._password = password
        self._ca_file = ca_file

    async def __call__(
        self, subscription: Subscription, seen: Seen, connected: Callable[[], None], take: Take
    ) -> None:
        client = mqtt_client(
            subscription.url,
            self._username,
            self._password,
            self._ca_file,
            clean_session=True,
            max_queued_incoming_messages=MAX_QUEUED,
        )
        try:
            async with client:
                await client.subscribe(subscription.topic, qos=1)
                connected()
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes | bytearray):
                        await take(bytes(payload))
        except aiomqtt.MqttError as err:
            raise SubscriptionError(f"broker: {err}") from None
