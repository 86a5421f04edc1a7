"""Slow clients: idle and slow-header connections against a real receiver.

A real ``mirrorhook serve`` receiver (pinned to CPU 0); this process (CPU 1) opens
``--idle`` connections that never send a byte and ``--slow`` connections that trickle
8 KB header lines (about 1 MB of unfinished headers each, if the server lets them), and
with ``--reopen`` (the default) opens a new one for each the server closes, for
``--seconds``. Meanwhile a probe process sends a validly signed webhook and a
``GET /healthz`` every half second, each on a new connection, and this one samples the
server's RSS and ESTABLISHED sockets. Reports RSS before / peak / after (the clients gone
for a few seconds), the connections the server held, the probes' latencies, and how often
the kernel dropped a SYN because the accept queue was full. Bounded: ``--seconds`` of
attack, ``MAX_OPENED`` connections in all, 127.0.0.1 only.

    .venv/bin/python -m bench.slow_clients [--idle 1000] [--slow 200] [--seconds 15]
        [--no-reopen]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.capacity import pinned, rss_mb, synced_receiver
from bench.stats import save
from mirrorhook import message, signing
from tests.helpers import wait_for_port

MAX_OPENED = 200_000
"""Attack connections opened in all, reopened ones included."""
LINE = 8000
"""Bytes per trickled header line: just under aiohttp's default field limit (8190)."""
LINES = 125
"""Lines per slow connection: about 1 MB of headers, under aiohttp's 128-field limit."""
PACE = 0.05
"""Seconds between two lines of one slow connection."""
PROBE_EVERY = 0.5
OPENING = 2.0
"""Seconds the attack runs before the probes start."""
SERVE = [sys.executable, "-m", "mirrorhook", "serve"]
SETTLE = 5.0
"""Seconds between the clients leaving and the "after" RSS."""


@dataclass
class Attack:
    """The attacking clients' counters."""

    port: int
    until: float
    reopen: bool
    opened: int = 0
    closed_by_server: int = 0
    connect_failures: int = 0
    header_bytes_sent: int = 0
    open_at_end: int = 0
    """Connections the client still saw open when the attack ended: held by the server, or
    never known to it (a handshake the kernel completed by SYN cookie while the accept
    queue was full, and then dropped)."""

    def going(self) -> bool:
        return time.monotonic() < self.until and self.opened < MAX_OPENED

    async def hold(self) -> None:
        """Once the server closed this client's connection: open another, or wait."""
        if not self.reopen:
            await asyncio.sleep(max(0.0, self.until - time.monotonic()))

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            async with asyncio.timeout(5):
                streams = await asyncio.open_connection("127.0.0.1", self.port)
        except (OSError, TimeoutError):
            self.connect_failures += 1
            await asyncio.sleep(0.1)
            return None
        self.opened += 1
        return streams

    async def idle(self) -> None:
        """Connect, send nothing; reconnect when the server hangs up."""
        while self.going():
            if (streams := await self.connect()) is None:
                continue
            reader, writer = streams
            await self.until_closed(reader, writer)

    async def until_closed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Wait for the server to close the connection (or the attack to end), count which,
        and give the connection's slot back."""
        try:
            async with asyncio.timeout(max(0.0, self.until - time.monotonic())):
                await reader.read(1)  # b"" when the server closes
            self.closed_by_server += 1
        except TimeoutError:
            self.open_at_end += 1
        except ConnectionError:
            self.closed_by_server += 1
        finally:
            writer.close()
        await self.hold()

    async def slow(self, number: int) -> None:
        """Trickle header lines that never end; reconnect when the server hangs up."""
        while self.going():
            if (streams := await self.connect()) is None:
                continue
            reader, writer = streams
            try:
                writer.write(b"POST /v1/hook HTTP/1.1\r\nHost: mirror\r\n")
                for line in range(LINES):
                    if reader.at_eof() or not self.going():
                        break
                    filler = f"X-Fill-{number}-{line}: ".encode().ljust(LINE - 2, b"x")
                    writer.write(filler + b"\r\n")
                    await writer.drain()
                    self.header_bytes_sent += LINE
                    await asyncio.sleep(PACE)
            except ConnectionError:
                pass  # closed by the server mid-trickle: counted below
            await self.until_closed(reader, writer)


@dataclass
class Probes:
    """Valid requests sent during the attack: statuses (0: failed) and seconds each."""

    webhook: list[tuple[int, float]] = field(default_factory=list)
    healthz: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def run(self, url: str, secret: signing.Secret, seconds: float) -> None:
        """A signed webhook and a /healthz every PROBE_EVERY s, each on a new connection."""
        until = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while time.monotonic() < until:
                now = int(time.time())
                body = message.new_update("CURRENT", "2", "bench", now).encode()
                headers = signing.signed_headers(secret, uuid.uuid4().hex, now, body)
                headers["Content-Type"] = "application/json"
                hook = await self.timed(session, "POST", f"{url}/v1/hook", body, headers)
                self.webhook.append(hook)
                self.healthz.append(await self.timed(session, "GET", f"{url}/healthz"))
                await asyncio.sleep(PROBE_EVERY)

    async def timed(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, float]:
        """Send one request; return its status (0 when it failed) and the seconds it took."""
        started = time.perf_counter()
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            self.errors.append(f"{method} {url}: {err!r}")
            status = 0
        return status, time.perf_counter() - started


async def probe_from_another_process(url: str, secret_file: Path, seconds: float) -> Probes:
    """Run the probes in a process of their own: in this one, the attack's thousands of
    tasks would delay the probes' own requests, which the server could then shed."""
    process = await asyncio.create_subprocess_exec(
        *pinned(1), sys.executable, "-m", "bench.slow_clients",
        "--probe", url, "--secret-file", str(secret_file), "--seconds", str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the probe process exited with {process.returncode}")
    return Probes(**json.loads(output))


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listener's accept queue was full
    (system-wide): each such client retries its SYN after 1 s."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names[0] == "TcpExt:":
            return int(values[names.index("ListenOverflows")])
    return 0


def established(pid: int) -> int:
    """ESTABLISHED TCP sockets held by process ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            count += fields[3] == "01" and fields[9] in inodes
    return count


async def attack(
    args: argparse.Namespace, port: int, pid: int, secret_file: Path
) -> dict[str, Any]:
    """Open the attack's connections, probe during it, sample the server; return it all."""
    until = time.monotonic() + args.seconds
    clients = Attack(port, until, reopen=args.reopen)
    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        while time.monotonic() < until:
            samples.append((rss_mb(pid), established(pid)))
            await asyncio.sleep(0.25)

    async with asyncio.TaskGroup() as group:
        group.create_task(sample())
        for _ in range(args.idle):
            group.create_task(clients.idle())
        for number in range(args.slow):
            group.create_task(clients.slow(number))
        await asyncio.sleep(OPENING)
        probing = group.create_task(
            probe_from_another_process(
                f"http://127.0.0.1:{port}", secret_file, args.seconds - OPENING - 1
            )
        )
    attack = asdict(clients)
    del attack["port"], attack["until"]
    return {
        "attack": attack,
        "probes": asdict(probing.result()),
        "rss_peak_mb": max(rss for rss, _ in samples),
        "established_peak": max(count for _, count in samples),
        "established_median": statistics.median(count for _, count in samples),
    }


def summary(results: list[tuple[int, float]]) -> dict[str, object]:
    seconds = sorted(latency for _, latency in results)
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "n": len(results),
        "statuses": statuses,
        "median_ms": 1000 * statistics.median(seconds),
        "max_ms": 1000 * seconds[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--reopen",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="open a new connection for each one the server closes (default: yes)",
    )
    parser.add_argument(
        "--open-files",
        type=int,
        metavar="N",
        help="run the server with this open-files limit (soft and hard), e.g. 1024",
    )
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the probe process
    parser.add_argument("--secret-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probes = Probes()
        secret = signing.Secret.parse(args.secret_file.read_text())
        asyncio.run(probes.run(args.probe, secret, args.seconds))
        print(json.dumps(asdict(probes)))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.idle + args.slow + 256
    assert hard >= needed, f"the open-files hard limit ({hard}) is below {needed}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})  # the server has CPU 0 to itself
    document = run(args)
    report(args, document)
    name = "slow_clients" + ("" if args.reopen else "_held")
    name += f"_{args.open_files}_files" if args.open_files else ""
    print(f"wrote {save(name, document)}")
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a receiver, attack it, and return the measurements."""
    with synced_receiver() as (tmp, config, port, _secret):
        limited = ["prlimit", f"--nofile={args.open_files}"] if args.open_files else []
        with (tmp / "serve.log").open("w") as log:
            server = subprocess.Popen([*limited, *pinned(0), *SERVE, "-c", str(config)], stderr=log)
        try:
            wait_for_port(port)
            time.sleep(1)
            rss_before = rss_mb(server.pid)
            overflows = listen_overflows()
            result = asyncio.run(attack(args, port, server.pid, tmp / "receiver.secret"))
            overflows = listen_overflows() - overflows
            time.sleep(SETTLE)
            rss_after = rss_mb(server.pid)
            established_after = established(server.pid)
        finally:
            server.terminate()
            server.wait(30)
        log_text = (tmp / "serve.log").read_text()
    probes = result["probes"]
    return {
        "idle": args.idle,
        "slow": args.slow,
        "seconds": args.seconds,
        "reopen": args.reopen,
        "server_open_files": args.open_files,
        "rss_mb": {"before": rss_before, "peak": result["rss_peak_mb"], "after": rss_after},
        "established": {
            "peak": result["established_peak"],
            "median": result["established_median"],
            "after": established_after,
        },
        "webhook": summary(probes["webhook"]),
        "healthz": summary(probes["healthz"]),
        "probe_errors": probes["errors"][:10],
        "attack": result["attack"],
        "listen_overflows": overflows,
        "server_log": {
            "bytes": len(log_text),
            "warnings": log_text.count(" WARNING "),
            "errors": log_text.count(" ERROR "),
        },
    }


def report(args: argparse.Namespace, document: dict[str, Any]) -> None:
    rss, held, attack = document["rss_mb"], document["established"], document["attack"]
    print(
        f"slow clients: {args.idle} idle + {args.slow} slow-header connections"
        f"{' (reopened when closed)' if args.reopen else ''} for {args.seconds:g} s"
        + (f", server's open-files limit {args.open_files}" if args.open_files else "")
    )
    print(
        f"  RSS              {rss['before']:6.1f} MB before, {rss['peak']:.1f} MB peak, "
        f"{rss['after']:.1f} MB {SETTLE:g} s after"
    )
    print(
        f"  held by server   {held['peak']:6d} peak, {held['median']:.0f} median ESTABLISHED, "
        f"{held['after']} after"
    )
    for name in ("webhook", "healthz"):
        row = document[name]
        print(
            f"  {name:<16} {row['median_ms']:6.1f} ms median, {row['max_ms']:.1f} ms max "
            f"over {row['n']} {row['statuses']}"
        )
    print(
        f"  attack           {attack['opened']} opened, {attack['closed_by_server']} closed "
        f"by the server, {attack['open_at_end']} open at the end, "
        f"{attack['connect_failures']} failed to connect, "
        f"{attack['header_bytes_sent'] / 1e6:.0f} MB of headers sent"
    )
    print(
        f"  accept queue     {document['listen_overflows']} SYNs dropped while it was full "
        "(a client retries after 1 s)"
    )
    log = document["server_log"]
    print(
        f"  server log       {log['bytes']} bytes, {log['warnings']} warnings, "
        f"{log['errors']} errors"
    )
    for error in document["probe_errors"]:
        print(f"  probe error      {error}")


if __name__ == "__main__":
    raise SystemExit(main())
