"""A farm of webhook receivers in one process, for the fan-out benchmark.

Listens on every port of ``--spec`` (a JSON file: ``{"port": "whsec_...", ...}``), verifies
each webhook's signature with that port's secret, answers 202 — or never answers, for the
ports listed in ``--hang`` — and appends ``port value unix_time`` to ``--out`` per webhook.

    python -m bench.receiver_farm --spec farm.json --out arrivals.txt [--hang 1234 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

from aiohttp import web

from mirrorhook import message, signing
from mirrorhook.errors import MirrorhookError


async def farm(spec: dict[int, signing.Secret], hang: set[int], out: Path, ready: Path) -> None:
    sink = out.open("a", buffering=1)

    async def handle(request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        body = await request.read()
        try:
            signing.verify(spec[port], request.headers, body, now=time.time())
            value = message.decode(body).current
        except MirrorhookError:
            return web.json_response({"error": "bad signature"}, status=401)
        if port in hang:
            await asyncio.sleep(3600)
        sink.write(f"{port} {value} {time.time():.6f}\n")
        return web.json_response({"status": "scheduled", "delay": 0}, status=202)

    app = web.Application()
    app.router.add_post("/v1/hook", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    for port in spec:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready.write_text("ready\n")
    await stop.wait()
    await runner.cleanup()
    sink.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--hang", type=int, nargs="*", default=[])
    args = parser.parse_args()
    spec = {
        int(port): signing.Secret.parse(text)
        for port, text in json.loads(args.spec.read_text()).items()
    }
    asyncio.run(farm(spec, set(args.hang), args.out, args.ready))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
