"""The daemon's subscription transports (docs/design.md#subscriptions): made when first
needed and closed at the end — one HTTP session for every event stream, one broker client
per MQTT subscription."""

from __future__ import annotations

from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.subscribe_events import EventsTransport
from mirrorhook.subscription import Transport
from mirrorhook.subscription_config import Subscription
from mirrorhook.trigger import Via


class Transports:
    """Hands each subscription its transport."""

    def __init__(self) -> None:
        self._events: EventsTransport | None = None

    def of(self, subscription: Subscription, config: ReceiverConfig) -> Transport:
        """The transport that follows ``subscription`` of ``config``'s repository."""
        if subscription.via is Via.MQTT:
            # Imported only by a mirror that uses MQTT: paho-mqtt costs start-up time.
            from mirrorhook.subscribe_mqtt import MqttTransport  # noqa: PLC0415

            return MqttTransport(config.mqtt_username, config.mqtt_password, config.mqtt_ca_file)
        if self._events is None:
            self._events = EventsTransport()
        return self._events

    async def close(self) -> None:
        if self._events is not None:
            await self._events.close()
