"""The page's only script and style, and the Content-Security-Policy that lets nothing else
run: both inline, allowed by their SHA-256 hashes (docs/design.md#freshness).

The script does two things, and the page reads without it: it replaces the view every
``REFRESH_SECONDS`` with a fresh copy of the same page (parsed with ``DOMParser``, which runs
nothing), and it sorts a mirror table by the column whose header is clicked (again: the
other way), by each cell's ``data-v`` (numbers for ``data-sort="num"`` columns; a cell
without a value goes last either way), keeping each table's order across refreshes.
"""

from __future__ import annotations

import base64
import hashlib

REFRESH_SECONDS = 3
"""How often the script replaces the view; without JavaScript the page reloads every
``NOSCRIPT_REFRESH`` seconds."""
NOSCRIPT_REFRESH = 15

SCRIPT = """
"use strict";
(() => {
  const view = () => document.getElementById("view");
  const sorted = new Map();
  function sort(table, column, descending) {
    const headers = table.tHead.rows[0].cells;
    const numeric = headers[column].dataset.sort === "num";
    const value = (row) => row.cells[column].dataset.v ?? "";
    const rows = Array.from(table.tBodies[0].rows);
    rows.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === "" || y === "") return (x === "") - (y === "");
      const order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return descending ? -order : order;
    });
    table.tBodies[0].append(...rows);
    for (const header of headers) header.removeAttribute("aria-sort");
    headers[column].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  function prepare(root) {
    for (const table of root.querySelectorAll("table[data-table]")) {
      for (const header of table.querySelectorAll("th[data-sort]")) header.tabIndex = 0;
      const chosen = sorted.get(table.dataset.table);
      if (chosen) sort(table, ...chosen);
    }
  }
  function choose(header) {
    const table = header.closest("table");
    const was = sorted.get(table.dataset.table);
    const descending = was !== undefined && was[0] === header.cellIndex && !was[1];
    sorted.set(table.dataset.table, [header.cellIndex, descending]);
    sort(table, header.cellIndex, descending);
  }
  document.addEventListener("click", (event) => {
    const header = event.target.closest("th[data-sort]");
    if (header) choose(header);
  });
  document.addEventListener("keydown", (event) => {
    const header = event.target.closest("th[data-sort]");
    if (header && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      choose(header);
    }
  });
  async function refresh() {
    try {
      const answer = await fetch(location.href, { cache: "no-store" });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      const copy = new DOMParser().parseFromString(await answer.text(), "text/html");
      const next = copy.getElementById("view");
      if (next) {
        prepare(next);
        view().replaceWith(next);
      }
      document.body.classList.remove("offline");
    } catch (error) {
      document.body.classList.add("offline");
    }
    setTimeout(refresh, REFRESH_MS);
  }
  document.body.classList.add("sortable");
  prepare(view());
  setTimeout(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))

STYLE = r"""
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .3rem; }
p.meta { margin: .2rem 0 .6rem; color: #555; }
p.totals { font-size: 15px; margin: .4rem 0; }
#stale-view { display: none; color: #a40000; font-weight: 600; }
body.offline #stale-view { display: block; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid #ddd;
  vertical-align: top; white-space: nowrap; font-size: 13px; }
td.mirror, td.problem { white-space: normal; }
td.mirror { min-width: 9em; }
td.problem { min-width: 9em; }
th { font-weight: 600; background: #f4f4f6; white-space: normal; vertical-align: bottom; }
body.sortable th[data-sort] { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \25B2"; }
th[aria-sort="descending"]::after { content: " \25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 13px ui-monospace, monospace; overflow-wrap: anywhere; }
.state { display: inline-block; min-width: 6em; padding: 0 .4em; border-radius: .3em;
  font-weight: 600; text-align: center; }
.state.fresh { background: #d6f5d6; color: #0b5d0b; }
.state.syncing { background: #fff1c2; color: #6b4d00; }
.state.behind { background: #ffe3c2; color: #6b3a00; }
.state.stale { background: #ffd6d6; color: #8a0000; }
.state.unreachable { background: #e3d7f5; color: #4b2a7b; }
.state.unknown { background: #ececec; color: #555; }
dl.legend { display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; margin: .4rem 0 .8rem;
  font-size: 12px; color: #333; }
dl.legend div { display: flex; gap: .4rem; align-items: baseline; }
dl.legend .state { min-width: 0; }
dl.legend dd { margin: 0; }
figure { margin: .8rem 0 0; }
figcaption { font-size: 12px; color: #555; }
.error, .refused { color: #8a0000; overflow-wrap: anywhere; }
td i, p i { font-style: normal; color: #999; }
.urls, .protocols { font-size: 12px; color: #555; overflow-wrap: anywhere; }
.protocols { color: #333; }
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
