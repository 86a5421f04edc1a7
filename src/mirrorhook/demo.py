"""``mirrorhook demo``: a whole mirror network on loopback, three publishes, a timeline.

In a temporary folder: an upstream with two repositories (``ius`` and ``epel``) served
by a real ``rsync --daemon`` on 127.0.0.1, a publisher announcing both, and two mirrors,
each a real ``mirrorhook serve`` process with a real config written next to it:
``mirror-a`` carries both repositories in one daemon, ``mirror-b`` only ``ius``, and
``mirror-c`` (``ius``) opens no port: it subscribes to the publisher's event stream. Each
publish changes both trees and rewrites their markers atomically; the demo prints, per
mirror and repository, when the announcement arrived (webhook or event) and the sync
started and finished (milliseconds since the rename), then compares every mirror's tree
with the upstream's.
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mirrorhook.credentials import write_private_key
from mirrorhook.errors import DemoError
from mirrorhook.keys import SigningKey
from mirrorhook.message import HOOK_PATH
from mirrorhook.signing import new_secret

REPOS = ("ius", "epel")
MIRRORS = (("mirror-a", 0, REPOS), ("mirror-b", 3, ("ius",)), ("mirror-c", 0, ("ius",)))
"""The receivers: name, backoff (the second shows how mirrors spread their syncs), and the
repositories each carries (the first in one daemon, as a mirror host does)."""
SUBSCRIBER = "mirror-c"
"""The mirror with no port: it follows the event stream instead of taking webhooks."""
WAIT = 60.0
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_EVENTS = {
    "announced": re.compile(r"trigger \((?:webhook|events) from .*marker '(?P<v>[^']*)'\)"),
    "sync started": re.compile(r"sync started \((?:webhook|events) from .*marker '(?P<v>[^']*)'\)"),
    "sync finished": re.compile(r"sync finished .*marker '(?P<v>[^']*)' installed"),
}


@dataclass
class Network:
    folder: Path
    upstream: Path
    processes: list[subprocess.Popen[bytes]]

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"


def run(*, keep: bool = False, out: Callable[[str], None] = print) -> int:
    """Build the network, publish three times, print the timeline; 0 if all converged."""
    folder = Path(tempfile.mkdtemp(prefix="mirrorhook-demo-"))
    network = Network(folder, folder / "upstream", [])
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        out(
            f"demo folder: {folder}  (configs: {folder}/*.toml"
            + (", kept afterwards)" if keep else ", removed at the end; --keep keeps them)")
        )
        _start(network, out)
        converged = True
        for number, (what, change) in enumerate(_publishes(network.upstream), start=1):
            converged &= _publish(network, number, what, change, out)
    except KeyboardInterrupt:
        out("interrupted: cleaning up")
        return 130
    else:
        out("")
        out("every mirror converged" if converged else "SOME MIRROR DID NOT CONVERGE")
        return 0 if converged else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(network)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def _start(network: Network, out: Callable[[str], None]) -> None:
    folder, upstream = network.folder, network.upstream
    for repo in REPOS:
        for index in range(30):
            text = f"{repo} package {index} version 1\n" * 200
            _write(upstream / repo / f"packages/pkg-{index}.rpm", text)
        _write(upstream / repo / "repodata/repomd.xml", "<repomd revision='1'/>\n")
        _set_marker(upstream / repo, "publish-0")
    rsync_port = _free_port()
    (folder / "rsyncd.conf").write_text(
        f"pid file = {folder}/rsyncd.pid\nuse chroot = no\nreverse lookup = no\n"
        "socket options = TCP_NODELAY\n"
        f"uid = {os.getuid()}\ngid = {os.getgid()}\n"
        f"[demo]\npath = {upstream}\nread only = yes\n"
    )
    _spawn(
        network,
        "rsyncd",
        [
            "rsync",
            "--daemon",
            "--no-detach",
            f"--config={folder}/rsyncd.conf",
            f"--port={rsync_port}",
            "--address=127.0.0.1",
        ],
    )
    _wait_port(rsync_port)
    announcements: dict[str, list[str]] = {repo: [] for repo in REPOS}
    page_port = _free_port()
    key = SigningKey.generate()
    write_private_key(folder / "upstream.key", key)
    _write(folder / "upstream.pub", f"{key.public()}\n")
    for name, backoff, repos in MIRRORS:
        port = _free_port()
        text = _receiver_toml(folder, name, port, rsync_port, backoff)
        if name == SUBSCRIBER:
            text = _subscriber_toml(folder, name, rsync_port, page_port)
        _write(folder / f"{name}.toml", text)
        for repo in repos if name != SUBSCRIBER else ():
            secret = new_secret()
            _secret(folder / f"{name}-{repo}.secret", secret)
            _secret(folder / f"publisher-{name}-{repo}.secret", secret)
            path = f"{HOOK_PATH}/{repo}" if len(repos) > 1 else HOOK_PATH
            announcements[repo] += [
                f"[[publisher.repos.{repo}.mirrors]]",
                f'name = "{name}"',
                f'url = "http://127.0.0.1:{port}{path}"',
                f'secret_file = "{folder}/publisher-{name}-{repo}.secret"',
            ]
        _spawn(
            network,
            name,
            [sys.executable, "-m", "mirrorhook", "serve", "-c", str(folder / f"{name}.toml")],
        )
        if name != SUBSCRIBER:
            _wait_port(port)
    publisher = [
        f'[publisher]\nstate_dir = "{folder}/publisher-state"\nname = "demo-upstream"\n'
        f'listen = ["127.0.0.1:{page_port}"]\nsigning_key_file = "{folder}/upstream.key"'
    ]
    for repo in REPOS:
        publisher += [f'[publisher.repos.{repo}]\nroot = "{upstream / repo}"', *announcements[repo]]
    _write(folder / "publisher.toml", "\n".join(publisher) + "\n")
    for name, _backoff, repos in MIRRORS:
        for repo in repos:
            tree = _tree(folder, name, repos, repo)
            _until(functools.partial(_has_marker, tree, "publish-0"), f"{name}'s sync of {repo}")
    _spawn(
        network,
        "publisher",
        [sys.executable, "-m", "mirrorhook", "serve", "-c", str(folder / "publisher.toml")],
    )
    _until(lambda: network.log("publisher").read_text().count("watching") >= 2, "the publisher")
    _wait_port(page_port)
    _until(lambda: "subscribed to" in network.log(SUBSCRIBER).read_text(), f"{SUBSCRIBER}")
    out(
        f"upstream: repositories {' and '.join(REPOS)} served by rsync --daemon on "
        f"127.0.0.1:{rsync_port}; one publisher watching both; mirrors: "
        + ", ".join(
            f"{name} ({' + '.join(repos)}, backoff {backoff} s"
            + (", no port: subscribes to the event stream)" if name == SUBSCRIBER else ")")
            for name, backoff, repos in MIRRORS
        )
    )
    out(f"the upstream's page, while the demo runs: http://127.0.0.1:{page_port}/")
    out(
        "times below are milliseconds after the publish (the marker's rename): when the "
        "announcement (a webhook, or an event on the subscriber's stream) reached the "
        "mirror, its sync started (after its random backoff) and "
        "finished; the hourly cron job this replaces syncs about 55 minutes after a publish "
        "on average (minute 1 of the hour, then a random sleep of up to 3,000 s)"
    )


def _receiver_toml(folder: Path, name: str, port: int, rsync_port: int, backoff: int) -> str:
    """A mirror's config: the single form for one repository, the host form for several."""
    repos = next(repos for mirror, _backoff, repos in MIRRORS if mirror == name)
    head = (
        f'[receiver]\nlisten = ["127.0.0.1:{port}"]\nstate_dir = "{folder}/{name}-state"\n'
        f"backoff = {backoff}\npoll_interval = 0\n"
    )
    if len(repos) == 1:
        repo = repos[0]
        return head + (
            f'secret_file = "{folder}/{name}-{repo}.secret"\n'
            f'upstream = "rsync://127.0.0.1:{rsync_port}/demo/{repo}/"\n'
            f'target = "{folder}/{name}"\n'
        )
    return head + "".join(
        f"[receiver.repos.{repo}]\n"
        f'secret_file = "{folder}/{name}-{repo}.secret"\n'
        f'upstream = "rsync://127.0.0.1:{rsync_port}/demo/{repo}/"\n'
        f'target = "{folder}/{name}/{repo}"\n'
        for repo in repos
    )


def _subscriber_toml(folder: Path, name: str, rsync_port: int, page_port: int) -> str:
    """A mirror that opens no port: it follows the publisher's event stream."""
    return (
        f'[receiver]\nstate_dir = "{folder}/{name}-state"\nbackoff = 0\npoll_interval = 0\n'
        f'public_key_file = "{folder}/upstream.pub"\n'
        f'subscribe = ["http://127.0.0.1:{page_port}/v1/events?repo=ius"]\n'
        f'upstream = "rsync://127.0.0.1:{rsync_port}/demo/ius/"\ntarget = "{folder}/{name}"\n'
    )


def _tree(folder: Path, mirror: str, repos: tuple[str, ...], repo: str) -> Path:
    """Where ``mirror`` keeps ``repo``: in a folder each when it carries several."""
    return folder / mirror / repo if len(repos) > 1 else folder / mirror


def _publishes(upstream: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    def change() -> None:
        for repo in REPOS:
            for index in range(0, 30, 3):
                text = f"{repo} package {index} version 2\n" * 200
                _write(upstream / repo / f"packages/pkg-{index}.rpm", text)
            _write(upstream / repo / "repodata/repomd.xml", "<repomd revision='2'/>\n")

    def add() -> None:
        for repo in REPOS:
            for index in range(30, 40):
                text = f"{repo} package {index} version 1\n" * 200
                _write(upstream / repo / f"packages/pkg-{index}.rpm", text)

    def delete() -> None:
        # 4 of the 41 files: within the mirrors' safety valve (max_delete_fraction, 10%).
        for repo in REPOS:
            for index in range(0, 40, 10):
                (upstream / repo / f"packages/pkg-{index}.rpm").unlink()

    yield "10 files changed in each repository", change
    yield "10 files added to each", add
    yield "4 files deleted from each", delete


def _publish(
    network: Network, number: int, what: str, change: Callable[[], None], out: Callable[[str], None]
) -> bool:
    value = f"publish-{number}"
    change()
    renamed = time.time()
    for repo in REPOS:
        _set_marker(network.upstream / repo, value)
    out("")
    out(f"publish {number}: {what}, markers {value!r} renamed into place")
    converged = True
    for name, _backoff, repos in MIRRORS:
        for repo in repos:
            tree = _tree(network.folder, name, repos, repo)
            _until(functools.partial(_has_marker, tree, value), f"{name}'s sync of {repo}")
            # The marker is installed just before the log line that says so.
            prefix = f"{repo}: " if len(repos) > 1 else ""
            logged = functools.partial(_fully_logged, network.log(name), value, renamed, prefix)
            _until(logged, f"{name}'s log")
            times = _timeline(network.log(name), value, renamed, prefix)
            same = same_tree(network.upstream / repo, tree)
            converged &= same
            cells = "  ".join(f"{event} {times.get(event, '?'):>8}" for event in _EVENTS)
            out(f"  {name:9} {repo:5} {cells}   tree {'identical' if same else 'DIFFERS'}")
    return converged


def _timeline(log: Path, value: str, since: float, prefix: str) -> dict[str, str]:
    """Milliseconds from ``since`` to each event of ``value``'s sync in ``log``; ``prefix``
    picks one repository's lines in a mirror that carries several."""
    times: dict[str, str] = {}
    for line in log.read_text().splitlines():
        stamp = _STAMP.match(line)
        if not stamp or f": {prefix}" not in line:
            continue
        for event, pattern in _EVENTS.items():
            found = pattern.search(line)
            if found and found.group("v") == value and event not in times:
                at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                times[event] = f"{(at - since) * 1000:.0f} ms"
    return times


def same_tree(left: Path, right: Path) -> bool:
    """Return whether two trees hold the same names and the same file contents."""
    return _same(filecmp.dircmp(left, right))


def _same(compared: filecmp.dircmp[str]) -> bool:
    if compared.left_only or compared.right_only or compared.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(
        compared.left, compared.right, compared.common_files, shallow=False
    )
    return not mismatch and not errors and all(map(_same, compared.subdirs.values()))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _set_marker(root: Path, value: str) -> None:
    temporary = root / ".CURRENT.new"
    temporary.write_text(value + "\n")
    temporary.replace(root / "CURRENT")


def _marker(tree: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        return (tree / "CURRENT").read_text().strip()
    return None


def _fully_logged(log: Path, value: str, since: float, prefix: str) -> bool:
    return len(_timeline(log, value, since, prefix)) == len(_EVENTS)


def _has_marker(tree: Path, value: str) -> bool:
    return _marker(tree) == value


def _spawn(network: Network, name: str, command: list[str]) -> None:
    with network.log(name).open("wb") as log:
        network.processes.append(
            subprocess.Popen(  # noqa: S603 - the demo's own fixed commands, no shell
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        )


def _stop(network: Network) -> None:
    for process in network.processes:
        if process.poll() is None:
            process.terminate()
    for process in network.processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_port(port: int) -> None:
    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False

    _until(listening, f"a listener on port {port}")


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise DemoError(f"demo: timed out waiting for {what}")
