"""After a SIGHUP, every surface of a running ``mirrorhook serve`` shows the config that runs.

One hub daemon (a receiver repository synced from a real rsync daemon, a published
repository with a webhook mirror and a cron mirror, both checked over HTTP) is reloaded
key by key — the publisher's ``public_url``, a mirror added, a mirror removed and another's
``urls`` changed, ``check_interval``, ``stale_after``, a receiver repository added, then
removed while the other is disabled — and after each reload the page, ``/v1/status``,
``/v1/mirrors``, ``/mirrorlist``, ``/metrics`` and ``mirrorhook status --json`` are read
until each shows the new value (bounded: a surface may be a second old).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import signing
from tests.helpers import (
    Processes,
    RsyncDaemon,
    StaticWeb,
    free_port,
    listed_urls,
    make_upstream,
    marker_of,
    mirrorhook,
    publish,
    wait_for_port,
    wait_until,
    write_secret,
)
from tests.mirrors import HookMirror, mirror_in_thread

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`

MIRRORS, LIST = "/v1/mirrors?repo=pub", "/mirrorlist?repo=pub"
STATUS = ("/v1/status", "status --json")
Check = Callable[[str], bool]


@dataclass(frozen=True)
class Settings:
    """The keys the test reloads; the rest of the config stays as written."""

    public_url: str
    mirrors: tuple[str, ...] = ("a",)
    """Mirror ``a`` gets webhooks; ``b`` syncs by cron (a check_url only)."""
    urls: dict[str, str] = field(default_factory=lambda: {"a": "https://a.example/pub/"})
    check_interval: float = 3600
    stale_after: float = 900
    published: tuple[str, ...] = ("pub",)
    """Repository ``two`` has one cron mirror, ``c``."""
    receivers: tuple[str, ...] = ("ius",)
    disabled: tuple[str, ...] = ()


class Hub:
    """The daemon under test: its config, addresses and what it talks to."""

    def __init__(self, tmp: Path, daemon: RsyncDaemon, hook_port: int, web: StaticWeb) -> None:
        self.tmp = tmp
        self.daemon = daemon
        self.hook_port = hook_port
        self.web = web
        self.listen = free_port()
        self.receiver_port = free_port()
        self.base = f"http://127.0.0.1:{self.listen}"
        self.config = tmp / "hub.toml"
        self.root = make_upstream(tmp / "pub")
        make_upstream(tmp / "two")
        make_upstream(daemon.root / "epel")
        for name in ("ius", "epel", "a"):
            write_secret(tmp / f"{name}.secret")
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, settings: Settings) -> None:
        tmp = self.tmp
        lines = [
            "[receiver]",
            f'listen = ["127.0.0.1:{self.receiver_port}"]',
            f'state_dir = "{tmp / "rstate"}"',
            "backoff = 0",
            "poll_interval = 0",
        ]
        for name in settings.receivers:
            lines += [
                f"[receiver.repos.{name}]",
                f'secret_file = "{tmp / f"{name}.secret"}"',
                f'upstream = "{self.daemon.url}{"" if name == "ius" else name + "/"}"',
                f'target = "{tmp / "srv" / name}"',
                *(["enabled = false"] if name in settings.disabled else []),
            ]
        lines += [
            "[publisher]",
            f'listen = ["127.0.0.1:{self.listen}"]',
            f'state_dir = "{tmp / "pstate"}"',
            'name = "up.example"',
            "rescan = 5",
            f'public_url = "{settings.public_url}"',
            f"check_interval = {settings.check_interval}",
            f"stale_after = {settings.stale_after}",
        ]
        for repo in settings.published:
            lines += [f"[publisher.repos.{repo}]", f'root = "{tmp / repo}"']
            for name in settings.mirrors if repo == "pub" else ("c",):
                url = settings.urls.get(name, f"https://{name}.example/{repo}/")
                lines += [
                    f"[[publisher.repos.{repo}.mirrors]]",
                    f'name = "{name}"',
                    f'check_url = "{self.web.url}/{name}/CURRENT"',
                    f'urls = ["{url}"]',
                ]
                if name == "a":
                    lines.append(f'url = "http://127.0.0.1:{self.hook_port}/v1/hook"')
                    lines.append(f'secret_file = "{tmp / "a.secret"}"')
        self.config.write_text("\n".join(lines) + "\n")

    def reload(self, settings: Settings) -> None:
        assert self.process is not None
        self.write(settings)
        self.process.send_signal(signal.SIGHUP)

    def read(self, surface: str) -> str:
        if surface == "status --json":
            return mirrorhook("status", "--json", "-c", self.config).stdout
        try:
            with urllib.request.urlopen(self.base + surface, timeout=10) as answer:
                text: str = answer.read().decode()
                return text
        except urllib.error.HTTPError as err:
            err.close()
            return f"HTTP {err.code}"

    def shows(self, what: str, checks: dict[str, Check], timeout: float = 20) -> None:
        """Read each surface of ``checks`` until its check holds; fail naming those that
        never showed ``what``."""
        pending = dict(checks)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for surface, check in list(pending.items()):
                if check(self.read(surface)):
                    del pending[surface]
            time.sleep(0.1)
        assert not pending, f"{', '.join(pending)}: not showing {what} after {timeout:g} s"


def mirrors_of(text: str) -> dict[str, dict[str, Any]]:
    """Repository pub's mirrors in ``/v1/status`` or ``status --json``, or in
    ``/v1/mirrors?repo=pub``, by name."""
    document = json.loads(text)
    if "mirrors" not in document:
        (document,) = (tree for tree in document["publishers"] if tree["repo"] == "pub")
    return {row["name"]: row for row in document["mirrors"]}


def published(text: str) -> list[str]:
    """The published repositories in ``/v1/status`` or ``status --json``."""
    return [tree["repo"] for tree in json.loads(text)["publishers"]]


def repos_of(text: str) -> dict[str, dict[str, Any]]:
    """The receiver's repositories in ``/v1/status`` or ``status --json``, by name."""
    return {repo["name"]: repo for repo in json.loads(text)["repos"]}


def fresh(repo: str, mirror: str, value: float) -> str:
    """The line of ``/metrics`` that says whether ``mirror`` of ``repo`` is fresh."""
    return f'mirrorhook_mirror_fresh{{mirror="{mirror}",repo="{repo}"}} {value}'


def every_status(check: Check) -> dict[str, Check]:
    """``check`` on both status documents: the daemon's and the command's."""
    return dict.fromkeys(STATUS, check)


def states(text: str) -> dict[str, str]:
    return {name: str(row["state"]) for name, row in mirrors_of(text).items()}


def serve_marker(web: StaticWeb, mirror: str, value: str) -> None:
    (web.folder / mirror).mkdir(exist_ok=True)
    (web.folder / mirror / "CURRENT").write_text(value + "\n")


@pytest.fixture
def hub(tmp_path: Path, daemon: RsyncDaemon, processes: Processes) -> Iterator[Hub]:
    hook_port = free_port()
    with ExitStack() as stack:
        web = stack.enter_context(StaticWeb(tmp_path / "web"))
        for name in ("a", "b", "c"):
            serve_marker(web, name, "1")
        hub = Hub(tmp_path, daemon, hook_port, web)
        mirror = HookMirror(signing.Secret.parse((tmp_path / "a.secret").read_text()))
        stack.enter_context(mirror_in_thread(mirror, hook_port))
        hub.write(Settings(public_url=f"{hub.base}/one"))
        hub.process = processes.serve(hub.config, "hub")
        wait_for_port(hub.listen)
        wait_until(lambda: mirror.values() == ["1"], what="mirror a's webhook")
        yield hub
        assert hub.process.poll() is None, processes.log("hub")


def test_every_surface_shows_each_reloaded_key(hub: Hub) -> None:
    settings = Settings(public_url=f"{hub.base}/one")
    wait_until(lambda: marker_of(hub.tmp / "srv" / "ius") == "1", what="ius's start-up sync")
    hub.shows("the start", {MIRRORS: lambda text: states(text) == {"a": "fresh"}})

    settings = dataclasses.replace(settings, public_url=f"{hub.base}/two")
    hub.reload(settings)
    hub.shows(
        "the new public_url",
        {"/": lambda text: f'href="{hub.base}/two/v1/mirrors"' in text and "/one/" not in text},
    )

    urls = {**settings.urls, "b": "https://b.example/pub/"}
    settings = dataclasses.replace(
        settings, mirrors=("a", "b"), urls=urls, published=("pub", "two")
    )
    hub.reload(settings)
    hub.shows(
        "mirror b and repository two added",
        {
            "/": lambda text: (
                'data-mirror="b"' in text
                and "https://b.example/pub/" in text
                and '<section id="repo-two" data-repo="two">' in text
            ),
            MIRRORS: lambda text: states(text) == {"a": "fresh", "b": "fresh"},
            LIST: lambda text: "https://b.example/pub/" in listed_urls(text),
            "/mirrorlist?repo=two": lambda text: listed_urls(text) == ["https://c.example/two/"],
            "/metrics": lambda text: (
                fresh("pub", "b", 1.0) in text and fresh("two", "c", 1.0) in text
            ),
            **every_status(
                lambda text: (
                    list(mirrors_of(text)) == ["a", "b"] and published(text) == ["pub", "two"]
                )
            ),
        },
    )

    settings = dataclasses.replace(
        settings, mirrors=("b",), urls={"b": "https://b2.example/pub/"}, published=("pub",)
    )
    hub.reload(settings)
    hub.shows(
        "mirror a and repository two removed, b's new urls",
        {
            "/": lambda text: (
                'data-mirror="a"' not in text
                and "https://b2.example/pub/" in text
                and 'data-repo="two"' not in text
            ),
            MIRRORS: lambda text: (
                [(name, row["urls"]) for name, row in mirrors_of(text).items()]
                == [("b", ["https://b2.example/pub/"])]
            ),
            LIST: lambda text: listed_urls(text) == ["https://b2.example/pub/"],
            "/mirrorlist?repo=two": lambda text: text == "HTTP 404",
            "/metrics": lambda text: (
                'mirror="a"' not in text and 'mirror="b"' in text and 'repo="two"' not in text
            ),
            **every_status(
                lambda text: list(mirrors_of(text)) == ["b"] and published(text) == ["pub"]
            ),
        },
    )

    settings = dataclasses.replace(settings, check_interval=0.5)
    hub.reload(settings)
    seen: dict[str, set[str]] = {}

    def checked_again_and_again(surface: str) -> Check:
        """Four checks of b seen since the reload: the new interval, not an hour."""

        def check(text: str) -> bool:
            seen.setdefault(surface, set()).add(str(mirrors_of(text)["b"]["last_check"]))
            return len(seen[surface]) >= 4

        return check

    hub.shows(
        "checks every half second",
        {surface: checked_again_and_again(surface) for surface in (MIRRORS, *STATUS)},
    )

    publish(hub.root, "2")  # b (no webhook) serves 1 still: behind for stale_after seconds
    hub.shows("b behind", {MIRRORS: lambda text: states(text) == {"b": "behind"}})
    settings = dataclasses.replace(settings, stale_after=1)
    hub.reload(settings)
    hub.shows(
        "b stale after the new stale_after",
        {
            "/": lambda text: '<tr class="stale" data-mirror="b">' in text,
            MIRRORS: lambda text: states(text) == {"b": "stale"},
            LIST: lambda text: listed_urls(text) == ["https://b2.example/pub/"],
            "/metrics": lambda text: fresh("pub", "b", 0.0) in text,
            **every_status(lambda text: states(text) == {"b": "stale"}),
        },
    )

    settings = dataclasses.replace(settings, receivers=("ius", "epel"))
    hub.reload(settings)
    hub.shows(
        "receiver repository epel added",
        {
            "/metrics": lambda text: (
                'mirrorhook_syncs_total{repo="epel",result="synced"} 1.0' in text
            ),
            **every_status(lambda text: repos_of(text).get("epel", {}).get("local_marker") == "1"),
        },
    )

    settings = dataclasses.replace(settings, receivers=("ius",), disabled=("ius",))
    hub.reload(settings)
    hub.shows(
        "epel removed and ius disabled",
        {
            "/metrics": lambda text: 'repo="epel"' not in text,
            **every_status(
                lambda text: (
                    [(name, repo["state"]) for name, repo in repos_of(text).items()]
                    == [("ius", "disabled")]
                )
            ),
        },
    )
