"""Fetching a document the publisher signs over its body (docs/design.md#served-by-the-publisher):
a change or a manifest, verified with the upstream's public keys before anything of it is read.

One policy for both: a 200 counts, a 404 means "not kept here" (``None``), anything else (a
redirect is not followed) is a ``FetchError``; the body is read up to ``limit`` bytes, and
its Standard Webhooks headers must verify ``v1a`` within the webhooks' window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from mirrorhook import signing
from mirrorhook.errors import MirrorhookError, SignatureError
from mirrorhook.keys import PublicKey

TIMEOUT = 30.0
"""Seconds a request may take."""


class FetchError(MirrorhookError):
    """The publisher's answer cannot be used (a reason in a few words)."""


async def fetch_signed(
    url: str,
    params: Mapping[str, str],
    keys: Sequence[PublicKey],
    *,
    limit: int,
    timeout: float = TIMEOUT,
) -> bytes | None:
    """The verified body at ``url``; ``None`` for a 404."""
    import aiohttp  # noqa: PLC0415 - only these requests need it (one-shot commands too)

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, params=dict(params), allow_redirects=False) as answer,
        ):
            if answer.status == 404:
                return None
            if answer.status != 200:
                raise FetchError(f"the publisher answered HTTP {answer.status}")
            if (answer.content_length or 0) > limit:
                raise FetchError(f"the answer is longer than {limit} bytes")
            body = bytearray()
            async for chunk in answer.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise FetchError(f"the answer is longer than {limit} bytes")
            headers = {name.lower(): value for name, value in answer.headers.items()}
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
        raise FetchError(f"cannot fetch it: {type(err).__name__}: {err}"[:200]) from None
    try:
        signing.verify(keys, headers, bytes(body), now=time.time())
    except SignatureError as err:
        raise FetchError(f"its signature does not verify: {err}") from None
    return bytes(body)
