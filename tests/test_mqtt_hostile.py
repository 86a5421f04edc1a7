"""The broker is trusted with nothing: contrib/mosquitto.conf (TLS, a login for the
publisher, read-only for everyone else) keeps others off the topics, and on a broker that
lets anyone write, forged and garbage messages sync nothing (docs/design.md#the-broker)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from mirrorhook import signing
from mirrorhook.broadcast import envelope_of
from mirrorhook.delivery import Message
from mirrorhook.keys import SigningKey
from mirrorhook.message import new_update
from tests.brokers import Mosquitto, mosquitto
from tests.helpers import (
    Processes,
    RsyncDaemon,
    free_port,
    key_pair,
    marker_of,
    needs,
    publish,
    subscribing_receiver,
    wait_until,
    write_secret,
)
from tests.scene import json_toml

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    needs(
        "mosquitto", "mosquitto_pub", "mosquitto_passwd", "openssl", package="mosquitto, openssl"
    ),
]

TOPIC = "mirrorhook/upstream.example.org/upstream.example.org"


def contrib_broker(folder: Path, port: int) -> str:
    """contrib/mosquitto.conf and its ACL, moved into ``folder`` and onto ``port``, with a
    certificate for 127.0.0.1 (its own authority) and the publisher's login."""
    folder.mkdir(parents=True)
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(folder / "broker.key"), "-out", str(folder / "broker.crt")),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(folder / "mirrorhook.passwd"), "upstream", "s3cret"],
        check=True,
        capture_output=True,
    )
    (folder / "mirrorhook.acl").write_text((REPO / "contrib" / "mosquitto.acl").read_text())
    text = (REPO / "contrib" / "mosquitto.conf").read_text()
    text = text.replace("listener 8883", f"listener {port} 127.0.0.1")
    text = text.replace("/etc/mosquitto/certs/", f"{folder}/").replace(
        "/etc/mosquitto/", f"{folder}/"
    )
    text = text.replace("/var/lib/mosquitto/", f"{folder}/")
    return text.replace("persistence true", "persistence false")


def forged_envelopes(genuine: SigningKey, other: SigningKey, current: str) -> list[bytes]:
    """Messages a hostile client publishes: another key's signature, a v1 (HMAC) one only,
    garbage, JSON that is no envelope, and a body over max_body."""
    now = time.time()
    update = new_update("CURRENT", current, "upstream.example.org", now)
    forged = envelope_of(Message.of(update), other).encode()
    secret = signing.Secret(b"0123456789abcdef0123456789abcdef")
    hmac = json.loads(forged)
    hmac["signature"] = signing.sign(secret, hmac["id"], hmac["timestamp"], hmac["body"].encode())
    huge = json.loads(envelope_of(Message.of(update), genuine).encode())
    huge["body"] = "x" * 70_000
    return [
        forged,
        json.dumps(hmac).encode(),
        b"\x00garbage{",
        b'{"id": 1}',
        json.dumps(huge).encode(),
    ]


def publisher_config(folder: Path, root: Path, private: Path, mqtt: dict[str, str]) -> Path:
    config = folder / "publisher.toml"
    text = json_toml(
        {
            "root": str(root),
            "state_dir": str(folder / "pstate"),
            "signing_key_file": str(private),
            "name": "upstream.example.org",
        },
        [],
    )
    config.write_text(
        text + "[publisher.mqtt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in mqtt.items())
    )
    return config


def test_only_the_publisher_writes_through_the_contrib_broker_over_tls(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    private, public = key_pair(tmp_path / "keys", "upstream")
    folder, port = tmp_path / "broker", free_port()
    broker = Mosquitto(folder, port, config=contrib_broker(folder, port))
    broker.start()
    try:
        password = tmp_path / "broker.password"
        write_secret(password, "s3cret")
        url = f"mqtts://127.0.0.1:{broker.port}"
        config = publisher_config(
            tmp_path,
            daemon.root,
            private,
            {
                "url": url,
                "username": "upstream",
                "password_file": str(password),
                "ca_file": str(folder / "broker.crt"),
            },
        )
        mirror = subscribing_receiver(
            tmp_path / "mirror",
            daemon.url,
            public,
            [f"{url}/{TOPIC}"],
            mqtt_ca_file=str(folder / "broker.crt"),
        )
        processes.serve(mirror, "mirror")
        tree = tmp_path / "mirror" / "mirror"
        wait_until(lambda: marker_of(tree) == "1", what="the start-up sync")
        wait_until(lambda: "subscribed to" in processes.log("mirror"), what="subscribed")
        # Anyone else may read but not write: a forged retained message is dropped.
        anonymous = [
            *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port)),
            *("--cafile", str(folder / "broker.crt"), "-t", TOPIC, "-r"),
        ]
        other = SigningKey.generate()
        for payload in forged_envelopes(other, other, "9"):
            subprocess.run([*anonymous, "-s"], input=payload, check=True, timeout=10)
        processes.serve(config, "publisher")
        publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
        wait_until(lambda: marker_of(tree) == "2", what="the publish over mqtts")
        assert "mqtt" in processes.log("mirror")
        log = processes.log("mirror")
        assert "ignored" not in log  # the ACL kept them out
        assert "refused" not in log
    finally:
        broker.stop()


def test_forged_and_garbage_messages_on_an_open_broker_sync_nothing(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """Another key, an HMAC signature only, garbage, no envelope, a body over max_body — a
    hundred times each: no sync, one log line a minute per kind, the daemon alive."""
    private, public = key_pair(tmp_path / "keys", "upstream")
    genuine = SigningKey.parse((private).read_text().strip())
    with mosquitto(tmp_path / "broker") as broker:
        mirror = subscribing_receiver(
            tmp_path / "mirror", daemon.url, public, [f"{broker.url}/{TOPIC}"]
        )
        process = processes.serve(mirror, "mirror")
        tree = tmp_path / "mirror" / "mirror"
        wait_until(lambda: marker_of(tree) == "1", what="the start-up sync")
        wait_until(lambda: "subscribed to" in processes.log("mirror"), what="subscribed")
        daemon.root.joinpath("CURRENT").write_text("2\n")  # a sync would take it
        payloads = forged_envelopes(genuine, SigningKey.generate(), "2") * 100
        pub = subprocess.Popen(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", TOPIC, "-l"],
            stdin=subprocess.PIPE,
        )
        assert pub.stdin is not None
        pub.stdin.write(b"\n".join(payload.replace(b"\n", b" ") for payload in payloads) + b"\n")
        pub.stdin.close()
        pub.wait(30)

        def logged() -> bool:
            log = processes.log("mirror")
            return "ignored" in log and "mqtt from" in log and "refused" in log

        wait_until(logged, what="the refusals logged")
        time.sleep(1)  # what would have been scheduled has had its backoff
        assert marker_of(tree) == "1"
        assert process.poll() is None
        log = processes.log("mirror")
        # A line a minute per kind (unreadable, bad signature), not five hundred.
        assert log.count("ignored") + log.count("refused") <= 2, log
        assert "sync started (mqtt" not in log
