"""Standard Webhooks signatures, ``v1`` (HMAC) and ``v1a`` (Ed25519): signing and
verification in one place.

Both sign ``f"{id}.{timestamp}.{body}"``: ``v1`` is ``base64(HMAC-SHA256(secret, ...))``
with a shared secret (``whsec_``), ``v1a`` is ``base64(Ed25519 signature)`` with the
upstream's private key, verified with its public key (``keys.py``). ``webhook-signature`` is
a space-separated list (``v1,<base64> v1a,<base64>``); a webhook passes when any signature
verifies with any key the receiver holds. We implement it here rather than wrapping the
``standardwebhooks`` package because that package decodes the body as text, accepts
fractional timestamps, reads the wall clock itself, raises ``ValueError``/``binascii.Error``
on malformed headers and has no ``v1a``; the tests check that our signatures interoperate
with it (``v1``), with PyNaCl and with the reference Go library's test vector (``v1a``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mirrorhook.errors import SignatureError, TimestampError
from mirrorhook.keys import PublicKey, SigningKey, decode_prefixed

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of the format, not a secret
TOLERANCE = 300
"""Seconds a webhook's timestamp may differ from this host's clock (the replay window)."""

MAX_ID_LENGTH = 256
_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_ID_LENGTH}}}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_MIN_KEY_BYTES = 16
MAX_SIGNATURES = 8
"""Entries of ``webhook-signature`` looked at: a sender rotating keys sends two or three."""
MAX_V1A_SIGNATURES = 2
"""``v1a`` entries checked per webhook. An Ed25519 check costs some 90 µs, an HMAC 2 µs: a
header packed with forged ``v1a`` entries must not cost the receiver more than a genuine
webhook does (docs/design.md#signatures)."""


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
        return cls(decode_prefixed(text, SECRET_PREFIX, "secret"))

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


Signer = Secret | SigningKey
"""A key that signs: a shared secret (``v1``) or the upstream's private key (``v1a``)."""
Verifier = Secret | PublicKey
"""A key that verifies: a shared secret (``v1``) or the upstream's public key (``v1a``)."""


def sign(signers: Signer | Sequence[Signer], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value: one signature per key, space-separated."""
    signed = _signed_content(msg_id, timestamp, body)
    parts = []
    for signer in _listed(signers):
        if isinstance(signer, Secret):
            parts.append("v1," + _b64(hmac.new(signer.key, signed, hashlib.sha256).digest()))
        else:
            parts.append("v1a," + _b64(signer.sign(signed)))
    return " ".join(parts)


def signed_headers(
    signers: Signer | Sequence[Signer], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(signers, msg_id, timestamp, body),
    }


@dataclass(frozen=True, slots=True)
class Verified:
    """The authenticated facts of a webhook: its id and its timestamp."""

    msg_id: str
    timestamp: int
    scheme: str = "v1"
    """Which signature verified it: ``v1`` (a shared secret) or ``v1a`` (a public key)."""


def verify(
    keys: Verifier | Sequence[Verifier],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int | None = TOLERANCE,
) -> Verified:
    """Check a webhook's headers and body against ``keys`` at time ``now``: it passes when
    any of its signatures verifies with any of the keys.

    Raises ``SignatureError`` (``TimestampError`` for a clock outside the window) for every
    missing, malformed or non-matching header; never another exception. ``tolerance=None``
    accepts any timestamp (a subscription's last value, see ``intake.py``).
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
    if tolerance is not None and abs(timestamp - now) > tolerance:
        raise TimestampError(round(timestamp - now), tolerance)

    listed = _listed(keys)
    secrets_ = [key for key in listed if isinstance(key, Secret)]
    public_keys = [key for key in listed if isinstance(key, PublicKey)]
    signed = _signed_content(msg_id, timestamp, body)
    expected = [hmac.new(secret.key, signed, hashlib.sha256).digest() for secret in secrets_]
    v1a_tried = 0
    for candidate in raw_signatures.split()[:MAX_SIGNATURES]:
        version, sep, encoded = candidate.partition(",")
        if not sep or version not in ("v1", "v1a"):
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            continue
        if version == "v1" and any(hmac.compare_digest(digest, given) for digest in expected):
            return Verified(msg_id, timestamp, "v1")
        if version == "v1a" and public_keys and v1a_tried < MAX_V1A_SIGNATURES:
            v1a_tried += 1
            if any(key.verifies(given, signed) for key in public_keys):
                return Verified(msg_id, timestamp, "v1a")
    schemes = " or ".join(name for name, held in (("v1", secrets_), ("v1a", public_keys)) if held)
    raise SignatureError(
        f"no valid {schemes} signature (wrong secret or key, or the body was altered)"
    )


def _signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return msg_id.encode("utf-8") + b"." + str(timestamp).encode("ascii") + b"." + body


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _listed(keys: Secret | SigningKey | PublicKey | Sequence[Any]) -> Sequence[Any]:
    return (keys,) if isinstance(keys, Secret | SigningKey | PublicKey) else keys
