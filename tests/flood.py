"""A flood of hostile and duplicate webhooks, run as its own process by test_flood.py.

    python -m tests.flood URL SECRET_FILE MARKER TOTAL

Sends TOTAL requests over 32 connections — bad signatures, stale timestamps, replays,
oversized bodies, non-JSON, slowly trickled bodies, and valid webhooks (distinct ids) —
while probing /healthz every 20 ms; prints one JSON line: statuses per kind, the slowest
/healthz answer, and the seconds it took. Bounded: TOTAL requests, 120 s at most.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from mirrorhook import message, signing

KINDS = ["bad_signature", "stale", "replay", "oversized", "not_json", "valid"]


def request(
    kind: str, secret: signing.Secret, marker: str, replayed: dict[str, str]
) -> tuple[bytes, dict[str, str]]:
    now = int(time.time())
    body = message.new_update("CURRENT", marker, "flood", now).encode()
    if kind == "bad_signature":
        headers = signing.signed_headers(
            signing.Secret.parse(signing.new_secret()), uuid.uuid4().hex, now, body
        )
    elif kind == "stale":
        headers = signing.signed_headers(secret, uuid.uuid4().hex, now - 3600, body)
    elif kind == "replay":
        headers = dict(replayed)
    elif kind == "oversized":
        body = b"x" * 200_000
        headers = signing.signed_headers(secret, uuid.uuid4().hex, now, body)
    elif kind == "not_json":
        body = b"\xff not json"
        headers = signing.signed_headers(secret, uuid.uuid4().hex, now, body)
    else:
        headers = signing.signed_headers(secret, uuid.uuid4().hex, now, body)
    return body, {**headers, "Content-Type": "application/json"}


async def flood(url: str, secret: signing.Secret, marker: str, total: int) -> dict[str, object]:
    body = message.new_update("CURRENT", marker, "flood", int(time.time())).encode()
    replayed = {
        **signing.signed_headers(secret, "replayed-id", int(time.time()), body),
        "Content-Type": "application/json",
    }
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind in [*KINDS, "slow"]}
    health: list[float] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def one(number: int) -> None:
            kind = KINDS[number % len(KINDS)]
            data, headers = request(kind, secret, marker, replayed)
            data_body = body if kind == "replay" else data
            try:
                async with session.post(f"{url}/v1/hook", data=data_body, headers=headers) as r:
                    await r.read()
                    statuses[kind][r.status] += 1
            except aiohttp.ClientError:
                statuses[kind][0] += 1  # the server closed the connection (413 + close)

        async def slow(number: int) -> None:
            async def trickle() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b" "
                    await asyncio.sleep(0.2)

            headers = {"Content-Type": "application/json", "webhook-id": f"slow{number}"}
            async with (
                aiohttp.ClientSession() as own,
                own.post(f"{url}/v1/hook", data=trickle(), headers=headers) as r,
            ):
                statuses["slow"][r.status] += 1

        connected = asyncio.Event()

        async def probe() -> None:
            async with aiohttp.ClientSession() as own:
                async with own.get(f"{url}/healthz") as r:  # connect before the flood
                    assert r.status == 200
                connected.set()
                while not done.is_set():
                    started = time.perf_counter()
                    async with own.get(f"{url}/healthz") as r:
                        assert r.status == 200
                    health.append(time.perf_counter() - started)
                    await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        await connected.wait()
        started = time.perf_counter()
        numbers = iter(range(total))

        async def worker() -> None:
            # 32 workers, one request each at a time: the load is bounded and this
            # process never starts 10,000 coroutines at once (which would stall the probe).
            for number in numbers:
                await one(number)

        async with asyncio.timeout(120):
            await asyncio.gather(*(slow(n) for n in range(10)), *(worker() for _ in range(32)))
        elapsed = time.perf_counter() - started
        done.set()
        await prober
    return {
        "statuses": {kind: dict(counts) for kind, counts in statuses.items()},
        "healthz_max_ms": 1000 * max(health),
        "healthz_p99_ms": 1000 * sorted(health)[int(len(health) * 0.99)],
        "healthz_probes": len(health),
        "seconds": elapsed,
    }


def main() -> int:
    url, secret_file, marker, total = sys.argv[1:5]
    secret = signing.Secret.parse(Path(secret_file).read_text())
    sys.stdout.write(json.dumps(asyncio.run(flood(url, secret, marker, int(total)))) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
