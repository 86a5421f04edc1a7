"""The intake every announcement enters (docs/design.md#intake): the rules that differ for a
subscription — v1a only, any age once per id and at most one old one a backoff — against a
real receiver (its scheduler does not run: a scheduled sync is all these tests look for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorhook import message, signing
from mirrorhook.fleet import build_receiver
from mirrorhook.intake import Announcement, Intake, Result
from mirrorhook.keys import SigningKey
from mirrorhook.trigger import Via
from tests.helpers import publish, receiver_config

NOW = 1_800_000_000.0


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def make_intake(tmp_path: Path, key: SigningKey, **overrides: object) -> Intake:
    (tmp_path / "upstream.pub").write_text(f"{key.public()}\n")
    settings: dict[str, object] = {"public_key_file": str(tmp_path / "upstream.pub")}
    settings.update(overrides)
    config = receiver_config(
        tmp_path, upstream="rsync://127.0.0.1:9/up/", backoff=60, **settings
    ).receiver
    assert config is not None
    config.target.mkdir(parents=True, exist_ok=True)
    publish(config.target, "old")
    intake = build_receiver(config).intake
    intake.clock = lambda: NOW
    return intake


def announcement(
    signers: signing.Signer | list[signing.Signer],
    current: str,
    *,
    via: Via = Via.EVENTS,
    msg_id: str = "msg_1",
    timestamp: float = NOW,
) -> Announcement:
    body = message.new_update("CURRENT", current, "up", timestamp).encode()
    headers = signing.signed_headers(signers, msg_id, int(timestamp), body)
    return Announcement(headers, body, via, "https://up/v1/events")


async def test_a_fresh_announcement_schedules_a_sync_named_after_its_transport(
    tmp_path: Path, key: SigningKey
) -> None:
    intake = make_intake(tmp_path, key)
    outcome = await intake.take(announcement(key, "new", via=Via.MQTT))
    assert outcome.result is Result.SCHEDULED
    assert intake.scheduler.pending
    assert intake.scheduler._pending is not None
    assert intake.scheduler._pending.trigger.via is Via.MQTT


async def test_a_subscription_takes_only_v1a_even_from_a_mirror_holding_the_secret(
    tmp_path: Path, key: SigningKey
) -> None:
    """A shared secret cannot sign a broadcast: on a subscription a v1 signature with this
    mirror's own secret is refused, while the same webhook by POST passes."""
    intake = make_intake(tmp_path, key)
    secret = intake.config.secret
    assert secret is not None
    refused = await intake.take(announcement(secret, "new"))
    assert (refused.result, intake.scheduler.pending) == (Result.BAD_SIGNATURE, False)
    taken = await intake.take(announcement(secret, "new", via=Via.WEBHOOK))
    assert taken.result is Result.SCHEDULED


async def test_an_old_last_value_is_taken_once_and_old_ones_at_most_one_a_backoff(
    tmp_path: Path, key: SigningKey
) -> None:
    """The last value on connect may be hours old: taken when new (it only makes the mirror
    read the upstream marker); the same id again is a duplicate, and a second old id
    within the backoff is held back. A webhook that old is refused as stale."""
    intake = make_intake(tmp_path, key)
    hours_ago = NOW - 7200
    first = await intake.take(announcement(key, "new", msg_id="a", timestamp=hours_ago))
    assert first.result is Result.SCHEDULED
    intake.scheduler.discard_pending()
    again = await intake.take(announcement(key, "new", msg_id="a", timestamp=hours_ago))
    assert again.result is Result.DUPLICATE
    other = await intake.take(announcement(key, "new", msg_id="b", timestamp=hours_ago))
    assert (other.result, intake.scheduler.pending) == (Result.DUPLICATE, False)
    intake.clock = lambda: NOW + 61  # one backoff later: the next old one is taken
    later = await intake.take(announcement(key, "new", msg_id="c", timestamp=hours_ago))
    assert later.result is Result.SCHEDULED
    webhook = await intake.take(
        announcement(key, "new", via=Via.WEBHOOK, msg_id="d", timestamp=hours_ago)
    )
    assert webhook.result is Result.STALE


async def test_a_replayed_id_is_a_duplicate_whichever_transport_brings_it(
    tmp_path: Path, key: SigningKey
) -> None:
    """A mirror with a webhook and a subscription gets each announcement twice: the second,
    by either transport, costs nothing."""
    intake = make_intake(tmp_path, key)
    assert (await intake.take(announcement(key, "new", via=Via.WEBHOOK))).result is (
        Result.SCHEDULED
    )
    assert (await intake.take(announcement(key, "new"))).result is Result.DUPLICATE


async def test_a_subscription_needs_the_public_key(tmp_path: Path, key: SigningKey) -> None:
    """Without the upstream's public key nothing that comes by subscription verifies, even
    with a v1a signature beside this mirror's own v1 one."""
    intake = make_intake(tmp_path, key, public_key_file=None)
    secret = intake.config.secret
    assert secret is not None
    outcome = await intake.take(announcement([secret, key], "new"))
    assert outcome.result is Result.BAD_SIGNATURE
    assert "public key" in outcome.reason
