"""The upstream's page, ``GET /`` on the publisher's listen: which mirrors serve the newest
publish, one table per repository, with the totals across them and a legend of the states.

Each mirror's row (``page_rows.py``, drawn by ``page_table.py``) is coloured by its state
and says how far behind it is, the last publish's timeline, its last sync, last and next
check, URLs and score; under each table the propagation curve of the last publishes, and
the reports refused. The page is rendered here, every value escaped; it reads without
JavaScript (a ``<noscript>`` refresh reloads it), and a short inline script sorts the
tables by the header clicked and replaces the view every few seconds with a fresh copy of
the same page, without a reload. It loads nothing from elsewhere, and its
Content-Security-Policy lets nothing else run: only the script and style of
``page_assets.py``, by hash (docs/design.md#freshness).

It is rendered from memory — the running checkers' freshness and the running publishers'
deliveries, never the records on disk — at most once a second, in a worker thread, from a
snapshot taken on the event loop (``response_cache.py``): its ages may be a second old.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from aiohttp import web

from mirrorhook import page_rows, page_table, propagation
from mirrorhook.freshness import State
from mirrorhook.mirrorlist import Upstream
from mirrorhook.page_assets import HEADERS, NOSCRIPT_REFRESH, REFRESH_SECONDS, SCRIPT, STYLE
from mirrorhook.page_rows import Row, Tree
from mirrorhook.page_table import ago, duration, escape
from mirrorhook.publisher_config import PublisherConfig, PublisherHost
from mirrorhook.record import Fields
from mirrorhook.report_refusals import Refused
from mirrorhook.response_cache import Body, ResponseCache


class Deliveries(Upstream, Protocol):
    """What the page shows: the mirror list's trees and freshness, the deliveries, the
    checks' schedule and the reports refused."""

    def deliveries(self, tree: PublisherConfig) -> Fields:
        """What the tree's running publisher holds of each mirror's deliveries (a copy)."""
        ...  # pragma: no cover - a protocol

    def next_checks(self, tree: PublisherConfig) -> dict[str, float | None]:
        """When the tree's running checker checks each mirror next (``Checker.next_checks``)."""
        ...  # pragma: no cover - a protocol

    def refused_reports(self) -> dict[str | None, Refused]:
        """The reports refused, by repository (``None``: none known), as the desk holds them."""
        ...  # pragma: no cover - a protocol

    def subscribers(self, tree: PublisherConfig) -> int | None:
        """The event streams open for the tree; ``None`` when none are served."""
        ...  # pragma: no cover - a protocol


@dataclass(frozen=True, slots=True)
class View:
    """Everything one rendering of the page reads, and the time it shows."""

    host: PublisherHost
    trees: tuple[Tree, ...]
    now: float
    refused: Refused | None = None
    """The reports refused that named no repository the host form has."""


PageCache = ResponseCache[None, View, Body]
PAGE = web.AppKey("page", PageCache)
UPSTREAM: web.AppKey[Deliveries] = web.AppKey("page_upstream")


def add_routes(app: web.Application, upstream: Deliveries, cache: PageCache | None = None) -> None:
    """Serve the page of ``upstream``'s trees at ``/`` on ``app``, rendered by ``cache``
    (by default one that renders at most once a second)."""
    app[UPSTREAM] = upstream
    app[PAGE] = cache or ResponseCache(render_body)
    app.router.add_get("/", handle_page)


async def handle_page(request: web.Request) -> web.Response:
    """The page, as rendered within the last second (docs/design.md#freshness)."""
    upstream = request.app[UPSTREAM]
    body = await request.app[PAGE].get(None, lambda: snapshot(upstream))
    return body.response(request, "text/html; charset=utf-8", HEADERS)


def snapshot(upstream: Deliveries, now: float | None = None) -> View:
    """What the page shows of ``upstream`` now, taken on the event loop: the running
    config, a copy of each tree's freshness, deliveries and schedule, its mirrors' scores
    (one step each, from the history's running totals) and the refusals — never from disk."""
    host = upstream.running()
    refused = upstream.refused_reports()
    trees = []
    for tree in host.repos:
        freshness = upstream.freshness(tree)
        history = freshness.history
        trees.append(
            Tree(
                tree,
                freshness.snapshot(),
                upstream.deliveries(tree),
                history.publishes(last=propagation.MAX_CURVES),  # those drawn
                history.scores(mirror.name for mirror in tree.mirrors),
                upstream.next_checks(tree),
                refused.get(tree.repo),
                upstream.subscribers(tree),
            )
        )
    overall = None if host.single else refused.get(None)
    return View(host, tuple(trees), time.time() if now is None else now, overall)


def render_body(view: View) -> Body:
    """The page's bytes, plain and gzipped (in a worker thread)."""
    return Body.of(render(view).encode())


def render(view: View) -> str:
    """The whole page of ``view``."""
    publishers = view.host
    now = view.now
    name = escape(publishers.name)
    # Behind a proxy at a path (public_url), links relative to "/" would miss the prefix.
    base = escape(publishers.public_url.rstrip("/") + "/") if publishers.public_url else ""
    shown = [(tree, page_rows.rows(tree)) for tree in view.trees]
    sections = "".join(_section(tree, rows, now) for tree, rows in shown)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>mirrorhook · {name}</title>"
        f'<noscript><meta http-equiv="refresh" content="{NOSCRIPT_REFRESH}"></noscript>'
        f"<style>{STYLE}</style></head>\n"
        f"<body><h1>Mirrors of {name}</h1>"
        f'<p id="stale-view">Not updated: the upstream does not answer (retrying).</p>'
        f'<main id="view"><p class="meta">As of <time datetime="{_iso(now)}">'
        f"{_clock(now)}</time> UTC; updated every {REFRESH_SECONDS} s. "
        f'Also as JSON (<a href="{base}v1/mirrors">/v1/mirrors</a>) and for yum/dnf '
        f'(<a href="{base}mirrorlist">/mirrorlist</a>). Click a column\'s header to sort by it.'
        f"</p>\n{_totals(shown, view.refused, now)}"
        f"{page_table.legend(_stale_after(view.trees))}\n"
        f"{sections}</main>\n"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _totals(shown: Sequence[tuple[Tree, list[Row]]], refused: Refused | None, now: float) -> str:
    """The mirrors of every repository together: how many fresh, and how many in each state;
    with several repositories, one line each (a link to its table)."""
    every = [row for _tree, rows in shown for row in rows]
    counts = _counts(every)
    where = "" if len(shown) == 1 else f" across {len(shown)} repositories"
    text = (
        f'<p class="totals"><strong>{counts.get(State.FRESH, 0)} of {len(every)}</strong> '
        f"mirrors fresh{where}: {escape(_summary(counts))}.</p>"
    )
    if len(shown) > 1:
        items = "".join(
            f'<li><a href="#repo-{escape(tree.config.label)}">{escape(tree.config.label)}</a>: '
            f"{_counts(rows).get(State.FRESH, 0)} of {len(rows)} fresh"
            f"{_newest(tree, now)}</li>"
            for tree, rows in shown
        )
        text += f'<ul class="meta">{items}</ul>'
    if refused is not None:
        text += _refused(refused, now, "Refused reports naming no repository here")
    return text


def _section(shown: Tree, rows: list[Row], now: float) -> str:
    tree = shown.config
    repo = "" if tree.repo is None else f' data-repo="{escape(tree.repo)}"'
    newest = _newest(shown, now).removeprefix(", ") or "no publish seen yet"
    refused = "" if shown.refused is None else _refused(shown.refused, now, "Refused reports")
    return (
        f'<section id="repo-{escape(tree.label)}"{repo}><h2>{escape(tree.label)}</h2>'
        f'<p class="meta">{newest}; {escape(_summary(_counts(rows)))}'
        f"{_subscribed(shown.subscribers)}.</p>{refused}"
        f"{page_table.table(tree.label, rows, now)}{_curve(shown, now)}"
        "</section>\n"
    )


def _subscribed(count: int | None) -> str:
    """ "; N mirrors subscribed to its event stream" (nothing when none is served)."""
    if count is None:
        return ""
    return f"; {count} {'mirror' if count == 1 else 'mirrors'} subscribed to its event stream"


def _newest(shown: Tree, now: float) -> str:
    """ ", newest VALUE, published … ago" (nothing before the first publish)."""
    freshness = shown.freshness
    if freshness.newest is None:
        return ""
    published = freshness.published_at
    when = "" if published is None else f", published {ago(now - published)}"
    return f", newest <code>{escape(freshness.newest)}</code>{when}"


def _refused(refused: Refused, now: float, what: str) -> str:
    """One line on the reports refused: how many, and the last one's time, sender, answer
    and reason (never a secret: the reasons are the report desk's own words)."""
    mirror = "" if refused.mirror is None else f", naming mirror {refused.mirror}"
    return (
        f'<p class="refused">{escape(what)}: {refused.count}; the last '
        f"{escape(ago(now - refused.at))} from {escape(refused.peer)}{escape(mirror)}: "
        f"{refused.status} {escape(refused.reason)}</p>"
    )


def _counts(rows: Sequence[Row]) -> dict[State, int]:
    return {state: sum(row.state == state for row in rows) for state in State}


def _summary(counts: dict[State, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in counts.items() if count) or "none"


def _stale_after(trees: Sequence[Tree]) -> str:
    """The repositories' ``stale_after`` in words: one value, or "per repository"."""
    values = {tree.config.stale_after for tree in trees}
    return duration(values.pop()) if len(values) == 1 else "per repository"


def _curve(shown: Tree, now: float) -> str:
    """The propagation curve of the tree's recent publishes, when there is one to draw."""
    tracked = sum(mirror.check_url is not None for mirror in shown.config.mirrors)
    chart = propagation.svg(shown.publishes, tracked, now)
    if not chart:
        return ""
    return (
        f"<figure>{chart}<figcaption>Share of the {tracked} checked mirrors serving each "
        f"of the last {min(len(shown.publishes), propagation.MAX_CURVES)} publishes, by "
        "time since it (the newest bold).</figcaption></figure>"
    )


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds")


def _clock(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
