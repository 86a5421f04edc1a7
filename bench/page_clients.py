"""Anonymous clients for bench.page_load: each fetches one URL in a loop, for a bounded time.

``--clients`` clients, each on its own keep-alive connection, GET ``--url`` one request after
another for ``--seconds``, reading each answer whole, with ``--accept-encoding`` (by
default gzip, as browsers and aiohttp send it); prints one JSON line: answers by status,
bytes read, and the answers' latencies.

    python -m bench.page_clients --url http://127.0.0.1:PORT/ [--clients 20] [--seconds 30]
        [--accept-encoding identity]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def fetch(url: str, clients: int, seconds: float, encoding: str) -> dict[str, object]:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    read = 0
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=60)

    async def client() -> None:
        nonlocal read
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.get(url, headers={"Accept-Encoding": encoding}) as answer:
                    read += len(await answer.read())
                    statuses[answer.status] = statuses.get(answer.status, 0) + 1
                latencies.append(time.perf_counter() - started)

    async with asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(client())
    latencies.sort()
    return {
        "answers": len(latencies),
        "statuses": statuses,
        "bytes": read,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--accept-encoding", default="gzip, deflate")
    args = parser.parse_args()
    answers = fetch(args.url, args.clients, args.seconds, args.accept_encoding)
    print(json.dumps(asyncio.run(answers)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
