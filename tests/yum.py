"""Debian's dnf and createrepo_c, as a yum user meets a mirror network: real repositories in
subfolders of a tree, real web servers that log what dnf fetched, and dnf itself, run with a
configuration of its own (never the system's repositories, cache or plugins)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, needs, wait_for_port

ARCH = "x86_64"
RELEASE = "9"

needs_dnf = needs("dnf", "createrepo_c", package="dnf and createrepo-c")


def make_yum_repo(tree: Path, path: str, *, revision: str) -> Path:
    """A real rpm-md repository at ``tree/path`` (createrepo_c, no packages needed), its
    ``revision`` field set so that each publish's ``repomd.xml`` differs; its folder."""
    folder = tree / path
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["createrepo_c", "--quiet", "--revision", revision, "--update", str(folder)],
        check=True,
        timeout=60,
    )
    return folder


class LoggingWeb:
    """``python -m http.server`` serving ``folder`` on 127.0.0.1, its request log kept: which
    files a client (dnf) fetched from this mirror."""

    def __init__(self, folder: Path, log: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._file = log.open("w")
        self._server = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", str(self.port), "-b", "127.0.0.1"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=self._file,
        )
        wait_for_port(self.port)

    def fetched(self) -> list[str]:
        """The paths GET asked for, in order."""
        return re.findall(r'"GET (\S+) HTTP', self.log.read_text())

    def stop(self) -> None:
        if self._server.poll() is None:
            self._server.terminate()
            self._server.wait(10)
        self._file.close()


def dnf_makecache(home: Path, repo: str) -> subprocess.CompletedProcess[str]:
    """Run ``dnf makecache`` for one repository, ``repo`` being the lines of its ``.repo``
    section after the header (``metalink=...`` or ``mirrorlist=...``), with a config, cache
    and install root of its own under ``home``, ``$releasever`` and ``$basearch`` fixed."""
    repos = home / "repos"
    repos.mkdir(parents=True, exist_ok=True)
    (repos / "test.repo").write_text(
        f"[test]\nname=test\n{repo}\ngpgcheck=0\nrepo_gpgcheck=0\nskip_if_unavailable=0\n"
    )
    conf = home / "dnf.conf"
    conf.write_text(f"[main]\nreposdir={repos}\ncachedir={home / 'cache'}\n")
    return subprocess.run(
        [
            "dnf",
            "-c",
            str(conf),
            f"--installroot={home / 'root'}",
            f"--releasever={RELEASE}",
            f"--forcearch={ARCH}",
            f"--setopt=reposdir={repos}",
            f"--setopt=cachedir={home / 'cache'}",
            "--noplugins",
            "--disablerepo=*",
            "--enablerepo=test",
            "-y",
            "makecache",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def repomd_of(cache: Path) -> bytes:
    """The ``repomd.xml`` dnf kept in its cache after a makecache."""
    (found,) = (cache / "cache").glob("test-*/repodata/repomd.xml")
    return found.read_bytes()
