"""The webhook body: one ``mirror.updated`` event naming the new marker value.

See docs/design.md#body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mirrorhook.errors import PayloadError

EVENT_TYPE = "mirror.updated"
REPORT_TYPE = "mirror.synced"
HOOK_PATH = "/v1/hook"
"""Where a receiver takes webhooks (``/v1/hook/NAME`` per repository in the host form)."""
REPORT_PATH = "/v1/report"
CHANGES_PATH = "/v1/changes"
"""Where a publisher serves the change to a repository's current marker: ``/v1/changes/NAME``."""
MANIFEST_PATH = "/v1/manifest"
"""Where it serves a repository's current manifest: ``/v1/manifest/NAME``."""
"""Where a publisher takes mirrors' reports, under its ``public_url``."""
MAX_FIELD_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class Update:
    """A publisher's announcement: the tree's ``marker`` file now holds ``current``."""

    marker: str
    current: str
    source: str
    timestamp: str
    repo: str | None = None
    """The repository, when the publisher has several (``data.repo``)."""
    report_url: str | None = None
    """Where the mirror reports how its sync ended (``data.report_url``), when asked to."""
    mirror: str | None = None
    """The mirror's name at the upstream, which the report must carry (``data.mirror``)."""
    changes_url: str | None = None
    """Where the change to ``current`` from an older marker is served, signed
    (``data.changes_url``; docs/design.md#changes)."""
    changes: dict[str, Any] | None = None
    """The change from the previous publish, when small (``data.changes``): a
    ``mirror.changes`` document, checked by ``changes.decode_change`` where it is used."""

    def encode(self) -> bytes:
        """Return the JSON body that goes on the wire."""
        data: dict[str, Any] = {
            "marker": self.marker,
            "current": self.current,
            "source": self.source,
        }
        for key in ("repo", "report_url", "mirror", "changes_url", "changes"):
            if (value := getattr(self, key)) is not None:
                data[key] = value
        document = {"type": EVENT_TYPE, "timestamp": self.timestamp, "data": data}
        return json.dumps(document, separators=(",", ":")).encode("utf-8")


def new_update(
    marker: str,
    current: str,
    source: str,
    now: float,
    *,
    repo: str | None = None,
    report_url: str | None = None,
) -> Update:
    """Return an update stamped with ``now`` in RFC 3339 form."""
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return Update(
        marker=marker,
        current=current,
        source=source,
        timestamp=stamp,
        repo=repo,
        report_url=report_url,
    )


def json_object(
    body: bytes, what: str = "body", error: type[PayloadError] = PayloadError
) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object; raise ``error`` naming ``what`` otherwise."""
    try:
        document: Any = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} is not UTF-8") from None
    except ValueError as err:
        raise error(f"{what} is not JSON: {err}") from None
    except RecursionError:
        raise error(f"{what} is not JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise error(f"{what} is not a JSON object")
    return document


def decode(body: bytes) -> Update:
    """Parse a webhook body; raise ``PayloadError`` saying what does not fit the schema."""
    document = json_object(body)
    if document.get("type") != EVENT_TYPE:
        raise PayloadError(f"type must be {EVENT_TYPE!r}")
    data = document.get("data")
    if not isinstance(data, dict):
        raise PayloadError("data must be an object")
    optional = {
        key: _optional(data, key) for key in ("repo", "report_url", "mirror", "changes_url")
    }
    changes = data.get("changes")
    if changes is not None and not isinstance(changes, dict):
        raise PayloadError("data.changes must be an object")
    return Update(
        marker=_field(data, "marker", "data."),
        current=_field(data, "current", "data."),
        source=_field(data, "source", "data."),
        timestamp=_field(document, "timestamp", ""),
        changes=changes,
        **optional,
    )


def _optional(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not (isinstance(value, str) and len(value) <= MAX_FIELD_LENGTH):
        raise PayloadError(f"data.{key} must be a string")
    return value


def _field(table: dict[str, Any], key: str, prefix: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise PayloadError(f"{prefix}{key} must be a string")
    if len(value) > MAX_FIELD_LENGTH:
        raise PayloadError(f"{prefix}{key} is longer than {MAX_FIELD_LENGTH} characters")
    return value
