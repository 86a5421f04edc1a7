"""A farm of mirrors in one process, for the fan-out and freshness benchmarks.

Listens on every port of ``--spec`` (a JSON file: ``{"port": "whsec_...", ...}``), verifies
each webhook's signature with that port's secret, answers 202 — or never answers, for the
ports listed in ``--hang`` — and appends ``port value unix_time`` to ``--out`` per webhook.
Each port also serves its copy of the marker at ``GET /CURRENT``, as a mirror's web server
would: the value of its last webhook (it "syncs" at once), or ``--serving`` before any;
``port unix_time`` is appended to ``--checks`` per such GET answered.

    python -m bench.receiver_farm --spec farm.json --out arrivals.txt [--hang 1234 ...]
        [--serving VALUE] [--checks checks.txt]
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


async def farm(
    spec: dict[int, signing.Secret],
    hang: set[int],
    out: Path,
    ready: Path,
    *,
    checks: Path | None = None,
    serving: str | None = None,
) -> None:
    sink = out.open("a", buffering=1)
    check_sink = checks.open("a", buffering=1) if checks is not None else None
    markers = dict.fromkeys(spec, serving) if serving is not None else {}

    def port_of(request: web.Request) -> int:
        return request.transport.get_extra_info("sockname")[1] if request.transport else 0

    async def handle(request: web.Request) -> web.Response:
        port = port_of(request)
        body = await request.read()
        try:
            signing.verify(spec[port], request.headers, body, now=time.time())
            value = message.decode(body).current
        except MirrorhookError:
            return web.json_response({"error": "bad signature"}, status=401)
        if port in hang:
            await asyncio.sleep(3600)
        markers[port] = value
        sink.write(f"{port} {value} {time.time():.6f}\n")
        return web.json_response({"status": "scheduled", "delay": 0}, status=202)

    async def marker(request: web.Request) -> web.Response:
        port = port_of(request)
        value = markers.get(port)
        if value is None:
            return web.Response(status=404, text="no marker yet\n")
        if check_sink is not None:
            check_sink.write(f"{port} {time.time():.6f}\n")
        return web.Response(text=value + "\n")

    app = web.Application()
    app.router.add_post("/v1/hook", handle)
    app.router.add_get("/CURRENT", marker)
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
    if check_sink is not None:
        check_sink.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--hang", type=int, nargs="*", default=[])
    parser.add_argument("--checks", type=Path)
    parser.add_argument("--serving")
    args = parser.parse_args()
    spec = {
        int(port): signing.Secret.parse(text)
        for port, text in json.loads(args.spec.read_text()).items()
    }
    asyncio.run(
        farm(spec, set(args.hang), args.out, args.ready, checks=args.checks, serving=args.serving)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
