"""``[publisher.mqtt]``: the broker the publisher announces through (docs/design.md#the-broker).

``url`` (``mqtt://`` or ``mqtts://HOST[:PORT]``), ``topic`` (default
``mirrorhook/{publisher}/{repo}``), optional ``username``, ``password_file``, ``ca_file`` and
``poke_topic`` (a bare message for ``mqtt-exec``-style subscribers). In the single form
``{repo}`` is the publisher's ``name``.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrorhook.checks import INVALID, Table, absolute_path, string, valid
from mirrorhook.subscription_config import Password, read_password

DEFAULT_TOPIC = "mirrorhook/{publisher}/{repo}"
_FIELDS = ("{publisher}", "{repo}")


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and as whom the publisher announces."""

    url: str
    topic: str = DEFAULT_TOPIC
    username: str | None = None
    password: Password | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    poke_topic: str | None = None

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    def topic_of(self, template: str, publisher: str, repo: str | None) -> str:
        """``template`` filled in: ``{repo}`` is the publisher's name in the single form."""
        return template.replace("{publisher}", publisher).replace("{repo}", repo or publisher)


def broker_url(value: Any) -> str:
    """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``, nothing else."""
    text = string(value)
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as err:
        raise ValueError(f"{text!r} is not a URL: {err}") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{text!r}: use mqtts://HOST[:PORT] (or mqtt:// on a trusted network)")
    if parts.username or parts.password:
        raise ValueError(f"{text!r}: no credentials in the URL (set username and password_file)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: the broker's address only; the topic is topic")
    return text


def topic_template(value: Any) -> str:
    """An MQTT topic to publish to: no wildcards, no empty levels at the ends."""
    text = string(value)
    if not text or "+" in text or "#" in text or "\0" in text:
        raise ValueError(f"{text!r}: a topic to publish to, without the wildcards + and #")
    if text.startswith("/") or text.endswith("/"):
        raise ValueError(f"{text!r}: no leading or trailing '/'")
    unknown = text
    for field in _FIELDS:
        unknown = unknown.replace(field, "")
    if "{" in unknown or "}" in unknown:
        raise ValueError(f"{text!r}: only {{publisher}} and {{repo}} may be filled in")
    return text


def parse_broker(t: Table) -> Any:
    """The ``mqtt`` table of section ``t``: ``None`` when absent, ``INVALID`` with problems."""
    if "mqtt" not in t.data:
        return None
    table = t.table("mqtt")
    if table is None:
        return INVALID
    values: dict[str, Any] = {
        "url": table.get("url", broker_url),
        "topic": table.get("topic", topic_template, DEFAULT_TOPIC),
        "username": table.get("username", string, None),
        "password_file": table.get("password_file", absolute_path, None),
        "ca_file": table.get("ca_file", absolute_path, None),
        "poke_topic": table.get("poke_topic", topic_template, None),
    }
    table.finish(known=tuple(values))
    if not valid(values["url"]) or any(value is INVALID for value in values.values()):
        return INVALID
    path = values["password_file"]
    if path is not None:
        try:
            values["password"] = read_password(path)
        except ValueError as err:
            table.problem("password_file", str(err))
            return INVALID
    return BrokerSettings(**values)
