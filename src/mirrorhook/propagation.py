"""The propagation curve on the upstream's page: per publish, the share of mirrors serving
it against the time since it, drawn on the server as inline SVG (no script, no asset, so
the page's Content-Security-Policy stays as it is).

The time axis is logarithmic, from 1 s to 6 h, where a mirror network's spread lies: webhooks
in seconds, cron mirrors within the hour. The newest publish is drawn bold, older ones
faint; at most ``MAX_CURVES`` are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 28
SPAN = (1.0, 6 * 3600.0)
"""Seconds after a publish that the axis covers."""
TICKS = ((1, "1 s"), (10, "10 s"), (60, "1 min"), (600, "10 min"), (3600, "1 h"), (21600, "6 h"))
MAX_CURVES = 60


def _x(seconds: float) -> float:
    low, high = (math.log10(bound) for bound in SPAN)
    value = math.log10(min(max(seconds, SPAN[0]), SPAN[1]))
    return LEFT + (value - low) / (high - low) * (WIDTH - LEFT - RIGHT)


def _y(share: float) -> float:
    return TOP + (1 - share) * (HEIGHT - TOP - BOTTOM)


def points(lags: Sequence[float], mirrors: int, until: float) -> list[tuple[float, float]]:
    """The curve's corners: a step up at each mirror's delay, flat until ``until`` seconds
    (now, or the next publish)."""
    if mirrors <= 0:
        return []
    corners = [(_x(SPAN[0]), _y(0.0))]
    fresh = 0
    for lag in sorted(lags):
        if lag > until:
            break
        corners.append((_x(lag), _y(fresh / mirrors)))
        fresh += 1
        corners.append((_x(lag), _y(fresh / mirrors)))
    corners.append((_x(until), _y(fresh / mirrors)))
    return corners


def svg(publishes: Sequence[dict[str, Any]], mirrors: int, now: float) -> str:
    """The chart for ``publishes`` (oldest first, as ``History.publishes`` gives them) of a
    tree with ``mirrors`` mirrors that can be checked; ``""`` when there is nothing to draw."""
    drawn = list(publishes)[-MAX_CURVES:]
    if not drawn or mirrors <= 0:
        return ""
    parts = [
        f'<svg class="curve" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>Share of mirrors serving each of the last {len(drawn)} publishes, "
        "against the time since it</title>",
    ]
    for share in (0.0, 0.5, 1.0):
        y = _y(share)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#555">{int(share * 100)}%</text>'
        )
    for seconds, label in TICKS:
        x = _x(seconds)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{HEIGHT - 10}" text-anchor="middle" font-size="11" '
            f'fill="#555">{label}</text>'
        )
    for index, entry in enumerate(drawn):
        ends = drawn[index + 1]["at"] if index + 1 < len(drawn) else now
        corners = points(list(entry["fresh"].values()), mirrors, max(0.0, ends - entry["at"]))
        newest = index == len(drawn) - 1
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in corners)
        parts.append(
            f'<polyline points="{path}" fill="none" '
            + (
                'stroke="#0b5d0b" stroke-width="2.5"'
                if newest
                else 'stroke="#4a7bd0" stroke-opacity="0.3" stroke-width="1"'
            )
            + ("/>" if not newest else ' class="newest"/>')
        )
    parts.append("</svg>")
    return "".join(parts)
