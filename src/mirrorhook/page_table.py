"""The page's mirror table, in HTML: a header per column that the page's script sorts by,
one row per mirror (``page_rows.Row``), and the legend of the states; every value escaped.

Each cell carries its sort key in ``data-v`` (a number in the ``data-sort="num"`` columns,
absent where there is nothing to show, which sorts last), so the script never reads the
text people see (docs/design.md#freshness).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from mirrorhook.freshness import State
from mirrorhook.page_rows import Row

RANK = {state: rank for rank, state in enumerate(State)}
"""The states' order when the state column is sorted: fresh first."""
LEGEND = {
    State.FRESH: "serves the newest publish",
    State.SYNCING: "webhook sent, not serving it yet, for less than stale_after",
    State.BEHIND: "no webhook (it syncs on its own), not serving it yet, for less than stale_after",
    State.STALE: "not serving a publish stale_after after it",
    State.UNREACHABLE: "its last 3 checks failed",
    State.UNKNOWN: "no check_url, or not checked yet",
}
"""What each state means, shown above the tables (``stale_after`` with its value)."""
COLUMNS = (
    ("mirror", "text", "its name, base URLs (links for http and https) and protocols"),
    ("state", "num", "see the legend above"),
    ("serving", "text", "the marker value its check_url serves (a link to it)"),
    ("behind", "num", "publishes since the one it serves, and the time since the first of them"),
    (
        "delivered → reported → fresh",
        "num",
        "seconds after the newest publish: its webhook first delivered, its report, and it "
        "first seen serving the publish",
    ),
    ("synced", "num", "when it was first seen serving what it serves now"),
    ("checked", "num", "its last check"),
    ("next check", "num", "when its next check is due (a report asks for one sooner)"),
    ("fresh checks", "num", "the share of its checks that found it fresh, over the history kept"),
    ("mean delay", "num", "from a publish to it first seen serving it, over the history kept"),
    ("problem", "text", "the last check's error, or the webhook's while it is retried"),
)


def table(key: str, rows: Sequence[Row], now: float) -> str:
    """The table of ``rows`` (``key`` names it for the script's sort order)."""
    headers = "".join(
        f'<th data-sort="{sort}" title="{escape(title)}">{escape(name)}</th>'
        for name, sort, title in COLUMNS
    )
    body = "".join(_row(row, now) for row in rows)
    return (
        f'<div class="wide"><table data-table="{escape(key)}"><thead><tr>{headers}</tr></thead>'
        f"<tbody>\n{body}</tbody></table></div>"
    )


def legend(stale_after: str) -> str:
    """What each state means (``stale_after``: the repositories' setting, in words)."""
    items = "".join(
        f'<div><dt><span class="state {state}">{state}</span></dt>'
        f"<dd>{escape(text.replace('stale_after', f'stale_after ({stale_after})'))}</dd></div>"
        for state, text in LEGEND.items()
    )
    return f'<dl class="legend">{items}</dl>'


def _row(row: Row, now: float) -> str:
    serving = none("—") if row.serving is None else f"<code>{escape(row.serving)}</code>"
    if row.check_url is not None and row.serving is not None:
        serving = f'<a href="{escape(row.check_url)}" rel="noreferrer">{serving}</a>'
    cells = (
        _cell(row.name, _mirror(row), "mirror"),
        _cell(
            RANK.get(State(row.state), len(RANK)),
            f'<span class="state {escape(row.state)}">{escape(row.state)}</span>',
        ),
        _cell(row.serving, serving),
        _behind(row, now),
        _cell(row.lag, _timeline(row), "timeline"),
        _ago(row.synced_at, now),
        _ago(row.checked_at, now, "never"),
        _next(row, now),
        _share(row),
        _cell(
            None if row.score is None else row.score.mean_delay,
            _duration_or_none(None if row.score is None else row.score.mean_delay),
            "num",
        ),
        _cell(
            row.problem,
            "" if row.problem is None else f'<span class="error">{escape(row.problem)}</span>',
            "problem",
        ),
    )
    return (
        f'<tr class="{escape(row.state)}" data-mirror="{escape(row.name)}">{"".join(cells)}</tr>\n'
    )


def _cell(value: object, content: str, kind: str = "") -> str:
    """A cell showing ``content``, sorted by ``value`` (none: last)."""
    if isinstance(value, float):  # the page's size: a tenth is precise enough to sort
        value = f"{value:.1f}".removesuffix(".0")
    key = "" if value is None else f' data-v="{escape(value)}"'
    css = f' class="{kind}"' if kind else ""
    return f"<td{css}{key}>{content}</td>"


def _mirror(row: Row) -> str:
    # No rel="noreferrer" on each link: the page's Referrer-Policy already says no-referrer.
    urls = "".join(
        f'<div><a href="{escape(url.text)}">{escape(url.text)}</a></div>'
        if url.linked
        else f"<div>{escape(url.text)}</div>"
        for url in row.urls
    )
    shown = f'<div class="urls">{urls}</div>' if urls else ""
    protocols = " · ".join(escape(protocol) for protocol in row.protocols)
    listed = f'<div class="protocols">{protocols}</div>' if protocols else ""
    return f"{escape(row.name)}{shown}{listed}"


def _behind(row: Row, now: float) -> str:
    if row.behind is None:
        return _cell(None, none("—"), "num")
    if row.behind == 0:
        return _cell(0, "0", "num")
    count = f"≥ {row.behind}" if row.behind_all else str(row.behind)
    if row.behind_since is None:
        return _cell(row.behind, escape(count), "num")
    late = max(0.0, now - row.behind_since)
    return _cell(late, f"{escape(count)} · {escape(duration(late))}", "num")


def _timeline(row: Row) -> str:
    if row.delivered is not None:
        delivered = escape(f"+{duration(row.delivered)}")
    else:
        delivered = none(escape(row.delivery or "—"))
    if row.reported is not None:
        claim = escape(f"reported {row.claimed or 'a failure'}")
        reported = f'<span title="{claim}">+{escape(duration(row.reported))}</span>'
    else:
        reported = none("—")
    fresh = _duration_or_none(row.lag, "+")
    return f"{delivered} → {reported} → {fresh}"


def _ago(at: float | None, now: float, missing: str = "—") -> str:
    """How long ago ``at`` was, sorted by that age (the latest first)."""
    if at is None:
        return _cell(None, none(missing))
    age = max(0.0, now - at)
    return _cell(age, escape(ago(age)))


def _next(row: Row, now: float) -> str:
    """When the next check is due, sorted by the time until then (the soonest first)."""
    if row.checking:
        return _cell(0, "now")
    if row.next_check is None:
        return _cell(None, none("—"))
    wait = max(0.0, row.next_check - now)
    return _cell(wait, escape(f"in {duration(wait)}"))


def _share(row: Row) -> str:
    score = row.score
    if score is None or score.share_fresh is None:
        return _cell(None, none("—"), "num")
    title = f"{score.fresh_checks} of {score.checks} checks"
    return _cell(score.share_fresh, f'<span title="{title}">{score.share_fresh:.0%}</span>', "num")


def _duration_or_none(seconds: float | None, prefix: str = "") -> str:
    return none("—") if seconds is None else escape(prefix + duration(seconds))


def escape(value: object) -> str:
    """Escape any value for HTML text and attributes."""
    return html.escape(str(value), quote=True)


def none(text: str) -> str:
    """``text`` (already escaped) shown as nothing to show (greyed: ``i`` is short)."""
    return f"<i>{text}</i>"


def duration(seconds: float) -> str:
    """Seconds in the unit that reads best: 2.50 s, 40 s, 12 min, 5 h, 3 d."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def ago(seconds: float) -> str:
    return f"{duration(max(0.0, seconds))} ago"
