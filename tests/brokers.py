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


@dataclass
class NatsNode:
    """One node of a NATS cluster with JetStream and its MQTT listener on."""

    name: str
    folder: Path
    client_port: int
    cluster_port: int
    mqtt_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


@contextlib.contextmanager
def nats_cluster(folder: Path, size: int = 3) -> Iterator[list[NatsNode]]:
    """``size`` nats-server processes routed to each other on loopback, each with its MQTT
    listener, started by the test and stopped after it."""
    nodes = [
        NatsNode(f"n{index}", folder / f"n{index}", free_port(), free_port(), free_port())
        for index in range(size)
    ]
    try:
        for node in nodes:
            node.folder.mkdir(parents=True)
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{other.cluster_port}"'
                for other in nodes
                if other is not node
            )
            config = node.folder / "nats.conf"
            config.write_text(
                f"server_name: {node.name}\n"
                f"listen: 127.0.0.1:{node.client_port}\n"
                f'jetstream {{ store_dir: "{node.folder}/js" }}\n'
                f"cluster {{ name: mirrorhook, listen: 127.0.0.1:{node.cluster_port}, "
                f"routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port} }}\n"
            )
            with (node.folder / "nats.log").open("wb") as log:
                node.process = subprocess.Popen(
                    ["nats-server", "-c", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        for node in nodes:
            wait_for_port(node.mqtt_port, timeout=30)
        yield nodes
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in nodes:
            if node.process is not None:
                node.process.wait(15)
