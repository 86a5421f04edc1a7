"""The upstream's mirror list: ``GET /v1/mirrors`` (JSON) and ``GET /mirrorlist`` (text).

``/mirrorlist?repo=NAME[&protocol=https]`` is what yum and dnf read with ``mirrorlist=``:
one base URL per line, of the mirrors that can be listed (a URL of that protocol) serving
the newest value announced — fresh ones — or, when none does (right after each publish),
those serving the most recently announced value that any of them serves, so that users are
never sent nowhere. A mirror serving a value the publisher never announced is never listed,
however recent. ``repo`` may be left out when the publisher has one tree. Both are rendered
at most once a second per tree, off the event loop, like the page (``response_cache.py``,
docs/design.md#freshness).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from mirrorhook import history
from mirrorhook.freshness import Freshness, State
from mirrorhook.publisher_config import PublisherConfig, PublisherHost
from mirrorhook.repomd import repo_path
from mirrorhook.response_cache import Body, ResponseCache


class Upstream(Protocol):
    """What the mirror list and the page show: the running trees and their freshness."""

    def running(self) -> PublisherHost:
        """The running ``[publisher]`` section (it changes with a reload)."""
        ...  # pragma: no cover - a protocol

    def freshness(self, tree: PublisherConfig) -> Freshness:
        """The tree's freshness: the running checker's, else the record on disk."""
        ...  # pragma: no cover - a protocol


@dataclass(frozen=True, slots=True)
class Lists:
    """One tree's mirror list for each protocol its URLs use, and for all of them (``None``),
    rendered once for them all."""

    heading: str
    urls: dict[str | None, tuple[str, ...]]
    """The URLs of each list; a protocol no URL uses has the heading alone."""
    bodies: dict[str | None, Body]

    def of(self, protocol: str | None) -> Body:
        """The list of ``protocol``'s URLs (of every URL when ``None``)."""
        return self.bodies.get(protocol) or self.bodies[_NONE]

    def under(self, protocol: str | None, path: str) -> str:
        """The list of ``protocol``'s URLs, each leading to ``path`` inside the tree (dnf
        expands ``$releasever/$basearch`` there before asking): a join of at most as many
        lines as there are mirrors, cheap enough to do per request."""
        lines = [_join(url, path) for url in self.urls.get(protocol, ())]
        return "\n".join([self.heading, *lines]) + "\n"


_NONE = "\0none"
"""The key of the list of no URL, which no protocol's name can be."""


def _join(base: str, path: str) -> str:
    """``base`` (a mirror's URL of the tree) and ``path`` in it, as a folder URL."""
    prefix = base if base.endswith("/") else base + "/"
    return prefix + urllib.parse.quote(path) + "/"


UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream")
MIRRORS = web.AppKey("mirrors_json", ResponseCache[str | None, Freshness, Body])
LISTS = web.AppKey("mirror_lists", ResponseCache[str | None, Freshness, Lists])
HISTORY = web.AppKey("history_json", ResponseCache[str | None, "History", Body])


def add_routes(app: web.Application, upstream: Upstream) -> None:
    """Serve the mirror list of ``upstream``'s trees on ``app``."""
    app[UPSTREAM] = upstream
    app[MIRRORS] = ResponseCache(_mirrors)
    app[LISTS] = ResponseCache(listings)
    app.router.add_get("/v1/mirrors", handle_mirrors)
    app.router.add_get("/mirrorlist", handle_mirrorlist)
    app[HISTORY] = ResponseCache(_history)
    app.router.add_get("/v1/history", handle_history)


async def handle_history(request: web.Request) -> web.Response:
    """How the tree's publishes spread over the last days, and each mirror's score."""
    tree = tree_of(request)
    freshness = request.app[UPSTREAM].freshness(tree)
    names = tuple(mirror.name for mirror in tree.mirrors)

    def taken() -> History:  # a copy, on the loop: the thread scores and encodes it
        return History(tree.repo, names, freshness.history.record())

    body = await request.app[HISTORY].get(tree.repo, taken)
    return body.response(request, "application/json; charset=utf-8")


@dataclass(frozen=True, slots=True)
class History:
    """What ``/v1/history`` renders: the tree, its mirrors, a copy of its history record."""

    repo: str | None
    mirrors: tuple[str, ...]
    record: dict[str, Any]


def _history(taken: History) -> Body:
    shown = {"repo": taken.repo, **history.document(taken.record, taken.mirrors)}
    return Body.of(json.dumps(shown).encode())


async def handle_mirrors(request: web.Request) -> web.Response:
    """Every mirror of the tree with its state, what it serves and its URLs."""
    tree = tree_of(request)
    freshness = request.app[UPSTREAM].freshness(tree)
    body = await request.app[MIRRORS].get(tree.repo, freshness.snapshot, version=freshness.version)
    return body.response(request, "application/json; charset=utf-8")


async def handle_mirrorlist(request: web.Request) -> web.Response:
    """One base URL per line: fresh mirrors, or failing those the ones serving the most
    recently announced value (``_listed``)."""
    tree = tree_of(request)
    freshness = request.app[UPSTREAM].freshness(tree)
    try:
        path = repo_path(request.query.get("path", ""))
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"{err}\n") from None
    lists = await request.app[LISTS].get(tree.repo, freshness.snapshot, version=freshness.version)
    protocol = request.query.get("protocol")
    if path:
        return web.Response(text=lists.under(protocol, path), content_type="text/plain")
    return lists.of(protocol).response(request, "text/plain; charset=utf-8")


def _mirrors(freshness: Freshness) -> Body:
    document: dict[str, Any] = {
        "repo": freshness.config.repo,
        "newest": freshness.newest,
        "mirrors": freshness.rows(),
    }
    return Body.of(json.dumps(document).encode())


def listings(freshness: Freshness) -> Lists:
    """The list for each protocol the mirrors have URLs of, each chosen among the mirrors
    it can name (``_listed``), and for no protocol asked."""
    heading = f"# mirrorhook mirror list for {freshness.config.label}"
    rows = freshness.rows()
    schemes = {
        urllib.parse.urlsplit(url).scheme
        for mirror in freshness.config.mirrors
        for url in mirror.urls
    }
    urls = {
        protocol: tuple(
            url for row in _listed(rows, freshness, protocol) for url in _urls(row, protocol)
        )
        for protocol in (None, *schemes)
    }
    bodies = {
        key: Body.of(("\n".join([heading, *lines]) + "\n").encode())
        for key, lines in {**urls, _NONE: ()}.items()
    }
    return Lists(heading, urls, bodies)


def tree_of(request: web.Request) -> PublisherConfig:
    """The tree ``?repo=`` names. The single form's one tree answers to the publisher's
    ``name`` and to its ``label``, its root folder's name (``/srv/repo/ius``: ``ius``), so that one
    ``.repo`` file serves whichever form the upstream runs; without ``repo``, the one tree."""
    publishers = request.app[UPSTREAM].running()
    name = request.query.get("repo")
    if name is None:
        if len(publishers.repos) == 1:
            return publishers.repos[0]
        raise web.HTTPBadRequest(
            text=f"name the repository: ?repo=NAME, one of {', '.join(publishers.names())}\n"
        )
    if (found := publishers.called(name)) is not None:
        return found
    raise web.HTTPNotFound(
        text=f"no repository {name!r} here; there are {', '.join(publishers.names())}\n"
    )


def _listed(
    rows: list[dict[str, Any]], freshness: Freshness, protocol: str | None
) -> list[dict[str, Any]]:
    """The reachable mirrors of ``rows`` with a URL of ``protocol`` serving the most recently
    announced value that any of them serves: the newest (they are fresh), else an earlier one."""
    serving: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["serving"] and row["state"] != State.UNREACHABLE and _urls(row, protocol):
            serving.setdefault(row["serving"], []).append(row)
    for announced in reversed(freshness.announced):
        if announced.value in serving:
            return serving[announced.value]
    return []


def _urls(row: dict[str, Any], protocol: str | None) -> list[str]:
    return [
        url
        for url in row["urls"]
        if protocol is None or urllib.parse.urlsplit(url).scheme == protocol
    ]
