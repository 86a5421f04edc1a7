"""The upstream's page, ``GET /`` on the publisher's listen: which mirrors serve the newest
publish, one table per repository.

Each mirror's row is coloured by its state and shows what it serves, its lag, its last
check and the last publish's timeline (webhook delivered → reported → seen fresh, in
seconds after the publish). The page is rendered here, every value escaped; it reads
without JavaScript (a ``<noscript>`` refresh reloads it), and a short inline script
replaces the view every few seconds with a fresh copy of the same page, without a reload.
It loads nothing from elsewhere, and its Content-Security-Policy lets nothing else run:
only the script and style below, by hash (docs/design.md#freshness).

It is rendered from memory — the running checkers' freshness and the running publishers'
deliveries, never the records on disk — at most once a second, in a worker thread, from a
snapshot taken on the event loop (``response_cache.py``): its ages may be a second old.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from mirrorhook import propagation
from mirrorhook.freshness import Freshness, State
from mirrorhook.mirrorlist import Upstream
from mirrorhook.publisher_config import PublisherConfig, PublisherHost
from mirrorhook.record import Fields
from mirrorhook.response_cache import Body, ResponseCache

REFRESH_SECONDS = 3
"""How often the script replaces the view; without JavaScript the page reloads every
``NOSCRIPT_REFRESH`` seconds."""
NOSCRIPT_REFRESH = 15


class Deliveries(Upstream, Protocol):
    """What the page shows: the mirror list's trees and freshness, and the deliveries."""

    def deliveries(self, tree: PublisherConfig) -> Fields:
        """What the tree's running publisher holds of each mirror's deliveries (a copy)."""
        ...  # pragma: no cover - a protocol


@dataclass(frozen=True, slots=True)
class Tree:
    """One tree as the page shows it: taken on the event loop, read in a worker thread."""

    config: PublisherConfig
    freshness: Freshness
    """A snapshot of the tree's freshness (see ``Freshness.snapshot``)."""
    deliveries: Fields
    publishes: list[dict[str, Any]]
    """The last publishes, with each mirror's delay, that the curve draws (a copy)."""


@dataclass(frozen=True, slots=True)
class View:
    """Everything one rendering of the page reads, and the time it shows."""

    host: PublisherHost
    trees: tuple[Tree, ...]
    now: float


PageCache = ResponseCache[None, View, Body]
PAGE = web.AppKey("page", PageCache)
UPSTREAM: web.AppKey[Deliveries] = web.AppKey("page_upstream")
SCRIPT = f"""
"use strict";
(() => {{
  const view = () => document.getElementById("view");
  async function refresh() {{
    try {{
      const answer = await fetch(location.href, {{ cache: "no-store" }});
      if (!answer.ok) throw new Error(`HTTP ${{answer.status}}`);
      const copy = new DOMParser().parseFromString(await answer.text(), "text/html");
      const next = copy.getElementById("view");
      if (next) view().replaceWith(next);
      document.body.classList.remove("offline");
    }} catch (error) {{
      document.body.classList.add("offline");
    }}
    setTimeout(refresh, {REFRESH_SECONDS * 1000});
  }}
  setTimeout(refresh, {REFRESH_SECONDS * 1000});
}})();
"""

STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .3rem; }
p.meta { margin: .2rem 0 .6rem; color: #555; }
#stale-view { display: none; color: #a40000; font-weight: 600; }
body.offline #stale-view { display: block; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd;
  vertical-align: top; white-space: nowrap; }
td:first-child, td:last-child { white-space: normal; }
td:first-child { min-width: 12em; }
td:last-child { min-width: 10em; }
th { font-weight: 600; background: #f4f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 14px ui-monospace, monospace; overflow-wrap: anywhere; }
.state { display: inline-block; min-width: 6.5em; padding: 0 .4em; border-radius: .3em;
  font-weight: 600; text-align: center; }
tr.fresh .state { background: #d6f5d6; color: #0b5d0b; }
tr.syncing .state { background: #fff1c2; color: #6b4d00; }
tr.behind .state { background: #ffe3c2; color: #6b3a00; }
figure { margin: .8rem 0 0; }
figcaption { font-size: 12px; color: #555; }
tr.stale .state { background: #ffd6d6; color: #8a0000; }
tr.unreachable .state { background: #e3d7f5; color: #4b2a7b; }
tr.unknown .state { background: #ececec; color: #555; }
.error { color: #8a0000; overflow-wrap: anywhere; }
.none { color: #999; }
.urls { font-size: 12px; color: #555; overflow-wrap: anywhere; }
"""


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


POLICY = "; ".join(
    (
        "default-src 'none'",
        f"script-src '{_digest(SCRIPT)}'",
        f"style-src '{_digest(STYLE)}'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


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
    config, a copy of each tree's freshness and deliveries (never read from disk)."""
    host = upstream.running()
    trees = []
    for tree in host.repos:
        freshness = upstream.freshness(tree)
        trees.append(
            Tree(
                tree,
                freshness.snapshot(),
                upstream.deliveries(tree),
                freshness.history.publishes(last=propagation.MAX_CURVES),  # those drawn
            )
        )
    return View(host, tuple(trees), time.time() if now is None else now)


def render_body(view: View) -> Body:
    """The page's bytes, plain and gzipped (in a worker thread)."""
    return Body.of(render(view).encode())


def render(view: View) -> str:
    """The whole page of ``view``."""
    publishers = view.host
    now = view.now
    name = _e(publishers.name)
    # Behind a proxy at a path (public_url), links relative to "/" would miss the prefix.
    base = _e(publishers.public_url.rstrip("/") + "/") if publishers.public_url else ""
    sections = "".join(_section(tree, now) for tree in view.trees)
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
        f'(<a href="{base}mirrorlist">/mirrorlist</a>).</p>\n'
        f"{sections}</main>\n"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _section(shown: Tree, now: float) -> str:
    tree, freshness, deliveries = shown.config, shown.freshness, shown.deliveries
    rows = freshness.rows()
    counts = {state: sum(row["state"] == state for row in rows) for state in State}
    summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
    title = tree.label
    if freshness.newest is None:
        newest = "no publish seen yet"
    else:
        published = freshness.published_at
        when = "" if published is None else f", published {_ago(now - published)}"
        newest = f"newest <code>{_e(freshness.newest)}</code>{when}"
    body = "".join(
        _row(row, deliveries.get(row["name"], {}), freshness.newest, freshness.published_at, now)
        for row in rows
    )
    repo = "" if tree.repo is None else f' data-repo="{_e(tree.repo)}"'
    return (
        f"<section{repo}><h2>{_e(title)}</h2>"
        f'<p class="meta">{newest}; {_e(summary)}.</p>'
        "<table><thead><tr><th>mirror</th><th>state</th><th>serving</th><th>lag</th>"
        "<th>last publish: delivered → reported → fresh</th><th>last check</th>"
        f"<th>problem</th></tr></thead><tbody>\n{body}</tbody></table>{_curve(shown, now)}"
        "</section>\n"
    )


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


def _row(
    row: dict[str, Any],
    delivery: dict[str, Any],
    newest: str | None,
    published: float | None,
    now: float,
) -> str:
    state = row["state"]
    serving = _none("—") if row["serving"] is None else f"<code>{_e(row['serving'])}</code>"
    if row["check_url"] is not None and row["serving"] is not None:
        serving = f'<a href="{_e(row["check_url"])}" rel="noreferrer">{serving}</a>'
    lag = _none("—") if row["lag"] is None else _e(_duration(row["lag"]))
    checked = _seconds(row["last_check"])
    last_check = _none("never") if checked is None else _e(_ago(now - checked))
    problem = row["error"] or (delivery.get("last_error") if _retrying(delivery) else None)
    shown = "".join(f"<div>{_e(url)}</div>" for url in row["urls"])
    urls = f'<div class="urls">{shown}</div>' if shown else ""
    problem_cell = "" if problem is None else f'<span class="error">{_e(problem)}</span>'
    return (
        f'<tr class="{_e(state)}" data-mirror="{_e(row["name"])}">'
        f"<td>{_e(row['name'])}{urls}</td>"
        f'<td><span class="state">{_e(state)}</span></td>'
        f"<td>{serving}</td>"
        f'<td class="num">{lag}</td>'
        f'<td class="timeline">{_timeline(row, delivery, newest, published)}</td>'
        f"<td>{last_check}</td>"
        f"<td>{problem_cell}</td></tr>\n"
    )


def _timeline(
    row: dict[str, Any], delivery: dict[str, Any], newest: str | None, published: float | None
) -> str:
    """Seconds after the publish at which the webhook was delivered, the mirror reported,
    and the upstream first saw it serve the publish."""
    if published is None or newest is None:
        return _none("—")
    delivered_at = _seconds(delivery.get("delivered_at"))
    if delivery.get("delivered") == newest and delivered_at is not None:
        delivered = _e(f"+{_duration(max(0.0, delivered_at - published))}")
    elif delivery.get("result") and delivery.get("result") != "delivered":
        delivered = _e(str(delivery["result"]))
    else:
        delivered = _none("no webhook" if not delivery else "—")
    reported_at = _seconds(row["reported_at"])
    if reported_at is not None and reported_at >= published:
        claim = _e(f"reported {row['reported'] or 'a failure'}")
        reported = f'<span title="{claim}">+{_e(_duration(reported_at - published))}</span>'
    else:
        reported = _none("—")
    fresh = _none("—") if row["lag"] is None else _e(f"+{_duration(row['lag'])}")
    return f"{delivered} → {reported} → {fresh}"


def _retrying(delivery: dict[str, Any]) -> bool:
    return delivery.get("result") in ("retrying", "failed")


def _e(value: object) -> str:
    """Escape any value for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def _none(text: str) -> str:
    return f'<span class="none">{text}</span>'


def _seconds(value: object) -> float | None:
    """A recorded RFC 3339 time as Unix seconds; ``None`` when absent or not a time."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _ago(seconds: float) -> str:
    return f"{_duration(max(0.0, seconds))} ago"


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds")


def _clock(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
