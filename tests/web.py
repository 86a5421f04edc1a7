"""A web server and a tree for the snapshot tests and benchmarks: Debian's nginx started
on a free loopback port with ``contrib/nginx-snapshots.conf``, and an upstream tree shaped
as a yum repository is (an index that names its package list by hash, a list that names
each package with its hash)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port, publish, wait_for_port

REPO = Path(__file__).resolve().parent.parent


class YumLike:
    """An upstream tree whose index names its package list by hash, which names each
    package with its hash; each publish adds three packages, removes the oldest three (past
    nine) and rewrites the index in place. Packages are never rewritten under their name:
    no repository does that, and no switch could hide it from a client that read the old
    list (the new tree has the path, with other bytes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packages: list[str] = []
        self.serial = 0
        self.chance = random.Random(11)

    def publish(self) -> None:
        self.serial += 1
        packages = self.root / "Packages"
        packages.mkdir(parents=True, exist_ok=True)
        for index in range(3):
            name = f"pkg{self.serial}-{index}.rpm"
            (packages / name).write_bytes(self.chance.randbytes(40_000))
            self.packages.append(name)
        if len(self.packages) > 9:
            for old in self.packages[:3]:
                (packages / old).unlink()
            del self.packages[:3]
        lines = [f"Packages/{name} {digest(packages / name)}" for name in self.packages]
        listing = ("\n".join(lines) + "\n").encode()
        repodata = self.root / "repodata"
        repodata.mkdir(exist_ok=True)
        for stale in repodata.glob("*-primary.txt"):
            stale.unlink()
        sha = hashlib.sha256(listing).hexdigest()
        (repodata / f"{sha}-primary.txt").write_bytes(listing)
        (repodata / "repomd.xml").write_text(f"primary repodata/{sha}-primary.txt {sha}\n")
        publish(self.root, str(self.serial))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        data: bytes = answer.read()
        return data


@contextmanager
def nginx(folder: Path, mirror_root: Path, tree: str) -> Iterator[str]:
    """Debian's nginx on a free loopback port with the contrib snippet for ``tree``; the
    URL of the tree."""
    port = free_port()
    snippet = (REPO / "contrib/nginx-snapshots.conf").read_text()
    snippet = snippet.replace("MIRROR_ROOT", str(mirror_root)).replace("TREE", tree)
    folder.mkdir(parents=True, exist_ok=True)
    temp = "".join(
        f"{kind}_temp_path {folder}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # the test's folders are its own
    (folder / "nginx.conf").write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\naccess_log off;\nkeepalive_requests 100000;\n{temp}server {{\n"
        f"listen 127.0.0.1:{port};\n{snippet}\n}}\n}}\n"
    )
    process = subprocess.Popen(
        ["nginx", "-p", str(folder), "-e", str(folder / "error.log"), "-c", "nginx.conf"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/{tree}/"
    finally:
        process.terminate()
        process.wait(10)
