"""``POST /v1/report`` on the publisher: a mirror says how its sync ended.

The report is verified with that mirror's secret (the same Standard Webhooks signature as
webhooks, the same ±300 s window, replays answered "duplicate"); anything else is 401, a
body that is not a report 400, too large 413 (each refusal is counted per repository in
``report_refusals.py``, which the page and ``status`` show). A verified report makes the
publisher check the mirror's ``check_url`` at once — what is recorded is what the mirror
*serves*, never what it claims; a mirror without ``check_url`` is recorded as its report
says. A mirror without a shared secret (it verifies the upstream's public key) cannot sign:
its reports are hints, which only make the publisher check what it serves
(docs/design.md#freshness).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web

from mirrorhook import marker, signing
from mirrorhook.bodies import TooLargeError, content_type, read_body
from mirrorhook.checker import Checker
from mirrorhook.errors import MarkerError, SignatureError, TimestampError
from mirrorhook.events import EventStreams
from mirrorhook.freshness import Freshness
from mirrorhook.manifest_keeper import ManifestKeeper
from mirrorhook.message import REPORT_PATH, REPORT_TYPE
from mirrorhook.publisher_config import MirrorConfig, PublisherConfig, PublisherHost
from mirrorhook.record import DeliveryLog, Fields
from mirrorhook.replay import ReplayCache
from mirrorhook.repomd import RepomdVersions
from mirrorhook.report_refusals import Refused, RefusedReports
from mirrorhook.throttle import WARNING_PERIOD, Throttle

logger = logging.getLogger(__name__)

MAX_REPORT = 16384
"""Bytes a report may take: a few short fields."""
READ_DEADLINE = 10.0
HINT_PERIOD = 1.0
"""Seconds between checks that unsigned reports (hints) of one mirror may cause."""


class ReportDesk:
    """Where the publisher's trees take their mirrors' reports."""

    def __init__(self, publishers: PublisherHost) -> None:
        self.publishers = publishers
        self.checkers: dict[str | None, Checker] = {}
        """Each running tree's checker, by repository (registered by ``announcers.py``)."""
        self.records: dict[str | None, DeliveryLog] = {}
        """Each running tree's delivery record, by repository (registered the same way)."""
        self.replays = ReplayCache(signing.TOLERANCE)
        self.repomds: dict[str | None, RepomdVersions] = {}
        """Each running tree's ``repomd.xml`` versions, which its Metalinks vouch for
        (registered the same way)."""
        self._refusals = Throttle(WARNING_PERIOD)
        self.refusals = RefusedReports(publishers.state_dir)
        """The reports refused, for the page and ``status`` (flushed at shutdown)."""
        self._hints: dict[tuple[str | None, str], float] = {}
        self.manifests: dict[str | None, ManifestKeeper] = {}
        """Each running tree's manifests (registered by ``announcers.py``), for
        ``/v1/changes`` and ``/v1/manifest``."""
        self.streams: EventStreams | None = None
        """The event streams, when the publisher serves them (set by ``service.py``)."""

    def running(self) -> PublisherHost:
        """The running ``[publisher]`` section (``announcers.py`` swaps it on a reload)."""
        return self.publishers

    def freshness(self, tree: PublisherConfig) -> Freshness:
        """The tree's freshness as its running checker has it, else as recorded."""
        checker = self.checkers.get(tree.repo)
        return checker.freshness if checker is not None else Freshness(tree)

    def deliveries(self, tree: PublisherConfig) -> Fields:
        """What the tree's running publisher holds of its deliveries (nothing while none
        runs): from memory, never the file."""
        record = self.records.get(tree.repo)
        return {} if record is None else record.known()

    def next_checks(self, tree: PublisherConfig) -> dict[str, float | None]:
        """When the tree's running checker checks each mirror next (nothing while none runs)."""
        checker = self.checkers.get(tree.repo)
        return {} if checker is None else checker.next_checks()

    def refused_reports(self) -> dict[str | None, Refused]:
        """The reports refused so far, by repository (``None``: none known)."""
        return self.refusals.snapshot()

    def subscribers(self, tree: PublisherConfig) -> int | None:
        """The event streams open for the tree (``None``: the publisher serves none)."""
        return None if self.streams is None else self.streams.count(tree.repo)

    def repomd(self, tree: PublisherConfig) -> RepomdVersions:
        """The tree's ``repomd.xml`` versions: the running tree's, else as recorded."""
        versions = self.repomds.get(tree.repo)
        if versions is None:
            return RepomdVersions(tree.root, tree.state_dir, window=tree.stale_after)
        return versions

    def hinted(self, checker: Checker, mirror: MirrorConfig) -> web.Response:
        """An unsigned report: from a mirror without a shared secret (it verifies the
        upstream's public key), or from one that has just dropped its secret while the
        upstream still holds it. Nothing proves who sent it, so nothing it says is recorded;
        it only makes the publisher check what the mirror serves, at most once per
        ``HINT_PERIOD`` per mirror."""
        if mirror.check_url is None:
            return web.json_response({"status": "ignored: a hint, and nothing to check"})
        now = time.monotonic()
        key = (checker.freshness.config.repo, mirror.name)
        if now - self._hints.get(key, -HINT_PERIOD) >= HINT_PERIOD:
            self._hints[key] = now
            checker.check_soon(mirror)
        return web.json_response({"status": "checking"}, status=202)

    def refused(
        self,
        peer: str,
        status: int,
        reason: str,
        tree: PublisherConfig | None = None,
        mirror: MirrorConfig | None = None,
    ) -> web.Response:
        """Refuse a report: logged (at most once a minute) and counted for ``tree``, the
        repository it named when the publisher has it."""
        self._refusals.refused("report", peer, status, reason)
        named = None if mirror is None else mirror.name
        self.refusals.refused(None if tree is None else tree.repo, peer, status, reason, named)
        return web.json_response({"error": reason}, status=status)


DESK = web.AppKey("report_desk", ReportDesk)


def add_routes(app: web.Application, desk: ReportDesk) -> None:
    """Take reports on ``app``."""
    app[DESK] = desk
    app.router.add_post(REPORT_PATH, handle_report)


async def handle_report(request: web.Request) -> web.Response:  # noqa: PLR0911 - one per answer
    """Verify a mirror's report and check (or record) what it serves."""
    desk = request.app[DESK]
    peer = request.remote or "unix socket"
    if content_type(request) != "application/json":
        return desk.refused(peer, 415, "content type must be application/json")
    try:
        body = await read_body(request, MAX_REPORT, READ_DEADLINE)
    except TooLargeError:
        return desk.refused(peer, 413, f"body larger than {MAX_REPORT} bytes")
    except TimeoutError:
        return desk.refused(peer, 408, f"body not received within {READ_DEADLINE:g} s")
    data = _report_data(body)
    if data is None:
        return desk.refused(peer, 400, "not a mirror.synced report")
    tree = _tree(desk.publishers, data)
    mirror = None if tree is None else _mirror(tree, data)
    if tree is None or mirror is None:
        return desk.refused(peer, 401, "no such mirror here", tree)
    checker = desk.checkers.get(tree.repo)
    if checker is None:
        return web.json_response({"error": "this repository is not running"}, status=503)
    if mirror.secret is None or "webhook-signature" not in request.headers:
        return desk.hinted(checker, mirror)
    now = time.time()
    try:
        verified = signing.verify(mirror.secret, request.headers, body, now=now)
    except (SignatureError, TimestampError) as err:
        return desk.refused(peer, 401, f"bad signature: {err}", tree, mirror)
    if desk.replays.seen(verified.msg_id, verified.timestamp, now):
        return web.json_response({"status": "duplicate"})
    current, problem = _claimed(data)
    result = "synced" if data.get("result") == "synced" and current is not None else "failed"
    logger.info("report from %s: %s (%r)", mirror.name, result, current)
    checker.freshness.reported(mirror.name, current)
    if mirror.check_url is not None:
        checker.check_soon(mirror)
        return web.json_response({"status": "checking"}, status=202)
    # Nothing to check: recorded as the (verified) report says.
    error = None if result == "synced" else (problem or str(data.get("error") or "failed"))[:200]
    checker.freshness.observed(mirror.name, current if result == "synced" else None, error)
    return web.json_response({"status": "recorded"})


def _claimed(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """The marker value a report claims, held to the marker rules; else why it is none."""
    current = data.get("current")
    if not isinstance(current, str):
        return None, None
    try:
        value = marker.value_of(current.encode(), "the report's current")
    except MarkerError as err:
        return None, f"reported an invalid marker: {err.reason}"
    return (value or None), None


def _report_data(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("type") != REPORT_TYPE:
        return None
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("mirror"), str):
        return None
    repo = data.get("repo")
    return data if repo is None or isinstance(repo, str) else None


def _tree(publishers: PublisherHost, data: dict[str, Any]) -> PublisherConfig | None:
    """The tree a report is about: the only one, or the one ``data.repo`` names."""
    return publishers.repos[0] if publishers.single else publishers.named(str(data.get("repo")))


def _mirror(tree: PublisherConfig, data: dict[str, Any]) -> MirrorConfig | None:
    return next((m for m in tree.mirrors if m.name == data["mirror"]), None)
