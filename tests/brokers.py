"""Real MQTT brokers for the tests: Debian's ``mosquitto``, started by the test on a free
loopback port with a generated config (never the system service) and stopped after."""

from __future__ import annotations

import contextlib
import getpass
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, wait_for_port


@dataclass
class Mosquitto:
    """One broker: its port, its folder (config, log, persistence) and its process."""

    folder: Path
    port: int
    extra: str = ""
    """Lines after the listener and persistence ones (default: anonymous clients allowed)."""
    config: str | None = None
    """A whole config of its own instead (its listener on ``port``)."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "mosquitto.conf"
        # As root it would switch to the mosquitto user, which cannot write here.
        user = f"user {getpass.getuser()}\nlog_dest file {self.folder}/mosquitto.log\n"
        config.write_text(
            user + self.config
            if self.config is not None
            else f"listener {self.port} 127.0.0.1\n"
            + user
            + "persistence true\n"
            + f"persistence_location {self.folder}/\n"
            + (self.extra or "allow_anonymous true\n")
        )
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        """Stop it as its service would be stopped (it saves its retained messages)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def mosquitto(folder: Path, extra: str = "") -> Iterator[Mosquitto]:
    broker = Mosquitto(folder, free_port(), extra)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
