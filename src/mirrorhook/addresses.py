"""Addresses: where a receiver listens, and an rsync source as it may be shown.

``parse_listen`` reads ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:/PATH``; ``redact_upstream``
drops the login from an rsync source before it reaches a log line or a status page, and
``upstream_host`` keeps only its host (for a trace file).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class Listen:
    """One address the receiver listens on: TCP ``host``/``port`` or a unix socket ``path``."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def redact_upstream(upstream: str) -> str:
    """Return ``upstream`` without a ``user@`` or ``user:password@`` part, for status and logs."""
    if upstream.startswith("/"):
        return upstream
    scheme = "rsync://" if upstream.startswith("rsync://") else ""
    rest = upstream.removeprefix(scheme)
    authority = rest.split("/", 1)[0]
    user, at, _host = authority.partition("@")
    if not at or "::" in user:
        return upstream
    return scheme + rest[len(user) + 1 :]


def upstream_host(upstream: str) -> str | None:
    """Return the host an rsync source names, without login or port; ``None`` for a local
    path. The source is one that config checking accepted."""
    if upstream.startswith("/"):
        return None
    if upstream.startswith("rsync://"):
        return urllib.parse.urlsplit(upstream).hostname
    authority = upstream.split("/", 1)[0]  # [USER@]HOST::MODULE or [USER@]HOST:PATH
    return authority.split(":", 1)[0].rpartition("@")[2]


def parse_listen(text: str) -> Listen:
    """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:/ABSOLUTE/PATH``."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"unix socket path must be absolute, not {text!r}")
        return Listen(path=Path(path))
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, [IPV6]:PORT or unix:/PATH, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:8873, not {text!r}")
    elif not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"not a host name or address: {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, not {port_text!r}")
    return Listen(host=host, port=int(port_text))
