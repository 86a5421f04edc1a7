"""Load generator for bench.capacity: signed webhooks over keep-alive connections.

Sends ``--requests`` validly signed webhooks (distinct ids, signed beforehand so that the
generator's own cost stays out of the way) over ``--connections`` keep-alive connections,
while probing ``/healthz`` every 10 ms on a separate connection; prints one JSON line.

    python -m bench.load_generator --url http://127.0.0.1:PORT --secret-file F --marker 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp

from mirrorhook import message, signing
from mirrorhook.keys import PRIVATE_PREFIX, SigningKey


async def generate(args: argparse.Namespace) -> dict[str, object]:
    text = Path(args.secret_file).read_text()
    secret: signing.Signer = (
        SigningKey.parse(text) if text.startswith(PRIVATE_PREFIX) else signing.Secret.parse(text)
    )
    now = int(time.time())
    body = message.new_update("CURRENT", args.marker, "bench", now).encode()
    requests = []
    for _ in range(args.requests):
        headers = signing.signed_headers(secret, uuid.uuid4().hex, now, body)
        headers["Content-Type"] = "application/json"
        requests.append(headers)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    health: list[float] = []
    done = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(share: list[dict[str, str]]) -> None:
            for headers in share:
                started = time.perf_counter()
                async with session.post(f"{args.url}/v1/hook", data=body, headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                latencies.append(time.perf_counter() - started)

        async def prober() -> None:
            async with aiohttp.ClientSession() as probe_session:
                while not done.is_set():
                    started = time.perf_counter()
                    async with probe_session.get(f"{args.url}/healthz") as r:
                        await r.read()
                    health.append(time.perf_counter() - started)
                    await asyncio.sleep(0.01)

        probe = asyncio.create_task(prober())
        started = time.perf_counter()
        await asyncio.gather(
            *(worker(requests[i :: args.connections]) for i in range(args.connections))
        )
        elapsed = time.perf_counter() - started
        done.set()
        await probe
    latencies.sort()
    health.sort()
    return {
        "requests": args.requests,
        "seconds": elapsed,
        "per_second": args.requests / elapsed,
        "statuses": statuses,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "healthz_p99_ms": 1000 * health[int(len(health) * 0.99)] if health else None,
        "healthz_probes": len(health),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--secret-file", required=True, help="a whsec_ secret (v1) or a whsk_ private key (v1a)"
    )
    parser.add_argument("--marker", required=True)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    print(json.dumps(asyncio.run(generate(parser.parse_args()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
