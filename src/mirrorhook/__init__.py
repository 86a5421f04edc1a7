"""mirrorhook: push-triggered rsync mirroring."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Resolved on first use: importlib.metadata costs tens of milliseconds at start-up,
    # which every cron-driven `mirrorhook sync` would pay for nothing.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - deferred on purpose

        return version("mirrorhook")
    raise AttributeError(name)
