"""The safety valve: a publish that removes more than ``max_delete_fraction`` of the files
of the mirror's tree is refused, and so is every sync after it, until one whose change
passes or ``mirrorhook sync --allow-deletes`` completes (docs/design.md#the-safety-valve).

An upstream that lost part of its tree (Alpine's edge repositories vanished upstream in
2024, and the loss reached mirrors within minutes) publishes a change whose ``removed``
holds much of the tree. The change says how many files the old tree held and how many it
removes (``from_files``, ``removed_files``, signed with it); the sync engine weighs it
before any transfer, so the tree and its marker stay as they were. A full transfer would
delete the same files, so it is held back too: a hold, noted in ``receiver.json``, refuses
every sync that brings no change to weigh.
"""

from __future__ import annotations

from mirrorhook import receiver_state
from mirrorhook.changes import Change
from mirrorhook.errors import SyncError
from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.receiver_records import Held
from mirrorhook.state import iso_time

ALLOW = "mirrorhook sync --allow-deletes"


class DeletesRefusedError(SyncError):
    """The safety valve refused this sync; nothing was transferred."""

    def __init__(self, reason: str, *, new: bool) -> None:
        super().__init__(
            f"{reason}; the tree and its marker were left as they were ({ALLOW} applies it)"
        )
        self.reason = reason
        self.new = new
        """Whether this sync found the reason (and must note the hold), not an older one."""


def too_many_deletes(config: ReceiverConfig, change: Change | None) -> str | None:
    """Why ``change`` removes too much, or ``None`` when it does not (or cannot say)."""
    if change is None or not change.from_files or change.removed_files is None:
        return None
    if change.removed_files <= config.max_delete_fraction * change.from_files:
        return None
    return (
        f"the publish of marker {change.to_marker!r} removes {change.removed_files} of the "
        f"{change.from_files} files of marker {change.from_marker!r} "
        f"({change.removed_files / change.from_files:.0%}), more than max_delete_fraction "
        f"{config.max_delete_fraction:g}"
    )


async def weigh(
    config: ReceiverConfig, change: Change | None, held: Held | None, now: float
) -> None:
    """``check``, noting a new hold in ``receiver.json`` before the refusal is raised."""
    try:
        check(config, change, held)
    except DeletesRefusedError as err:
        if err.new and change is not None:
            await receiver_state.hold(config, Held(change.to_marker, err.reason, iso_time(now)))
        raise


def check(config: ReceiverConfig, change: Change | None, held: Held | None) -> None:
    """Raise ``DeletesRefusedError`` unless this sync may go on: ``change`` (the one it
    would transfer by, or ``None``) removes no more than the valve lets through, and no
    hold stands that a change passing it would end."""
    if (reason := too_many_deletes(config, change)) is not None:
        raise DeletesRefusedError(reason, new=held is None or held.reason != reason)
    if held is not None and change is None:
        raise DeletesRefusedError(
            f"held since {held.since}: {held.reason} (no change to weigh this sync by)", new=False
        )
