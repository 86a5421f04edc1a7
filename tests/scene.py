"""An upstream and its mirrors of every kind, all real processes, for the freshness tests:
a ``mirrorhook serve`` publisher over a real rsync daemon; ``mirrorhook serve`` receivers
whose trees real HTTP servers serve, as users reach them; cron-style mirrors that the test
syncs with plain rsync; and mirrors whose web server is gone."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import (
    Processes,
    RsyncDaemon,
    StaticWeb,
    free_port,
    listed_urls,
    receiver_toml,
    wait_for_port,
    write_secret,
)


@dataclass(frozen=True)
class Mirror:
    """One mirror of the scene: a ``receiver`` (webhooks, reports), a ``cron`` mirror (no
    webhook; the test syncs it) or ``gone`` (its check_url answers nothing)."""

    name: str
    kind: str = "receiver"
    checked: bool = True
    """Whether the publisher knows a ``check_url`` for it."""
    urls: tuple[str, ...] = ()


@dataclass
class Scene:
    folder: Path
    processes: Processes
    daemon: RsyncDaemon
    mirrors: tuple[Mirror, ...]
    publisher_keys: dict[str, Any]
    port: int = field(default_factory=free_port)
    webs: dict[str, StaticWeb] = field(default_factory=dict)
    trees: dict[str, Path] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, stack: contextlib.ExitStack) -> None:
        entries = []
        for mirror in self.mirrors:
            home = self.folder / mirror.name
            home.mkdir(parents=True)
            tree = self.trees[mirror.name] = home / "tree"
            if mirror.kind == "gone":
                check_url = f"http://127.0.0.1:{free_port()}/CURRENT"
            else:
                web = self.webs[mirror.name] = stack.enter_context(StaticWeb(tree))
                check_url = f"{web.url}/CURRENT"
            entry = {"name": mirror.name, "secret_file": str(home / "receiver.secret")}
            if mirror.kind == "receiver":
                hook = free_port()
                config = receiver_toml(home, upstream=self.daemon.url, port=hook, target=tree)
                self.processes.serve(config, mirror.name)
                wait_for_port(hook)
                entry["url"] = f"http://127.0.0.1:{hook}/v1/hook"
            else:
                write_secret(home / "receiver.secret")
            if mirror.checked:
                entry["check_url"] = check_url
            entries.append({**entry, "urls": list(mirror.urls)})
        self.config = self.folder / "publisher.toml"
        self.config.write_text(
            json_toml(
                {
                    "root": str(self.daemon.root),
                    "state_dir": str(self.folder / "publisher-state"),
                    "listen": [f"127.0.0.1:{self.port}"],
                    "public_url": self.base,
                    "rescan": 5,
                    **self.publisher_keys,
                },
                entries,
            )
        )
        self.start_publisher()

    def start_publisher(self) -> None:
        self.publisher = self.processes.serve(self.config, "publisher")
        wait_for_port(self.port)

    def restart_publisher(self) -> None:
        self.publisher.terminate()
        self.publisher.wait(15)
        self.start_publisher()

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=10) as answer:
            text: str = answer.read().decode()
            return text

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every mirror's row of ``/v1/mirrors``, by name, with ``newest`` in each."""
        document = json.loads(self.get("/v1/mirrors"))
        return {row["name"]: {**row, "newest": document["newest"]} for row in document["mirrors"]}

    def states(self) -> dict[str, str]:
        return {name: row["state"] for name, row in self.rows().items()}

    def listed(self) -> list[str]:
        """The base URLs ``/mirrorlist`` hands out, without its comment lines."""
        return listed_urls(self.get("/mirrorlist"))

    def sync_cron(self, name: str) -> None:
        """What a cron mirror's job does: plain rsync from the upstream."""
        subprocess.run(
            ["rsync", "-a", "--delete", self.daemon.url, f"{self.trees[name]}/"], check=True
        )


def json_toml(publisher: dict[str, Any], mirrors: list[dict[str, Any]]) -> str:
    """A ``[publisher]`` section with its mirrors (JSON strings and arrays are TOML too)."""
    lines = ["[publisher]", *(f"{key} = {json.dumps(value)}" for key, value in publisher.items())]
    for entry in mirrors:
        lines += ["[[publisher.mirrors]]", *(f"{k} = {json.dumps(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def toml(sections: dict[str, Any]) -> str:
    """TOML from plain sections, ``[[name]]`` for a list of tables (JSON is TOML here)."""
    lines = []
    for name, values in sections.items():
        for table in values if isinstance(values, list) else [values]:
            lines.append(f"[[{name}]]" if isinstance(values, list) else f"[{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def scene(
    folder: Path,
    processes: Processes,
    daemon: RsyncDaemon,
    mirrors: tuple[Mirror, ...],
    **publisher_keys: Any,
) -> Iterator[Scene]:
    """Start the scene; its web servers stop at the end (``processes`` stops the rest)."""
    running = Scene(folder, processes, daemon, mirrors, publisher_keys)
    with contextlib.ExitStack() as stack:
        running.start(stack)
        yield running
