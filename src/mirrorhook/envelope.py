"""An announcement as one JSON object, for the transports that carry no HTTP headers (the
event stream, MQTT): ``{"id", "timestamp", "signature", "body"}``, the webhook's three
Standard Webhooks headers and its body as sent (docs/design.md#subscriptions).

A receiver turns it back into headers and body and verifies it with the webhook's code;
nothing here checks a signature.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from mirrorhook.errors import PayloadError


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed announcement: what a webhook would have carried, in one object."""

    msg_id: str
    timestamp: int
    signature: str
    body: bytes

    def encode(self) -> bytes:
        """The envelope's JSON (one line: it goes into an event's ``data:`` as it is)."""
        document = {
            "id": self.msg_id,
            "timestamp": self.timestamp,
            "signature": self.signature,
            "body": self.body.decode("utf-8"),
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def headers(self) -> Mapping[str, str]:
        """The Standard Webhooks headers, as a webhook would have carried them."""
        return {
            "webhook-id": self.msg_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }


def decode(raw: bytes | str, max_body: int) -> Envelope:
    """Parse an envelope; raise ``PayloadError`` naming what is wrong (never another error).

    ``max_body`` bounds the body, as a webhook's is bounded.
    """
    if len(raw) > 2 * max_body + 4096:  # the body escaped in JSON, and the headers
        raise PayloadError(f"announcement larger than {max_body} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise PayloadError(f"announcement is not JSON: {err}") from None
    if not isinstance(document, dict):
        raise PayloadError("announcement is not a JSON object")
    msg_id, timestamp = document.get("id"), document.get("timestamp")
    signature, body = document.get("signature"), document.get("body")
    if not (isinstance(msg_id, str) and isinstance(signature, str) and isinstance(body, str)):
        raise PayloadError("announcement needs string id, signature and body")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0:
        raise PayloadError("announcement needs an integer timestamp")
    try:
        encoded = body.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError("announcement body is not UTF-8") from None
    if len(encoded) > max_body:
        raise PayloadError(f"announcement body larger than {max_body} bytes")
    return Envelope(msg_id, timestamp, signature, encoded)
