"""The receiver's subscription keys, checked: ``subscribe`` and the MQTT credentials
(``mqtt_username``, ``mqtt_password_file``, ``mqtt_ca_file``), per repository and inherited
from the host level like the other keys (docs/design.md#subscriptions)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrorhook.checks import INVALID, Table, kind_of, read_key_file, valid
from mirrorhook.trigger import Via


@dataclass(frozen=True, slots=True)
class Subscription:
    """One entry of ``subscribe``: where and how."""

    url: str
    via: Via
    """``Via.EVENTS`` for an http(s) event stream, ``Via.MQTT`` for a broker topic."""

    @property
    def topic(self) -> str:
        """The MQTT topic (the URL's path without its leading ``/``)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path[1:])

    @property
    def shown(self) -> str:
        """The URL without any user or password, for logs and status."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_subscription(value: str) -> Subscription:
    """Check one ``subscribe`` entry; raise ``ValueError`` saying what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValueError("each entry must be a URL")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"{value!r} is not a URL: {err}") from None
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    if parts.username or parts.password:
        raise ValueError(
            f"{value!r}: no credentials in the URL (set mqtt_username and mqtt_password_file)"
        )
    if parts.scheme in ("http", "https"):
        if parts.fragment:
            raise ValueError(f"{value!r}: an event stream URL has no #fragment")
        return Subscription(value, Via.EVENTS)
    if parts.scheme in ("mqtt", "mqtts"):
        topic = urllib.parse.unquote(parts.path[1:])
        if not topic or parts.query or parts.fragment:
            raise ValueError(f"{value!r}: an MQTT URL is mqtt[s]://HOST[:PORT]/TOPIC")
        if port == 0:
            raise ValueError(f"{value!r}: port 0")
        return Subscription(value, Via.MQTT)
    raise ValueError(
        f"{value!r}: use https:// (the upstream's /v1/events) or mqtts:// (a broker's topic)"
    )


class Password:
    """A broker password; it never shows its value in ``repr``, ``str`` or logs."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Password(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Password) and other.value == self.value

    def __hash__(self) -> int:
        return hash(Password)


def subscription_list(value: Any) -> tuple[Subscription, ...]:
    """The ``subscribe`` array: event stream and MQTT URLs."""
    if not isinstance(value, list):
        raise ValueError(f"must be an array of URLs, not {kind_of(value)}")
    found = []
    for index, item in enumerate(value):
        try:
            found.append(parse_subscription(item))
        except ValueError as err:
            raise ValueError(f"item {index}: {err}") from None
    if len({entry.url for entry in found}) < len(found):
        raise ValueError("lists a URL twice")
    return tuple(found)


def _password(text: str) -> Password:
    value = text.strip("\r\n")
    if not value or "\n" in value:
        raise ValueError("must hold the password on one line")
    return Password(value)


def read_password(path: Path) -> Password:
    """Read a broker password file (one line), refusing one that others can read."""
    return read_key_file(path, "MQTT password file", _password, private=True)


def check_subscriptions(t: Table, values: dict[str, Any], public_keys: Any) -> Any:
    """Check one repository's subscription keys together; return its MQTT password (or
    ``None``), ``INVALID`` when something is wrong (the problem is recorded on ``t``)."""
    subscribe = values["subscribe"]
    if not valid(subscribe):
        return INVALID
    if subscribe and public_keys == ():
        t.problem(
            "subscribe",
            "needs public_key_file: a subscription carries the upstream's v1a signature only",
        )
        return INVALID
    mqtt = any(entry.via is Via.MQTT for entry in subscribe)
    path: Path | None = values["mqtt_password_file"]
    if path is INVALID or values["mqtt_ca_file"] is INVALID or values["mqtt_username"] is INVALID:
        return INVALID
    if path is None or not mqtt:
        return None
    try:
        return read_password(path)
    except ValueError as err:
        t.problem("mqtt_password_file", str(err))
        return INVALID
