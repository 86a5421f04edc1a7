"""The replay cache: webhook ids seen within the tolerance window, bounded in size."""

from __future__ import annotations

import heapq

DEFAULT_CAPACITY = 100_000
"""Ids remembered at most: far more than honest senders use in ten minutes; about 20 MB
with UUIDs, and about 50 MB at the worst (ids of the longest allowed, 256 characters, each
re-signed)."""
SLACK = 64
"""Outdated expiry records the heap may hold beyond one per id before it is rebuilt."""


class ReplayCache:
    """Remembers each ``webhook-id`` until its timestamp plus the tolerance has passed.

    A replayed message outside that window fails the timestamp check instead, so nothing is
    forgotten too early. When full, the ids closest to expiry are dropped first. An id seen
    again with a later timestamp leaves its old expiry record in the heap; once those
    outnumber the ids (plus ``SLACK``) the heap is rebuilt from the live ones, so it never
    holds more than twice the ids and ``SLACK``, however fast a sender re-signs its ids.
    """

    def __init__(self, tolerance: float, capacity: int = DEFAULT_CAPACITY) -> None:
        self._tolerance = tolerance
        self._capacity = capacity
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, msg_id: str, timestamp: float, now: float) -> bool:
        """Record ``msg_id``; return whether it was already recorded (a replay).

        A hit with a later timestamp (a retry, re-signed with the same id) extends the
        entry to that timestamp's window: the retry itself can be replayed until then.
        """
        self._expire(now)
        expiry = timestamp + self._tolerance
        known = self._expiry.get(msg_id)
        if known is not None:
            if expiry > known:
                self._expiry[msg_id] = expiry
                self._push(expiry, msg_id)
            return True
        while len(self._expiry) >= self._capacity:
            self._pop()
        self._expiry[msg_id] = expiry
        self._push(expiry, msg_id)
        return False

    def _push(self, expiry: float, msg_id: str) -> None:
        heapq.heappush(self._heap, (expiry, msg_id))
        if len(self._heap) > 2 * len(self._expiry) + SLACK:
            # Rebuilt after at least as many pushes as it holds ids: linear time overall.
            self._heap = [(when, known) for known, when in self._expiry.items()]
            heapq.heapify(self._heap)

    def _expire(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            self._pop()

    def _pop(self) -> None:
        expiry, msg_id = heapq.heappop(self._heap)
        if self._expiry.get(msg_id) == expiry:
            del self._expiry[msg_id]
