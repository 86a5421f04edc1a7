"""Shared test helpers: real rsync daemons, real configs, signed webhooks, tree comparison."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mirrorhook import message, reports, signing
from mirrorhook.config import Config, load_config
from mirrorhook.credentials import write_private_key
from mirrorhook.demo import same_tree
from mirrorhook.freshness import Freshness
from mirrorhook.keys import SigningKey
from mirrorhook.publisher_config import PublisherConfig, PublisherHost
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.record import DeliveryLog, Fields
from mirrorhook.report_refusals import Refused

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
"""What pytest-aiohttp's ``aiohttp_server`` is: a real server on a free port for an app."""
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
"""What ``aiohttp_client`` is: a real server for an app, and a client talking to it."""
MARKER = "CURRENT"
MIRRORHOOK = [sys.executable, "-m", "mirrorhook"]
"""How tests start the command line: the interpreter running the tests."""


def needs(*commands: str, package: str) -> pytest.MarkDecorator:
    """Skip a test on a developer's machine that lacks ``commands``, saying which Debian
    ``package`` brings them; never in CI (``CI`` set), where ``make test`` installs them:
    there a missing one makes the test fail instead of passing unseen."""
    absent = [command for command in commands if shutil.which(command) is None]
    return pytest.mark.skipif(
        bool(absent) and not os.environ.get("CI"),
        reason=f"{', '.join(absent)} missing: make test installs Debian's {package} with apt",
    )


def mirrorhook(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the command line; its exit status, stdout and stderr (text) are the caller's."""
    return subprocess.run(
        [*MIRRORHOOK, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Clock:
    """A clock the test moves: it reads ``now`` (seconds) until the test changes it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], object], what: str = "it", timeout: float = 30) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def until(condition: Callable[[], object], timeout: float = 10, step: float = 0.01) -> None:
    """Poll ``condition`` on the event loop until it holds; fail (TimeoutError) after
    ``timeout`` seconds: the async twin of ``wait_until``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(step)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class RsyncDaemon:
    """A real ``rsync --daemon`` on 127.0.0.1 serving ``root`` as module ``up``."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    config: Path

    @property
    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.port}/up/"

    def stop(self) -> None:
        """Stop the daemon and every connection it is serving (its whole process group)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)


@contextlib.contextmanager
def rsync_daemon(
    folder: Path,
    root: Path,
    *,
    max_connections: int = 0,
    port: int | None = None,
    nodelay: bool = True,
) -> Iterator[RsyncDaemon]:
    """Run a real rsync daemon for the duration of the block (on ``port``, or a free one),
    with ``socket options = TCP_NODELAY`` as contrib/rsyncd.conf has it unless not
    ``nodelay`` (an upstream that does not set it, for the benchmarks)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = folder / f"rsyncd-{port}.conf"
    conf.write_text(
        f"pid file = {folder}/rsyncd-{port}.pid\n"
        f"lock file = {folder}/rsyncd-{port}.lock\n"
        "use chroot = no\n"
        + ("socket options = TCP_NODELAY\n" if nodelay else "")
        + f"uid = {os.getuid()}\n"
        f"gid = {os.getgid()}\n"
        f"[up]\n"
        f"path = {root}\n"
        "read only = yes\n"
        f"max connections = {max_connections}\n"
    )
    process = subprocess.Popen(
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    daemon = RsyncDaemon(root=root, port=port, process=process, config=conf)
    try:
        wait_for_port(port)
        yield daemon
    finally:
        daemon.stop()


def publish(root: Path, value: str, files: dict[str, str] | None = None) -> None:
    """Write ``files`` into the upstream tree, then rewrite its marker atomically."""
    for name, content in (files or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    temp = root / f".{MARKER}.new"
    temp.write_text(value + "\n")
    temp.replace(root / MARKER)


def listed_urls(mirrorlist: str) -> list[str]:
    """The base URLs a ``/mirrorlist`` answer hands out, without its comment lines."""
    return [line for line in mirrorlist.splitlines() if not line.startswith("#")]


def marker_of(tree: Path) -> str | None:
    """The marker value of ``tree`` as the tests wrote it, ``None`` when there is none."""
    path = tree / MARKER
    return path.read_text().strip() if path.exists() else None


def make_upstream(root: Path, marker: str | None = "1", count: int = 20) -> Path:
    """Create an upstream tree of ``count`` files in a few folders, with its marker."""
    for index in range(count):
        path = root / f"dir{index % 4}" / f"file{index}.rpm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"package {index}\n" * (index % 50 + 1))  # bounded: trees of 100k files
    if marker is not None:
        publish(root, marker)
    return root


def write_secret(path: Path, text: str | None = None) -> str:
    """Write a secret file readable only by its owner; return the secret."""
    secret = text or signing.new_secret()
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def receiver_toml(tmp: Path, *, upstream: str, port: int | None = None, **overrides: Any) -> Path:
    """Write a ``[receiver]`` config into ``tmp`` and return its path (a key given as
    ``None`` is left out)."""
    secret_file = tmp / "receiver.secret"
    if not secret_file.exists():
        write_secret(secret_file)
    values: dict[str, Any] = {
        "listen": [f"127.0.0.1:{port or free_port()}"],
        "secret_file": str(secret_file),
        "upstream": upstream,
        "target": str(tmp / "mirror"),
        "state_dir": str(tmp / "state"),
        "backoff": 0,
        "poll_interval": 0,
        "retries": 3,
    }
    values.update(overrides)
    lines = ["[receiver]"] + [
        f"{key} = {_toml(value)}" for key, value in values.items() if value is not None
    ]
    path = tmp / "mirrorhook.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def receiver_config(tmp: Path, *, upstream: str, **overrides: Any) -> Config:
    """Write and load a ``[receiver]`` config."""
    return load_config(receiver_toml(tmp, upstream=upstream, **overrides))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def signed_webhook(
    secret: signing.Signer | None,
    current: str,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
    marker: str = MARKER,
) -> tuple[bytes, dict[str, str]]:
    """Return a validly signed webhook body and its headers (with the content type)."""
    assert secret is not None, "the receiver has no shared secret"
    now = int(time.time()) if timestamp is None else timestamp
    body = message.new_update(marker, current, "test-upstream", now).encode()
    headers = signing.signed_headers(secret, msg_id or str(uuid.uuid4()), now, body)
    headers["Content-Type"] = "application/json"
    return body, headers


def report_body(
    mirror: str, current: str, result: str = "synced", repo: str | None = None
) -> bytes:
    """A mirror's ``mirror.synced`` report, as a receiver posts it."""
    data = {"mirror": mirror, "repo": repo, "marker": "CURRENT", "current": current}
    document = {"type": "mirror.synced", "timestamp": "2026-11-25T12:00:00Z"}
    return json.dumps({**document, "data": {**data, "result": result, "error": None}}).encode()


def signed_report(secret: signing.Secret, body: bytes) -> dict[str, str]:
    """Headers that sign a report's ``body`` with ``secret`` now (with the content type)."""
    headers = signing.signed_headers(secret, f"msg_{time.time_ns()}", int(time.time()), body)
    return {**headers, "Content-Type": "application/json"}


@dataclass(frozen=True)
class ReportPoster:
    """Posts reports to a report desk's ``POST /v1/report`` on a real test server."""

    client: TestClient[web.Request, web.Application]

    @classmethod
    async def to(cls, desk: reports.ReportDesk, aiohttp_client: ClientFactory) -> ReportPoster:
        app = web.Application()
        reports.add_routes(app, desk)
        return cls(await aiohttp_client(app))

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        """Post one report; the status of the answer."""
        async with self.client.post(message.REPORT_PATH, data=body, headers=headers) as answer:
            return answer.status


def secret_of(config: ReceiverConfig) -> signing.Secret:
    """The secret a receiver shares with its upstream (the tests' receivers have one)."""
    assert config.secret is not None, "the receiver has no shared secret"
    return config.secret


def stub_rsync(folder: Path, script: str) -> Path:
    """Write an executable stand-in for rsync (a fake: real rsync cannot fail on demand)."""
    path = folder / "stub-rsync"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def real_rsync() -> str:
    """The rsync on PATH, for wrappers that run it after noting something."""
    found = shutil.which("rsync")
    assert found is not None, "rsync is not installed (make test installs it)"
    return found


def counting_rsync(folder: Path, log: Path, *, delay: float = 0.0) -> Path:
    """Write a wrapper that logs each invocation's arguments, then execs the real rsync:
    every transfer is real, and the test can count them. ``delay`` slows tree transfers
    (not marker reads) so a test can act while one runs."""
    path = folder / "counting-rsync"
    path.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        + (f'case "$*" in *--delay-updates*) sleep {delay};; esac\n' if delay else "")
        + f'exec {real_rsync()} "$@"\n'
    )
    path.chmod(0o755)
    return path


def tree_invocations(log: Path) -> list[str]:
    """Return the logged rsync invocations that transferred the tree (not the marker)."""
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if "--delay-updates" in line]


def writes_rsync(folder: Path, log: Path, name: str, *, delay: float = 0.0) -> Path:
    """Write a wrapper ``folder/NAME`` around the real rsync that logs when each tree
    transfer starts and ends, its pid and the folder it writes (marker reads pass through),
    slowed by ``delay`` seconds: from the log (``tree_writes``) a test sees whether two
    transfers ever wrote one tree at once. The sleep counts as writing: the wrapper holds
    whatever the sync handed rsync (the sync locks) from its start."""
    real = real_rsync()
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        "for destination; do :; done\n"
        'case "$*" in *--delay-updates*)\n'
        f'  echo "start $(date +%s.%N) $$ $destination" >> {log}\n'
        f"  sleep {delay}\n"
        f'  {real} "$@"; code=$?\n'
        f'  echo "end $(date +%s.%N) $$ $destination" >> {log}\n'
        "  exit $code;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    path.chmod(0o755)
    return path


@dataclass(frozen=True, slots=True)
class TreeWrite:
    """One tree transfer as ``writes_rsync`` logged it; ``end`` is infinite while it runs."""

    start: float
    end: float
    tree: Path


def tree_writes(log: Path, tree: Path) -> list[TreeWrite]:
    """The transfers into ``tree`` that ``writes_rsync`` logged, in start order."""
    started: dict[str, TreeWrite] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, stamp, pid, destination = line.split(" ", 3)
        if Path(destination) != tree:
            continue
        if kind == "start":
            started[pid] = TreeWrite(float(stamp), float("inf"), tree)
        else:
            started[pid] = TreeWrite(started[pid].start, float(stamp), tree)
    return sorted(started.values(), key=lambda write: write.start)


def at_once(writes: list[TreeWrite]) -> list[tuple[TreeWrite, TreeWrite]]:
    """The pairs of ``writes`` (in start order) of which the second began before the first
    ended."""
    return [
        (first, second)
        for index, first in enumerate(writes)
        for second in writes[index + 1 :]
        if second.start < first.end
    ]


def publisher_toml(
    tmp: Path,
    *,
    root: Path,
    mirrors: list[tuple[str, str]],
    extra: str = "",
    **overrides: Any,
) -> Path:
    """Write a ``[publisher]`` config for ``mirrors`` (name, url), each with its own secret
    file ``tmp/secrets/NAME.secret`` (reused when it exists); return the config's path."""
    secrets = tmp / "secrets"
    secrets.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "root": str(root),
        "state_dir": str(tmp / "publisher-state"),
        "name": "test-upstream",
        "rescan": 5,
        "timeout": 2,
    }
    values.update(overrides)
    lines = ["[publisher]"] + [f"{key} = {_toml(value)}" for key, value in values.items()]
    for name, url in mirrors:
        secret_file = secrets / f"{name}.secret"
        if not secret_file.exists():
            write_secret(secret_file)
        lines += [
            "",
            "[[publisher.mirrors]]",
            f"name = {_toml(name)}",
            f"url = {_toml(url)}",
            f"secret_file = {_toml(str(secret_file))}",
        ]
    path = tmp / "publisher.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def mirror_secret(tmp: Path, name: str) -> signing.Secret:
    """The secret ``publisher_toml`` wrote for mirror ``name``."""
    return signing.Secret.parse((tmp / "secrets" / f"{name}.secret").read_text())


def slow_rsync(folder: Path, pids: Path, *, bwlimit: int) -> Path:
    """A wrapper that records its pid (the rsync's, after exec) and runs the real rsync
    with ``--bwlimit``, so a test can act during a transfer and find its processes."""
    path = folder / "pid-rsync"
    path.write_text(f'#!/bin/sh\necho $$ >> {pids}\nexec rsync --bwlimit={bwlimit} "$@"\n')
    path.chmod(0o755)
    return path


class Processes:
    """``mirrorhook serve`` processes of one test, each logging to ``folder/NAME.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: list[subprocess.Popen[bytes]] = []

    def serve(self, config: Path, name: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as log:
            process = subprocess.Popen([*MIRRORHOOK, "serve", "-c", str(config)], stderr=log)
        self.running.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()


def stop_processes(processes: list[subprocess.Popen[Any]]) -> None:
    """TERM every process still running, wait, KILL those that do not exit."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def trees_equal(left: Path, right: Path) -> bool:
    """Return whether two trees hold the same names and the same file contents."""
    return same_tree(left, right)


def failing_once_rsync(
    folder: Path, calls: Path, *, code: int, message: str, tree_only: bool = False
) -> Path:
    """A wrapper that fails its first call with ``code`` and ``message`` on stderr, then
    execs the real rsync (a fake for that one call: real rsync cannot fail on demand).
    With ``tree_only``, only tree transfers count, not marker reads."""
    real = real_rsync()
    fail = (
        f"echo x >> {calls}\n"
        f'if [ "$(wc -l < {calls})" -eq 1 ]; then echo "{message}" >&2; exit {code}; fi\n'
    )
    if tree_only:
        fail = f'case "$*" in *--delay-updates*)\n{fail};;\nesac\n'
    return stub_rsync(folder, fail + f'exec {real} "$@"\n')


@contextlib.contextmanager
def fifo_released_after(path: Path, seconds: float) -> Iterator[threading.Event]:
    """Let readers stuck in ``open()`` of the FIFO ``path`` go, from ``seconds`` on.

    Unless the block has ended by then, a thread keeps opening the FIFO for writing (each
    time a reader waits), writing ``released`` and closing it, until the block ends: a read
    that blocks the event loop then makes its test fail (late, and with that value)
    instead of hanging the whole run. Yields an event that is set once a reader had to be
    released (a read that blocked).
    """
    done = threading.Event()
    released = threading.Event()

    def release() -> None:
        if done.wait(seconds):
            return
        while not done.wait(0.01):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader waits
                continue
            try:
                os.write(fd, b"released\n")
                released.set()
            finally:
                os.close(fd)

    thread = threading.Thread(target=release, name="fifo-releaser", daemon=True)
    thread.start()
    try:
        yield released
    finally:
        done.set()
        thread.join(10)


class StaticWeb:
    """A real HTTP server (``python -m http.server``) serving ``folder`` on 127.0.0.1: a
    mirror's web server, as users and the upstream's checks reach it. With a ``log``, its
    request log is kept there: ``fetched`` tells which files a client (dnf) took."""

    def __init__(self, folder: Path, log: Path | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._file = None if log is None else log.open("w")
        self._server = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", str(self.port), "-b", "127.0.0.1"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if self._file is None else self._file,
        )
        wait_for_port(self.port)

    def fetched(self) -> list[str]:
        """The paths GET asked for, in order (from the ``log``)."""
        assert self.log is not None, "this server keeps no request log"
        return re.findall(r'"GET (\S+) HTTP', self.log.read_text())

    def stop(self) -> None:
        if self._server.poll() is None:
            self._server.terminate()
            self._server.wait(10)
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> StaticWeb:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class LiveUpstream:
    """What a serving publisher gives the page and the mirror list: its trees, their
    freshness objects (the checkers' own) and their deliveries (the publishers' records)."""

    host: PublisherHost
    trees: dict[str | None, Freshness]
    records: dict[str | None, DeliveryLog] = field(default_factory=dict)
    schedules: dict[str | None, dict[str, float | None]] = field(default_factory=dict)
    refused: dict[str | None, Refused] = field(default_factory=dict)
    subscribed: dict[str | None, int] = field(default_factory=dict)

    @classmethod
    def of(cls, *trees: Freshness) -> LiveUpstream:
        configs = tuple(freshness.config for freshness in trees)
        host = PublisherHost(configs[0].state_dir, configs, name=configs[0].name)
        return cls(host, {freshness.config.repo: freshness for freshness in trees})

    def running(self) -> PublisherHost:
        return self.host

    def freshness(self, tree: PublisherConfig) -> Freshness:
        return self.trees[tree.repo]

    def deliveries(self, tree: PublisherConfig) -> Fields:
        record = self.records.get(tree.repo)
        return {} if record is None else record.known()

    def next_checks(self, tree: PublisherConfig) -> dict[str, float | None]:
        return dict(self.schedules.get(tree.repo, {}))

    def refused_reports(self) -> dict[str | None, Refused]:
        return dict(self.refused)

    def subscribers(self, tree: PublisherConfig) -> int | None:
        return self.subscribed.get(tree.repo)


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new Ed25519 key pair as ``mirrorhook keygen`` writes it: ``NAME.key`` (mode 600)
    and ``NAME.pub`` (the public key, readable by all); return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    write_private_key(private, key)
    public.write_text(f"{key.public()}\n")
    return private, public


def subscribing_receiver(
    folder: Path, upstream: str, public_key: Path, subscribe: list[str], **overrides: Any
) -> Path:
    """A single-form receiver in ``folder`` (its tree in ``folder/mirror``) that opens no
    port: its triggers are its subscriptions and its start-up check (polling is off, so
    nothing else can sync it)."""
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {"poll_interval": 0, "backoff": 0.2, "secret_file": None}
    values.update(overrides)
    path = receiver_toml(
        folder, upstream=upstream, public_key_file=str(public_key), subscribe=subscribe, **values
    )
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if not line.startswith("listen")) + "\n")
    return path


def announcements(config: Path) -> int:
    """How many verified announcements the mirror's first subscription brought (status).

    A test reads this, not the "trigger (...)" log line, to show that a publish came by
    the subscription: the last value on connect can queue a follow-up sync during the
    start-up one, which then covers the next trigger (logged at debug only)."""
    shown = json.loads(mirrorhook("status", "-c", config, "--json").stdout)
    count: int = shown["receiver"]["subscriptions"][0]["announcements"]
    return count
