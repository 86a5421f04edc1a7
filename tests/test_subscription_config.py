"""The subscription keys, checked: each problem named in one line with its file and key —
a mirror's `subscribe` and broker login, and the upstream's [publisher.mqtt]."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError
from mirrorhook.trigger import Via
from tests.helpers import key_pair, receiver_toml, write_secret


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [problem.removeprefix(f"{path}: ") for problem in caught.value.problems]


@pytest.mark.parametrize(
    ("subscribe", "problem"),
    [
        ("https://up/v1/events", "receiver.subscribe: must be an array of URLs, not a string"),
        (["ftp://up/x"], "receiver.subscribe: item 0: 'ftp://up/x': use https://"),
        (["https://user:pw@up/v1/events"], "receiver.subscribe: item 0: "),
        (["mqtts://broker:8883"], "receiver.subscribe: item 0: 'mqtts://broker:8883': an MQTT URL"),
        (["mqtt://broker/t?x=1"], "receiver.subscribe: item 0: 'mqtt://broker/t?x=1': an MQTT URL"),
        (["https:///v1/events"], "receiver.subscribe: item 0: 'https:///v1/events' has no host"),
        (["https://up:99999/x"], "receiver.subscribe: item 0: 'https://up:99999/x' is not a URL"),
        (["https://up/e", "https://up/e"], "receiver.subscribe: lists a URL twice"),
        ([1], "receiver.subscribe: item 0: each entry must be a URL"),
    ],
)
def test_a_bad_subscription_is_named(tmp_path: Path, subscribe: object, problem: str) -> None:
    _private, public = key_pair(tmp_path / "keys", "upstream")
    path = receiver_toml(
        tmp_path, upstream="rsync://up/m/", public_key_file=str(public), subscribe=subscribe
    )
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(problem), found


def test_a_subscription_needs_the_public_key_and_a_private_password_file(tmp_path: Path) -> None:
    path = receiver_toml(tmp_path, upstream="rsync://up/m/", subscribe=["https://up/v1/events"])
    assert problems(path) == [
        "receiver.subscribe: needs public_key_file: a subscription carries the upstream's "
        "v1a signature only"
    ]
    _private, public = key_pair(tmp_path / "keys", "upstream")
    password = tmp_path / "broker.password"
    write_secret(password, "pw")
    password.chmod(0o644)
    path = receiver_toml(
        tmp_path,
        upstream="rsync://up/m/",
        public_key_file=str(public),
        subscribe=["mqtts://broker/mirrorhook/up/ius"],
        mqtt_username="mirror-a",
        mqtt_password_file=str(password),
    )
    (found,) = problems(path)
    assert found.startswith(f"receiver.mqtt_password_file: MQTT password file {password} ")
    password.chmod(0o600)
    loaded = load_config(path).receiver
    assert loaded is not None
    assert loaded.mqtt_password is not None
    assert "pw" not in repr(loaded.mqtt_password)  # never shown
    assert loaded.subscribe[0].via is Via.MQTT
    assert loaded.subscribe[0].topic == "mirrorhook/up/ius"


@pytest.mark.parametrize(
    ("mqtt", "problem"),
    [
        ("", "publisher.mqtt.url: required key is missing"),
        ('url = "https://broker"', "publisher.mqtt.url: 'https://broker': use mqtts://"),
        ('url = "mqtt://u:p@broker"', "publisher.mqtt.url: 'mqtt://u:p@broker': no credentials"),
        ('url = "mqtt://broker/topic"', "publisher.mqtt.url: 'mqtt://broker/topic': the broker"),
        ('url = "mqtt://broker"\ntopic = "a/+/b"', "publisher.mqtt.topic: 'a/+/b': a topic"),
        ('url = "mqtt://broker"\ntopic = "/a"', "publisher.mqtt.topic: '/a': no leading"),
        ('url = "mqtt://broker"\ntopic = "a/{x}"', "publisher.mqtt.topic: 'a/{x}': only"),
        ('url = "mqtt://broker"\nport = 1', "publisher.mqtt.port: unknown key"),
    ],
)
def test_a_bad_broker_table_is_named(tmp_path: Path, mqtt: str, problem: str) -> None:
    private, _public = key_pair(tmp_path / "keys", "upstream")
    (tmp_path / "root").mkdir()
    path = tmp_path / "publisher.toml"
    path.write_text(
        f'[publisher]\nroot = "{tmp_path}/root"\nstate_dir = "{tmp_path}/state"\n'
        f'signing_key_file = "{private}"\n[publisher.mqtt]\n{mqtt}\n'
    )
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(problem), found
