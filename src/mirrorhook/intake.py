"""The one step every announcement goes through, whatever brought it: verify, drop replays,
schedule (docs/design.md#intake).

A webhook (``receiver.py``), the upstream's event stream and an MQTT broker
(``subscriptions.py``) all hand an ``Announcement`` to ``Intake.take`` and act on the
``Outcome``: the webhook handler turns it into an HTTP answer, a subscription just logs it.
After this step only ``Trigger.via`` says which transport it was.

Two rules differ by transport, both because a subscription is a broadcast:

- only ``v1a`` signatures count on a subscription (a shared secret cannot sign a
  broadcast, and a mirror's secret must not vouch for what every mirror receives);
- a subscription hands over the last announcement on connect, which may be older than the
  replay window. It is taken when its signature verifies and its id is new: it only makes
  the mirror read the upstream marker, never sync to an older tree, and at most one such
  old announcement a ``backoff`` is let through.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mirrorhook import message, receiver_state, signing
from mirrorhook.changes import Change, decode_change
from mirrorhook.errors import MarkerUnreadableError, PayloadError, SignatureError, TimestampError
from mirrorhook.keys import PublicKey
from mirrorhook.log import TreeLog
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.replay import ReplayCache
from mirrorhook.reporter import Reporter
from mirrorhook.scheduler import Scheduled, Scheduler
from mirrorhook.syncer import Syncer
from mirrorhook.throttle import WARNING_PERIOD, Throttle
from mirrorhook.trigger import Trigger, Via

logger = logging.getLogger(__name__)

OLD_IDS = 1024
"""Ids of announcements older than the replay window remembered per tree: a subscription
replays its last one on each reconnect, and each must cost nothing after the first."""


class Result(enum.StrEnum):
    """What became of an announcement; the value is the metrics' ``outcome`` label."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    UP_TO_DATE = "up_to_date"
    DUPLICATE = "duplicate"
    UNAVAILABLE = "unavailable"
    """The local marker cannot be read: not the sender's fault; it may retry."""
    STALE = "stale"
    BAD_SIGNATURE = "bad_signature"
    BAD_BODY = "bad_body"

    @property
    def refused(self) -> bool:
        """Whether the announcement was refused (it does not verify or does not parse)."""
        return self in (Result.STALE, Result.BAD_SIGNATURE, Result.BAD_BODY)


@dataclass(frozen=True, slots=True)
class Outcome:
    """An announcement's result, with the reason of a refusal and the delay of a sync."""

    result: Result
    reason: str = ""
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Announcement:
    """A signed announcement as it arrived: the Standard Webhooks headers and the body."""

    headers: Mapping[str, str]
    body: bytes
    via: Via
    peer: str
    """Who handed it over, for the logs: a webhook's client address, a stream's URL."""


@dataclass(slots=True)
class Intake:
    """One tree's intake: its keys, its replay cache, its scheduler."""

    config: ReceiverConfig
    syncer: Syncer
    scheduler: Scheduler
    reporter: Reporter
    clock: Callable[[], float] = time.time
    replays: ReplayCache = field(default_factory=lambda: ReplayCache(signing.TOLERANCE))
    refusals: dict[Result, Throttle] = field(default_factory=dict)
    """One warning a minute per kind of refusal: a flood must not flood the log."""
    changes_url: str | None = None
    """Where the publisher serves changes (the last verified announcement said; kept in
    ``receiver.json`` for the syncs, which fetch from it: ``change_fetch.py``)."""
    _old: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _old_taken_at: float = float("-inf")
    _log: TreeLog = field(init=False)

    def __post_init__(self) -> None:
        self._log = TreeLog(logger, self.config.name)
        self.changes_url = receiver_state.read(self.config).changes_url

    async def take(self, announcement: Announcement) -> Outcome:
        """Verify ``announcement`` and, when it names a marker this mirror lacks, schedule
        a sync. Never raises for anything the sender controls."""
        now = self.clock()
        checked = self._check(announcement, now)
        if isinstance(checked, Outcome):
            return checked
        verified, update = checked
        via, peer = announcement.via, announcement.peer
        try:
            local = self.syncer.local_marker()
        except MarkerUnreadableError as err:
            # Before the replay check, so that the sender's retry (same id) is not taken
            # for a duplicate.
            reason = f"cannot read the local marker: {err.reason}"
            self._log.error("%s %s from %s not accepted: %s", via, verified.msg_id, peer, reason)
            return Outcome(Result.UNAVAILABLE, reason)
        if self._replayed(verified, now):
            self._log.info("%s %s from %s: duplicate, ignored", via, verified.msg_id, peer)
            return Outcome(Result.DUPLICATE)
        await self._remember_reports(update, verified)
        await self._remember_changes(update.changes_url)
        if update.current == local:
            self._log.info(
                "%s %s (%s, marker %r): already up to date",
                via,
                verified.msg_id,
                update.source,
                update.current,
            )
            return Outcome(Result.UP_TO_DATE)
        change = self._change(update, via, peer)
        trigger = Trigger.announcement(via, update.source or peer, update.current, change)
        scheduled = self.scheduler.trigger(trigger)
        if isinstance(scheduled, Scheduled):
            return Outcome(Result.SCHEDULED, delay=scheduled.delay)
        return Outcome(Result.QUEUED)

    def _change(self, update: message.Update, via: Via, peer: str) -> Change | None:
        """The change the announcement carries, checked; ``None`` (a full sync) when it
        carries none or one that does not pass ``decode_change``."""
        if update.changes is None:
            return None
        try:
            return decode_change(json.dumps(update.changes).encode(), self.config.max_changes)
        except PayloadError as err:
            self._log.warning("%s from %s: its change is not used (%s)", via, peer, err)
            return None

    def _check(
        self, announcement: Announcement, now: float
    ) -> tuple[signing.Verified, message.Update] | Outcome:
        """The signature first, then the body; a refusal's outcome when either fails."""
        try:
            verified = self._verify(announcement, now)
        except TimestampError as err:
            return self._refuse(announcement, Result.STALE, str(err))
        except SignatureError as err:
            return self._refuse(announcement, Result.BAD_SIGNATURE, f"bad signature: {err}")
        try:
            update = message.decode(announcement.body)
        except PayloadError as err:
            return self._refuse(announcement, Result.BAD_BODY, str(err))
        if update.marker != self.config.marker:
            reason = (
                f"announcement is about marker {update.marker!r}, "
                f"this mirror follows {self.config.marker!r}"
            )
            return self._refuse(announcement, Result.BAD_BODY, reason)
        return verified, update

    def _verify(self, announcement: Announcement, now: float) -> signing.Verified:
        headers, body = announcement.headers, announcement.body
        if announcement.via is Via.WEBHOOK:
            return signing.verify(self.config.keys, headers, body, now=now)
        public = [key for key in self.config.keys if isinstance(key, PublicKey)]
        if not public:
            raise SignatureError("a subscription needs the upstream's public key (v1a)")
        # Any age: see the module's docstring; _replayed keeps old ones to one a backoff.
        return signing.verify(public, headers, body, now=now, tolerance=None)

    def _replayed(self, verified: signing.Verified, now: float) -> bool:
        if abs(verified.timestamp - now) <= signing.TOLERANCE:
            return self.replays.seen(verified.msg_id, verified.timestamp, now)
        if verified.msg_id in self._old:
            return True
        self._old[verified.msg_id] = None
        if len(self._old) > OLD_IDS:
            self._old.popitem(last=False)
        if now - self._old_taken_at < self.config.backoff:
            return True  # new, but old announcements may cost one marker read a backoff
        self._old_taken_at = now
        return False

    async def _remember_reports(self, update: message.Update, verified: signing.Verified) -> None:
        """Remember where to report and who this mirror is at the upstream (its reports say
        it), from an announcement meant for this mirror only: the upstream's v1a signature
        is the same for all its mirrors, so one mirror's webhook, replayed to another that
        holds a secret (and was sent its own v1 signature), must not rename it."""
        if self.config.secret is None or verified.scheme == "v1":
            await self.reporter.remember(update.report_url, update.mirror, update.repo)

    async def _remember_changes(self, url: str | None) -> None:
        if url is None or url == self.changes_url:
            return
        self.changes_url = url
        try:
            await receiver_state.remember_changes(self.config, url)
        except OSError as err:
            self._log.warning("cannot remember the changes URL: %s", err.strerror)

    def _refuse(self, announcement: Announcement, result: Result, reason: str) -> Outcome:
        if (throttle := self.refusals.get(result)) is None:
            throttle = self.refusals[result] = Throttle(WARNING_PERIOD)
        throttle.refused(str(announcement.via), announcement.peer, None, reason)
        return Outcome(result, reason)
