"""The yum path, with Debian's dnf: a ``mirrorlist=`` and a ``metalink=`` pointing at a real
``mirrorhook serve`` publisher, for a createrepo_c repository in a subfolder of the tree
(``$releasever/$basearch``), as IUS and EPEL lay theirs out."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import Processes, StaticWeb, free_port, publish, wait_for_port, wait_until
from tests.yum import ARCH, RELEASE, dnf_makecache, make_yum_repo, needs_dnf, repomd_of

pytestmark = [needs_dnf, pytest.mark.slow]

PATH = f"{RELEASE}/{ARCH}"
REPOMD = f"/{PATH}/repodata/repomd.xml"


@dataclass
class Upstream:
    root: Path
    base: str
    webs: dict[str, StaticWeb]

    def states(self) -> dict[str, str]:
        with urllib.request.urlopen(f"{self.base}/v1/mirrors", timeout=10) as answer:
            document = json.loads(answer.read())
        return {row["name"]: row["state"] for row in document["mirrors"]}

    def fetched_by_dnf(self, name: str) -> list[str]:
        """What dnf took from mirror ``name`` (the publisher's checks of /CURRENT aside)."""
        return [path for path in self.webs[name].fetched() if path != "/CURRENT"]


@pytest.fixture
def upstream(tmp_path: Path, processes: Processes) -> Iterator[Upstream]:
    """A publisher (single form, its tree at ``.../ius``) of a yum repository at publish 2,
    and three mirrors that all serve marker 2, so that the freshness record calls each of
    them fresh: ``tampered`` (its repomd.xml changed), ``old`` (the repodata of publish 1
    under publish 2's marker) and ``good`` (a true copy). The bad ones come first."""
    root = tmp_path / "up" / "ius"
    make_yum_repo(root, PATH, revision="1")
    publish(root, "1")
    shutil.copytree(root, tmp_path / "old")
    make_yum_repo(root, PATH, revision="2")
    publish(root, "2")
    shutil.copytree(root, tmp_path / "good")
    shutil.copytree(root, tmp_path / "tampered")
    repomd = tmp_path / "tampered" / REPOMD.lstrip("/")
    repomd.write_text(repomd.read_text().replace("<revision>2<", "<revision>9<"))
    publish(tmp_path / "old", "2")
    listen = free_port()
    with ExitStack() as stack:
        webs = {}
        entries = []
        for name in ("tampered", "old", "good"):
            web = webs[name] = stack.enter_context(
                StaticWeb(tmp_path / name, tmp_path / f"{name}.http.log")
            )
            entries.append(
                f'[[publisher.mirrors]]\nname = "{name}"\ncheck_url = "{web.url}/CURRENT"\n'
                f'urls = ["{web.url}/"]\n'
            )
        config = tmp_path / "publisher.toml"
        config.write_text(
            f'[publisher]\nname = "upstream.example"\nroot = "{root}"\n'
            f'state_dir = "{tmp_path / "state"}"\nlisten = ["127.0.0.1:{listen}"]\n'
            + "".join(entries)
        )
        processes.serve(config, "publisher")
        wait_for_port(listen)
        found = Upstream(root, f"http://127.0.0.1:{listen}", webs)
        wait_until(lambda: set(found.states().values()) == {"fresh"}, what="three mirrors fresh")
        yield found


def test_dnf_reads_the_mirror_list_of_a_repository_in_a_subfolder(
    tmp_path: Path, upstream: Upstream
) -> None:
    """``mirrorlist=.../mirrorlist?repo=ius&path=$releasever/$basearch``: dnf expands the
    path, the list names each mirror's folder of it, and dnf finds its repodata there. Asked
    without the path, the list names the trees' roots and dnf fails, as it did before the
    path existed ("All mirrors were tried"). ``repo=ius``, the root's folder name, works
    with the single form as well."""
    query = f"{upstream.base}/mirrorlist?repo=ius&path=$releasever/$basearch"
    with urllib.request.urlopen(query.replace("$releasever/$basearch", PATH)) as answer:
        lines = answer.read().decode().splitlines()
    assert lines[1:] == [f"{web.url}/{PATH}/" for web in upstream.webs.values()]
    made = dnf_makecache(tmp_path / "dnf", f"mirrorlist={query}")
    assert made.returncode == 0, made.stdout + made.stderr
    rootless = dnf_makecache(tmp_path / "dnf-root", f"mirrorlist={upstream.base}/mirrorlist")
    assert rootless.returncode != 0


def test_dnf_with_the_metalink_never_uses_a_mirror_serving_tampered_or_old_metadata(
    tmp_path: Path, upstream: Upstream
) -> None:
    """``metalink=.../metalink?repo=ius&path=$releasever/$basearch``: every mirror is fresh
    by its marker, yet dnf caches the upstream's repomd.xml byte for byte: the tampered and
    the old mirrors' repomd.xml do not match the Metalink's hashes and are thrown away.
    Whatever else dnf takes from them is a file that repomd.xml names by its checksum (here
    the same bytes as the upstream's: only repomd.xml differs), which dnf verifies."""
    query = f"{upstream.base}/metalink?repo=ius&path=$releasever/$basearch"
    with urllib.request.urlopen(query.replace("$releasever/$basearch", PATH)) as answer:
        assert answer.headers["Content-Type"].startswith("application/metalink+xml")
        document = answer.read().decode()
    assert document.count("<url ") == 3
    made = dnf_makecache(tmp_path / "dnf", f"metalink={query}")
    assert made.returncode == 0, made.stdout + made.stderr
    assert repomd_of(tmp_path / "dnf") == (upstream.root / REPOMD.lstrip("/")).read_bytes()
    for name in ("tampered", "old"):
        taken = upstream.fetched_by_dnf(name)
        assert REPOMD in taken  # asked, and refused: the cache holds the upstream's
        for path in taken:
            if path != REPOMD:
                served = (tmp_path / name / path.lstrip("/")).read_bytes()
                assert served == (upstream.root / path.lstrip("/")).read_bytes()
    assert REPOMD in upstream.fetched_by_dnf("good")


def test_the_metalink_refuses_a_path_that_leaves_the_tree_and_names_a_missing_one(
    upstream: Upstream,
) -> None:
    for path, status in (("../etc", 400), ("8/x86_64", 404)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{upstream.base}/metalink?path={path}")
        assert refused.value.code == status
        refused.value.close()
