"""The systemd notification protocol (sd_notify(3)): READY, RELOADING, STOPPING, STATUS and
WATCHDOG.

A datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (``@`` = abstract namespace);
a no-op when it is not set. A few lines, so no dependency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd when running under ``Type=notify``."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if watched else None
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None."""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` lines; errors are logged, never raised (systemd may be gone)."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError as err:
            logger.warning("cannot notify systemd at %s: %s", self._address, err)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """A reload (SIGHUP) begins: ``systemctl reload`` waits for the next ``ready``."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=shutting down")

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop until cancelled: a stuck loop stops the
        pings, and systemd restarts the service."""
        if self.watchdog_interval is None or not self._address:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
