"""The Metalink that dnf reads with ``metalink=``: ``GET /metalink?repo=NAME&path=PATH``.

It names the ``repomd.xml`` of ``PATH`` as the upstream serves it now — size, mtime,
sha256 and sha512 — with the versions it replaced within the window as alternates, and
the URLs of the mirrors the mirror list hands out (``mirrorlist.listed``), each pointing at
that file. dnf fetches ``repomd.xml`` from a mirror and uses the mirror only when the file
matches one of those hashes, so a mirror serving tampered or old metadata is never used,
whatever the freshness record says (docs/design.md#metalink).
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Sequence
from typing import Protocol
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from mirrorhook import mirrorlist
from mirrorhook.publisher_config import PublisherConfig
from mirrorhook.repomd import REPOMD, RepomdError, RepomdVersions, Version, repo_path

CONTENT_TYPE = "application/metalink+xml"
PROTOCOLS = ("https", "http", "ftp")
"""What dnf can fetch from; rsync URLs of a mirror are left out."""


class Source(mirrorlist.Upstream, Protocol):
    """What the Metalink reads: the mirror list's trees and their ``repomd.xml`` versions."""

    def repomd(self, tree: PublisherConfig) -> RepomdVersions:
        """The tree's ``repomd.xml`` versions."""
        ...  # pragma: no cover - a protocol


SOURCE: web.AppKey[Source] = web.AppKey("metalink_source")


def add_routes(app: web.Application, source: Source) -> None:
    """Serve ``GET /metalink`` on ``app`` (after ``mirrorlist.add_routes``: the same mirrors)."""
    app[SOURCE] = source
    app.router.add_get("/metalink", handle_metalink)


async def handle_metalink(request: web.Request) -> web.Response:
    """The Metalink of ``?path=``'s ``repomd.xml``, naming the mirrors the list hands out."""
    tree = mirrorlist.tree_of(request)
    try:
        path = repo_path(request.query.get("path", ""))
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"{err}\n") from None
    source = request.app[SOURCE]
    try:
        current, alternates = await source.repomd(tree).versions(path)
    except RepomdError as err:
        raise web.HTTPNotFound(text=f"{err}\n") from None
    protocol = request.query.get("protocol")
    freshness = source.freshness(tree)
    lists = await request.app[mirrorlist.LISTS].get(
        tree.repo, freshness.snapshot, version=freshness.version
    )
    # Each protocol's list is chosen among the mirrors that have a URL of it: asked for
    # none, dnf gets those of every protocol it can fetch, https first.
    protocols = [protocol] if protocol in PROTOCOLS else [] if protocol else list(PROTOCOLS)
    bases = [url for each in protocols for url in lists.urls.get(each, ())]
    return web.Response(
        text=render(current, alternates, bases, path),
        content_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-cache"},
    )


def render(current: Version, alternates: Sequence[Version], bases: Sequence[str], path: str) -> str:
    """The Metalink document for ``path``: ``bases`` are the mirrors' base URLs, best first."""
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<metalink version="3.0" xmlns="http://www.metalinker.org/" type="dynamic" '
        f'pubdate="{email.utils.formatdate(time.time(), usegmt=True)}" generator="mirrorhook" '
        'xmlns:mm0="http://fedorahosted.org/mirrormanager">',
        " <files>",
        '  <file name="repomd.xml">',
        *_facts(current, "   "),
    ]
    if alternates:
        lines.append("   <mm0:alternates>")
        for version in alternates:
            lines += ["    <mm0:alternate>", *_facts(version, "     "), "    </mm0:alternate>"]
        lines.append("   </mm0:alternates>")
    lines.append(f'   <resources maxconnections="{max(1, len(bases))}">')
    for rank, base in enumerate(bases):
        url = _file_url(base, path)
        scheme = urllib.parse.urlsplit(url).scheme
        preference = max(1, 100 - rank)
        lines.append(
            f"    <url protocol={quoteattr(scheme)} type={quoteattr(scheme)} "
            f'preference="{preference}">{escape(url)}</url>'
        )
    lines += ["   </resources>", "  </file>", " </files>", "</metalink>"]
    return "\n".join(lines) + "\n"


def _facts(version: Version, indent: str) -> list[str]:
    return [
        f"{indent}<mm0:timestamp>{version.mtime}</mm0:timestamp>",
        f"{indent}<size>{version.size}</size>",
        f"{indent}<verification>",
        f'{indent} <hash type="sha256">{version.sha256}</hash>',
        f'{indent} <hash type="sha512">{version.sha512}</hash>',
        f"{indent}</verification>",
    ]


def _file_url(base: str, path: str) -> str:
    """``base`` (a mirror's URL of the tree) joined with ``path`` and ``repodata/repomd.xml``."""
    prefix = base if base.endswith("/") else base + "/"
    quoted = urllib.parse.quote(f"{path}/{REPOMD}" if path else REPOMD)
    return prefix + quoted
