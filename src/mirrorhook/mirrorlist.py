"""The upstream's mirror list: ``GET /v1/mirrors`` (JSON) and ``GET /mirrorlist`` (text).

``/mirrorlist?repo=NAME[&protocol=https]`` is what yum and dnf read with ``mirrorlist=``:
one base URL per line, fresh mirrors only — when none is fresh, those serving the value
that appeared most recently, so that users are never sent nowhere. ``repo`` may be left out
when the publisher has one tree (docs/design.md#freshness).
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Protocol

from aiohttp import web

from mirrorhook.freshness import Freshness, State
from mirrorhook.publisher_config import PublisherConfig, PublisherHost


class Upstream(Protocol):
    """What the mirror list and the page show: the running trees and their freshness."""

    def running(self) -> PublisherHost:
        """The running ``[publisher]`` section (it changes with a reload)."""
        ...  # pragma: no cover - a protocol

    def freshness(self, tree: PublisherConfig) -> Freshness:
        """The tree's freshness: the running checker's, else the record on disk."""
        ...  # pragma: no cover - a protocol


UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream")


def add_routes(app: web.Application, upstream: Upstream) -> None:
    """Serve the mirror list of ``upstream``'s trees on ``app``."""
    app[UPSTREAM] = upstream
    app.router.add_get("/v1/mirrors", handle_mirrors)
    app.router.add_get("/mirrorlist", handle_mirrorlist)


async def handle_mirrors(request: web.Request) -> web.Response:
    """Every mirror of the tree with its state, what it serves and its URLs."""
    tree = _tree(request)
    freshness = request.app[UPSTREAM].freshness(tree)
    document: dict[str, Any] = {
        "repo": tree.repo,
        "newest": freshness.newest,
        "mirrors": freshness.rows(),
    }
    return web.json_response(document)


async def handle_mirrorlist(request: web.Request) -> web.Response:
    """One base URL per line: fresh mirrors, or failing those the most recent ones."""
    tree = _tree(request)
    protocol = request.query.get("protocol")
    rows = request.app[UPSTREAM].freshness(tree).rows()
    chosen = [row for row in rows if row["state"] == State.FRESH]
    if not chosen:
        chosen = _most_recent(rows)
    lines = [
        url
        for row in chosen
        for url in row["urls"]
        if protocol is None or urllib.parse.urlsplit(url).scheme == protocol
    ]
    heading = f"# mirrorhook mirror list for {tree.repo or 'this repository'}"
    body = "\n".join([heading, *lines]) + "\n"
    return web.Response(text=body, content_type="text/plain")


def _tree(request: web.Request) -> PublisherConfig:
    publishers = request.app[UPSTREAM].running()
    name = request.query.get("repo")
    if name is None:
        if len(publishers.repos) == 1:
            return publishers.repos[0]
        raise web.HTTPBadRequest(text="name the repository: ?repo=NAME\n")
    tree = publishers.named(name) if not publishers.single else None
    if tree is None:
        raise web.HTTPNotFound(text=f"no repository {name!r} here\n")
    return tree


def _most_recent(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reachable mirrors serving the value that appeared most recently."""
    reachable = [row for row in rows if row["serving"] and row["state"] != State.UNREACHABLE]
    first_seen: dict[str, str] = {}
    for row in reachable:
        since = str(row["since"] or "")
        first_seen[row["serving"]] = min(first_seen.get(row["serving"], since), since)
    if not first_seen:
        return []
    newest = max(first_seen, key=lambda value: first_seen[value])
    return [row for row in reachable if row["serving"] == newest]
