"""Ed25519 keys for Standard Webhooks ``v1a`` signatures: the upstream's private signing key
(``whsk_`` + base64 of the 32-byte seed) and the public key mirrors verify with (``whpk_`` +
base64 of the 32-byte key), as the specification's reference libraries write them.

The arithmetic is ``cryptography``'s (OpenSSL's Ed25519); this module only parses, prints
and guards the keys. A private key never shows its value in ``repr``, ``str`` or logs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# cryptography is imported where a key is made: it costs some 20 ms of start-up, which a
# cron-run `mirrorhook sync` with a shared secret would pay for nothing.

PRIVATE_PREFIX = "whsk_"
PUBLIC_PREFIX = "whpk_"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_PUBLIC_KEYS = 4
"""Public keys one file may hold: the current one, and the next while the upstream rotates."""


def decode_prefixed(text: str, prefix: str, what: str) -> bytes:
    """The bytes of ``prefix`` + base64 text (a key file's line); ``ValueError`` naming the
    problem, never the value."""
    text = text.strip()
    if not text.startswith(prefix):
        raise ValueError(f"{what} must start with {prefix!r}")
    try:
        return base64.b64decode(text[len(prefix) :], validate=True)
    except binascii.Error:
        raise ValueError(f"{what} is not valid base64 after {prefix!r}") from None


class PublicKey:
    """An Ed25519 public key: verifies ``v1a`` signatures."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )

        try:
            self._key: Ed25519PublicKey = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ValueError(f"public key must hold {KEY_BYTES} bytes, not {len(raw)}") from None
        self.raw = raw

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse ``whpk_<base64>``; raise ``ValueError`` saying what is wrong."""
        return cls(decode_prefixed(text, PUBLIC_PREFIX, "public key"))

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``data``."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - loaded already

        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __str__(self) -> str:
        return PUBLIC_PREFIX + base64.b64encode(self.raw).decode("ascii")

    def __repr__(self) -> str:
        return f"PublicKey({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)


def parse_public_keys(text: str) -> tuple[PublicKey, ...]:
    """The keys of a public key file: one ``whpk_`` line each (two while the upstream moves
    to a new key), blank lines and ``#`` comments aside; ``ValueError`` saying what is wrong."""
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if line and not line.startswith("#")]
    if not found:
        raise ValueError(f"holds no public key (a {PUBLIC_PREFIX}... line)")
    if len(found) > MAX_PUBLIC_KEYS:
        raise ValueError(f"holds {len(found)} keys; at most {MAX_PUBLIC_KEYS}")
    keys = []
    for number, line in enumerate(found, 1):
        if line.startswith(PRIVATE_PREFIX):
            raise ValueError(
                "holds a private key: keep it on the upstream and put its public key here "
                "(mirrorhook keygen --public FILE prints it)"
            )
        try:
            keys.append(PublicKey.parse(line))
        except ValueError as err:
            raise ValueError(f"key {number}: {err}" if len(found) > 1 else str(err)) from None
    return tuple(keys)


class SigningKey:
    """An Ed25519 private key: signs ``v1a`` signatures. Never shows its value."""

    __slots__ = ("_key", "_seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != KEY_BYTES:
            raise ValueError(f"private key must hold {KEY_BYTES} bytes, not {len(seed)}")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        self._seed = seed
        self._key: Ed25519PrivateKey = Ed25519PrivateKey.from_private_bytes(seed)

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Parse ``whsk_<base64 of the seed>``; raise ``ValueError`` saying what is wrong."""
        return cls(decode_prefixed(text, PRIVATE_PREFIX, "private key"))

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key (from the operating system's generator)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public(self) -> PublicKey:
        """The public key that verifies this key's signatures."""
        return PublicKey(self._key.public_key().public_bytes_raw())

    def text(self) -> str:
        """The key as its file holds it: ``whsk_`` + base64 of the seed (for ``keygen``)."""
        return PRIVATE_PREFIX + base64.b64encode(self._seed).decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey(<private>, public {self.public()})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKey) and hmac.compare_digest(self._seed, other._seed)

    def __hash__(self) -> int:
        return hash(SigningKey)
