"""Debian's dnf and createrepo_c, as a yum user meets a mirror network: real repositories in
subfolders of a tree and dnf itself, run with a configuration of its own (never the system's
repositories, cache or plugins); the web servers that log what dnf fetched are
``tests.helpers.StaticWeb`` with a log."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import needs

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
