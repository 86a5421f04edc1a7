"""Standard Webhooks v1 signatures: secrets, signing and verification, in one place.

The signature is ``base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))`` sent as
``webhook-signature: v1,<base64>`` (a space-separated list, any one may match). We implement
it here rather than wrapping the ``standardwebhooks`` package because that package decodes
the body as text, accepts fractional timestamps, reads the wall clock itself and raises
``ValueError``/``binascii.Error`` on malformed headers; the tests check that both
implementations accept each other's signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from mirrorhook.errors import SignatureError, TimestampError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of the format, not a secret
TOLERANCE = 300
"""Seconds a webhook's timestamp may differ from this host's clock (the replay window)."""

MAX_ID_LENGTH = 256
_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_LENGTH}}}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_MIN_KEY_BYTES = 16


class Secret:
    """A webhook signing key; it never shows its value in ``repr``, ``str`` or logs."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise ValueError(f"secret is too short: at least {_MIN_KEY_BYTES} bytes of key needed")
        self._key = key

    @classmethod
    def parse(cls, text: str) -> Secret:
        """Parse ``whsec_<base64>``; raise ``ValueError`` naming what is wrong (not the value)."""
        text = text.strip()
        if not text.startswith(SECRET_PREFIX):
            raise ValueError(f"secret must start with {SECRET_PREFIX!r}")
        try:
            key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError(f"secret is not valid base64 after {SECRET_PREFIX!r}") from None
        return cls(key)

    @property
    def key(self) -> bytes:
        """The raw HMAC key."""
        return self._key

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(Secret)


def new_secret() -> str:
    """Return a fresh secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: Secret, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value for one message."""
    return "v1," + base64.b64encode(_digest(secret, msg_id, timestamp, body)).decode("ascii")


def signed_headers(secret: Secret, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


@dataclass(frozen=True, slots=True)
class Verified:
    """The authenticated facts of a webhook: its id and its timestamp."""

    msg_id: str
    timestamp: int


def verify(
    secret: Secret,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = TOLERANCE,
) -> Verified:
    """Check a webhook's headers and body against ``secret`` at time ``now``.

    Raises ``SignatureError`` (``TimestampError`` for a clock outside the window) for every
    missing, malformed or non-matching header; never another exception.
    """
    msg_id = headers.get("webhook-id", "")
    raw_timestamp = headers.get("webhook-timestamp", "")
    raw_signatures = headers.get("webhook-signature", "")
    if not (msg_id and raw_timestamp and raw_signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not _ID_RE.fullmatch(msg_id):
        raise SignatureError("malformed webhook-id header")
    if not _TIMESTAMP_RE.fullmatch(raw_timestamp):
        raise SignatureError("malformed webhook-timestamp header: not integer Unix seconds")
    timestamp = int(raw_timestamp)
    # Compared with the exact time, not a truncated one: the replay cache forgets an id
    # at timestamp + tolerance, and must never forget one this check would still accept.
    if abs(timestamp - now) > tolerance:
        raise TimestampError(round(timestamp - now), tolerance)

    expected = _digest(secret, msg_id, timestamp, body)
    for candidate in raw_signatures.split():
        version, sep, encoded = candidate.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            continue
        if hmac.compare_digest(expected, given):
            return Verified(msg_id, timestamp)
    raise SignatureError("no valid v1 signature (wrong secret, or the body was altered)")


def _digest(secret: Secret, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = msg_id.encode("utf-8") + b"." + str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.key, signed, hashlib.sha256).digest()
