"""The publisher's broker transport: each announcement published to MQTT, retained with QoS
1, so that the broker hands the last one to a mirror the moment it subscribes
(docs/design.md#the-broker).

One task keeps one connection to the broker, reconnecting for ever with backoff and jitter;
after every (re)connect it publishes the newest announcement of each repository, so an
outage costs no publish. Announcing only records the newest envelope per repository and
sets an event: a slow or dead broker never delays webhooks or the event streams. With
``poke_topic`` each announcement is followed by a bare message (not retained, the
repository's name as payload) for ``mqtt-exec``-style subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiomqtt

from mirrorhook.envelope import Envelope
from mirrorhook.mqtt_config import BrokerSettings
from mirrorhook.retry import Backoff, Sleep, forever
from mirrorhook.subscribe_mqtt import mqtt_client

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 10.0
"""Seconds the broker has to acknowledge one message (QoS 1) before the connection is
taken for dead and made again."""


class Broker:
    """Publishes the newest announcement of each repository to the broker."""

    def __init__(
        self,
        settings: BrokerSettings,
        publisher: str,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._publisher = publisher
        self._sleep = sleep
        self._backoff = Backoff(first=1.0, cap=60.0, rng=rng or random.Random())
        self.latest: dict[str | None, Envelope] = {}
        self._unsent: set[str | None] = set()
        self._wake = asyncio.Event()
        self._failures = 0

    def announce(self, repo: str | None, envelope: Envelope) -> None:
        """Take the newest announcement of ``repo``; never waits."""
        self.latest[repo] = envelope
        self._unsent.add(repo)
        self._wake.set()

    def topic(self, repo: str | None) -> str:
        return self.settings.topic_of(self.settings.topic, self._publisher, repo)

    async def run(self) -> None:
        """Keep the connection and publish until cancelled."""
        async for attempt in forever(
            should_retry=lambda err: isinstance(err, aiomqtt.MqttError | OSError | TimeoutError),
            wait=lambda _state: self._backoff.delay(max(1, self._failures)),
            what=f"the MQTT broker {self.settings.url}",
            sleep=self._sleep,
        ):
            with attempt:
                await self._connected_once()

    async def _connected_once(self) -> None:
        settings = self.settings
        client = mqtt_client(settings.url, settings.username, settings.password, settings.ca_file)
        try:
            async with client:
                self._failures = 0
                logger.info("connected to the MQTT broker %s", settings.url)
                self._unsent.update(self.latest)  # republished after every (re)connect
                self._wake.set()
                # Nothing is subscribed to: the message iterator ends only when the
                # connection is lost, which an idle publisher would not notice otherwise.
                lost = asyncio.ensure_future(anext(aiter(client.messages)))
                try:
                    await self._publish_until(client, lost)
                finally:
                    lost.cancel()
        except (aiomqtt.MqttError, OSError, TimeoutError):
            self._failures += 1
            raise

    async def _publish_until(
        self, client: aiomqtt.Client, lost: asyncio.Future[aiomqtt.Message]
    ) -> None:
        """Publish each newest announcement as it comes; raise when the connection is lost."""
        while True:
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait((woken, lost), return_when=asyncio.FIRST_COMPLETED)
            if lost.done():
                woken.cancel()
                lost.result()  # the MqttError of the lost connection
                raise aiomqtt.MqttError("the broker closed the connection")
            self._wake.clear()
            while self._unsent:
                # A newer one announced meanwhile marks its repository unsent again; one
                # lost with the connection is sent after the reconnect.
                repo = self._unsent.pop()
                await self._publish(client, repo, self.latest[repo])

    async def _publish(self, client: aiomqtt.Client, repo: str | None, envelope: Envelope) -> None:
        await client.publish(
            self.topic(repo), envelope.encode(), qos=1, retain=True, timeout=PUBLISH_TIMEOUT
        )
        if self.settings.poke_topic is not None:
            poke = self.settings.topic_of(self.settings.poke_topic, self._publisher, repo)
            payload = (repo or self._publisher).encode()
            await client.publish(poke, payload, qos=0, retain=False, timeout=PUBLISH_TIMEOUT)
