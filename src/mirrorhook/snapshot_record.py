"""``state_dir/snapshots.json``: when each replaced snapshot was replaced, and what each
uses beyond the others (docs/design.md#snapshots). Written atomically and durably; one
that cannot be read reads as empty (the snapshots are then given their grace anew)."""

from __future__ import annotations

from pathlib import Path

from mirrorhook.receiver_config import ReceiverConfig
from mirrorhook.state import read_json, write_json

RECORD = "snapshots.json"
"""Under ``state_dir``."""


def _path(config: ReceiverConfig) -> Path:
    return config.state_dir / RECORD


def replaced_at(config: ReceiverConfig) -> dict[str, float]:
    """When each replaced snapshot was replaced (a record that cannot be read: none)."""
    return _numbers(_read(config).get("replaced"))


def own_bytes(config: ReceiverConfig) -> dict[str, int]:
    """The disk each replaced snapshot used beyond the others at the last expiry pass."""
    return {name: int(value) for name, value in _numbers(_read(config).get("own_bytes")).items()}


def _read(config: ReceiverConfig) -> dict[str, object]:
    return read_json(_path(config))


def _numbers(table: object) -> dict[str, float]:
    if not isinstance(table, dict):
        return {}
    return {
        name: float(at)
        for name, at in table.items()
        if isinstance(name, str) and isinstance(at, int | float) and not isinstance(at, bool)
    }


def write(
    config: ReceiverConfig,
    record: dict[str, float],
    used: dict[str, int] | None = None,
    *,
    durable: bool = True,
) -> None:
    """Note ``record`` (when each kept snapshot was replaced) and ``used`` (what each uses
    beyond the others; the noted values when ``None``)."""
    used = own_bytes(config) if used is None else used
    write_json(_path(config), {"replaced": record, "own_bytes": used}, durable=durable)
