"""The exception hierarchy: every failure a user can meet, with a one-line ``str``."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path


class MirrorhookError(Exception):
    """Base class of every error mirrorhook reports to a user."""


class DeliveryKind(enum.StrEnum):
    """What a failed delivery means for the next attempt."""

    TRANSIENT = "transient"  # 429, 5xx, network errors, timeouts: retry with backoff
    MISCONFIGURED = "misconfigured"  # 400, 401, 3xx, other 4xx: retry at the longest interval
    GONE = "gone"  # 410: the mirror asks us to stop sending this marker


class DeliveryError(MirrorhookError):
    """A webhook was not accepted; ``status`` is the HTTP status when there was an answer."""

    def __init__(
        self,
        kind: DeliveryKind,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.kind = kind
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(kind, reason, status)

    def __str__(self) -> str:
        return self.reason


class ListenError(MirrorhookError):
    """An address in ``listen`` cannot be bound."""

    def __init__(self, listen: object, reason: str) -> None:
        self.listen = str(listen)
        self.reason = reason
        super().__init__(self.listen, reason)

    def __str__(self) -> str:
        return f"cannot listen on {self.listen}: {self.reason}"


class DemoError(MirrorhookError):
    """The demo network did not come up or did not converge."""


class ConfigError(MirrorhookError):
    """The configuration is unusable; ``problems`` lists each one as ``FILE: key: problem``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class SignatureError(MirrorhookError):
    """A webhook's signature headers are missing, malformed, stale or do not verify."""


class TimestampError(SignatureError):
    """A webhook's timestamp is outside the tolerance window (often a clock out of sync)."""

    def __init__(self, skew: int, tolerance: int) -> None:
        self.skew = skew
        self.tolerance = tolerance
        super().__init__(skew, tolerance)

    def __str__(self) -> str:
        direction = "ahead of" if self.skew > 0 else "behind"
        return (
            f"timestamp is {abs(self.skew)} s {direction} this host's clock, outside the "
            f"±{self.tolerance} s window (check NTP on both hosts)"
        )


class PayloadError(MirrorhookError):
    """A webhook body is not the JSON document of the wire format."""


class ChangeError(PayloadError):
    """A change document (docs/design.md#changes) is malformed, names an unsafe path, or
    lists more paths than the receiver takes: it is refused whole, and the mirror does a
    full sync instead."""


class ManifestError(MirrorhookError):
    """A manifest (docs/design.md#manifests) could not be built from a tree, or a stored
    or received one is not one: a wrong magic or version, truncated, or inconsistent."""

    def __init__(self, source: Path | str, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(self.source, reason)

    def __str__(self) -> str:
        return f"manifest {self.source}: {self.reason}"


class LockedError(MirrorhookError):
    """Another process holds the sync lock of this tree."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(path)

    def __str__(self) -> str:
        return f"another sync holds the lock {self.path}"


class MarkerError(MirrorhookError):
    """A marker file was refused: a symlink, not a regular file, unreadable, or not one
    short line of printable text. ``reason`` never quotes the file's content (it may be a
    secret that a symlink pointed at)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(self.path, reason)

    def __str__(self) -> str:
        return f"refusing marker {self.path}: {self.reason}"


class MarkerUnreadableError(MarkerError):
    """A marker file that may be fine could not be opened or read (permissions, an I/O
    error, a path through a non-folder): trouble with the host, not with the file."""


class SyncError(MirrorhookError):
    """A sync could not complete; the local marker was left as it was."""


class NoMarkerError(SyncError):
    """The upstream has no marker file: refusing to sync (an empty upstream would wipe us)."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__(source)

    def __str__(self) -> str:
        return (
            f"upstream has no marker at {self.source}: refusing to sync from it "
            "(an unmounted or emptied upstream would make --delete wipe the mirror)"
        )


class UpstreamMarkerError(SyncError):
    """The upstream's marker breaks the marker rules: the sync installs nothing of it."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(source, reason)

    def __str__(self) -> str:
        return (
            f"refusing the upstream marker {self.source}: {self.reason}; "
            "the local marker was left as it was"
        )


class RsyncError(SyncError):
    """rsync ended with a failing exit code; ``stderr_tail`` holds its last error lines."""

    def __init__(self, returncode: int, stderr_tail: Sequence[str], *, transient: bool) -> None:
        self.returncode = returncode
        self.stderr_tail = tuple(stderr_tail)
        self.transient = transient
        super().__init__(returncode, self.stderr_tail)

    def __str__(self) -> str:
        kind = "transient" if self.transient else "permanent"
        return f"rsync exited with code {self.returncode} ({kind}): {self.cause}"

    @property
    def cause(self) -> str:
        """rsync's most telling line: a daemon's ``@ERROR``, else the last ``rsync:`` line.

        rsync ends with a generic summary ("rsync error: ... (code 5)"); the line that says
        what went wrong ("@ERROR: Unknown module 'x'") comes before it.
        """
        for prefix in ("@ERROR", "rsync: "):
            for line in reversed(self.stderr_tail):
                if line.startswith(prefix):
                    return line
        return self.stderr_tail[-1] if self.stderr_tail else "no error output"


class RsyncTimeoutError(SyncError):
    """rsync ran longer than the configured ``timeout`` and was killed."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(timeout)

    def __str__(self) -> str:
        return f"rsync was killed after running for the configured timeout of {self.timeout:g} s"
