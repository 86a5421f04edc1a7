"""The webhook service: every row of docs/design.md#receiver-answers, against the real aiohttp
app."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mirrorhook import message, signing
from mirrorhook.fleet import build_receiver
from mirrorhook.intake import Result
from mirrorhook.keys import SigningKey
from mirrorhook.message import HOOK_PATH
from mirrorhook.receiver import Receiver, background, make_app
from mirrorhook.receiver_state import receiver_state_path
from mirrorhook.state import read_json
from tests.helpers import (
    ClientFactory,
    RsyncDaemon,
    counting_rsync,
    publish,
    receiver_config,
    signed_webhook,
    tree_invocations,
    trees_equal,
    until,
)

Client = TestClient[web.Request, web.Application]


def make_receiver(tmp_path: Path, upstream: str, **overrides: object) -> Receiver:
    config = receiver_config(tmp_path, upstream=upstream, **overrides).receiver
    assert config is not None
    return build_receiver(config)


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    """A receiver whose upstream is never contacted (its background tasks do not run)."""
    return make_receiver(tmp_path, "rsync://127.0.0.1:9/up/")


@pytest.fixture
async def client(aiohttp_client: ClientFactory, receiver: Receiver) -> Client:
    return await aiohttp_client(make_app(receiver))


async def post(
    client: Client, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    async with client.post(HOOK_PATH, data=body, headers=headers) as response:
        return response.status, await response.json()


def assert_nothing_scheduled(receiver: Receiver) -> None:
    assert not receiver.scheduler.pending


# --- accepted -------------------------------------------------------------------------


async def wait_until_synced(receiver: Receiver, marker: str) -> None:
    await until(
        lambda: receiver.syncer.local_marker() == marker and receiver.scheduler.phase == "idle",
        30,
    )


async def test_valid_webhook_syncs_the_mirror(
    tmp_path: Path, daemon: RsyncDaemon, aiohttp_client: ClientFactory
) -> None:
    """A valid webhook → 202, then the mirror equals the upstream; the same marker again → 200
    up-to-date and no sync follows."""
    log = tmp_path / "rsync.log"
    receiver = make_receiver(tmp_path, daemon.url, rsync=str(counting_rsync(tmp_path, log)))
    app = make_app(receiver)
    app.cleanup_ctx.append(background)
    client = await aiohttp_client(app)
    await wait_until_synced(receiver, "1")  # the startup check's sync
    publish(daemon.root, "2", {"dir3/new.rpm": "new\n", "dir1/file1.rpm": "changed\n"})
    (daemon.root / "dir2" / "file2.rpm").unlink()
    status, answer = await post(client, *signed_webhook(receiver.config.secret, "2"))
    assert (status, answer["status"]) == (202, "scheduled")
    await wait_until_synced(receiver, "2")
    assert trees_equal(daemon.root, receiver.config.target)
    transfers = len(tree_invocations(log))
    recorded = read_json(receiver_state_path(receiver.config))
    status, answer = await post(client, *signed_webhook(receiver.config.secret, "2"))
    assert (status, answer) == (200, {"status": "up-to-date"})
    # Nothing queued, waiting or running, and no sync since the last: none will come (a
    # sync of an up-to-date tree transfers nothing, so the transfers alone cannot tell).
    assert (receiver.scheduler.phase, receiver.scheduler.pending) == ("idle", False)
    assert read_json(receiver_state_path(receiver.config)) == recorded
    assert len(tree_invocations(log)) == transfers


@pytest.mark.slow
async def test_webhooks_during_a_sync_produce_one_follow_up(
    tmp_path: Path,
    daemon: RsyncDaemon,
    aiohttp_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 valid webhooks with distinct ids during a running sync → exactly one more sync."""
    log = tmp_path / "rsync.log"
    slow = counting_rsync(tmp_path, log, delay=1.5)
    receiver = make_receiver(tmp_path, daemon.url, rsync=str(slow))
    app = make_app(receiver)
    app.cleanup_ctx.append(background)
    client = await aiohttp_client(app)
    await wait_until_synced(receiver, "1")  # the startup check's sync
    before = len(tree_invocations(log))
    caplog.set_level(logging.INFO, logger="mirrorhook.syncer")
    caplog.clear()
    publish(daemon.root, "2", {"dir0/two.rpm": "two\n"})
    status, _ = await post(client, *signed_webhook(receiver.config.secret, "2"))
    assert status == 202
    await until(lambda: len(tree_invocations(log)) != before, 20)
    publish(daemon.root, "3", {"dir0/three.rpm": "three\n"})
    secret = receiver.config.secret
    answers = await asyncio.gather(
        *(post(client, *signed_webhook(secret, "3")) for _ in range(200))
    )
    assert receiver.scheduler.phase == "syncing", "all 200 arrived during the first sync"
    assert {(status, answer["status"]) for status, answer in answers} == {(202, "queued")}
    await wait_until_synced(receiver, "3")
    # The follow-up was queued during the first sync: nothing queued or running means it
    # has run, and nothing follows it.
    await until(lambda: receiver.scheduler.phase == "idle" and not receiver.scheduler.pending)
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sync started")]
    assert len(started) == 2, started
    # The first sync saw marker 3 appear during its stage 1 and transferred again; the
    # follow-up found the mirror current and transferred nothing.
    assert len(tree_invocations(log)) - before == 2
    assert not receiver.scheduler.pending
    assert trees_equal(daemon.root, receiver.config.target)


async def test_replayed_webhook_is_a_duplicate(receiver: Receiver, client: Client) -> None:
    """The same webhook-id twice within the window → 200 duplicate, nothing more scheduled."""
    body, headers = signed_webhook(receiver.config.secret, "7")
    assert (await post(client, body, headers))[0] == 202
    status, answer = await post(client, body, headers)
    assert (status, answer) == (200, {"status": "duplicate"})


async def test_a_retry_can_not_be_replayed_once_the_first_attempts_window_ends(
    receiver: Receiver, client: Client
) -> None:
    """A publisher's retry keeps the id and carries a later timestamp: replaying that retry
    after the first attempt's window (but within its own) is still a duplicate."""
    now = 1_800_000_000.0
    receiver.intake.clock = lambda: now
    first = signed_webhook(receiver.config.secret, "7", msg_id="msg_retried", timestamp=int(now))
    assert (await post(client, *first))[0] == 202
    now += 250
    retry = signed_webhook(receiver.config.secret, "7", msg_id="msg_retried", timestamp=int(now))
    assert await post(client, *retry) == (200, {"status": "duplicate"})
    now += 100  # the first attempt's window has ended; the retry's has not
    assert await post(client, *retry) == (200, {"status": "duplicate"})


async def test_an_unreadable_local_marker_is_a_503_with_the_reason(
    receiver: Receiver, client: Client
) -> None:
    """The target is not a folder (a failed mount, say): 503 naming the problem, logged,
    nothing scheduled; once the target is back, the publisher's retry (same id) schedules
    the sync instead of being taken for a duplicate."""
    receiver.config.target.parent.mkdir(parents=True, exist_ok=True)
    receiver.config.target.write_text("not a folder")
    webhook = signed_webhook(receiver.config.secret, "7", msg_id="msg_retried")
    status, answer = await post(client, *webhook)
    assert status == 503
    assert answer == {"error": "cannot read the local marker: cannot open it: Not a directory"}
    assert_nothing_scheduled(receiver)
    receiver.config.target.unlink()
    retry = signed_webhook(receiver.config.secret, "7", msg_id="msg_retried")
    status, answer = await post(client, *retry)
    assert (status, answer["status"]) == (202, "scheduled")
    assert receiver.scheduler.pending


async def test_a_flood_of_refusals_logs_one_line_a_minute(
    receiver: Receiver, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused webhooks are counted in /metrics; the log gets one line per kind per minute,
    then says how many it held back."""
    caplog.set_level(logging.WARNING, logger="mirrorhook.receiver")
    now = 1_800_000_000.0
    for _ in range(5):
        body, headers = signed_webhook(receiver.config.secret, "7")
        headers["webhook-signature"] = "v1,AAAA"
        assert (await post(client, body, headers))[0] == 401
    assert len(caplog.records) == 1
    throttle = receiver.intake.refusals[Result.BAD_SIGNATURE]
    throttle._clock = lambda: now
    body, headers = signed_webhook(receiver.config.secret, "7")
    headers["webhook-signature"] = "v1,AAAA"
    assert (await post(client, body, headers))[0] == 401
    assert len(caplog.records) == 2
    assert "(4 more refused so since the last such line)" in caplog.records[1].getMessage()


async def test_second_distinct_webhook_while_waiting_is_queued(
    receiver: Receiver, client: Client
) -> None:
    """A sync already waiting covers the next webhook: 202 queued."""
    assert (await post(client, *signed_webhook(receiver.config.secret, "7")))[0] == 202
    status, answer = await post(client, *signed_webhook(receiver.config.secret, "8"))
    assert (status, answer) == (202, {"status": "queued"})


# --- refused ------------------------------------------------------------------------------


def _other_secret() -> signing.Secret:
    return signing.Secret.parse(signing.new_secret())


async def test_signature_by_another_secret_is_401(receiver: Receiver, client: Client) -> None:
    """A mirror configured with another secret rejects the webhook."""
    status, answer = await post(client, *signed_webhook(_other_secret(), "7"))
    assert status == 401
    assert "signature" in str(answer["error"])
    assert_nothing_scheduled(receiver)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda h: h.pop("webhook-signature"), id="no signature"),
        pytest.param(lambda h: h.pop("webhook-id"), id="no id"),
        pytest.param(lambda h: h.pop("webhook-timestamp"), id="no timestamp"),
        pytest.param(lambda h: h.update({"webhook-signature": "v1"}), id="no comma"),
        pytest.param(lambda h: h.update({"webhook-signature": "v1,%%%"}), id="bad base64"),
        pytest.param(lambda h: h.update({"webhook-signature": "v1,,,"}), id="many commas"),
        pytest.param(lambda h: h.update({"webhook-timestamp": "12.5"}), id="fractional time"),
        pytest.param(lambda h: h.update({"webhook-timestamp": "soon"}), id="word time"),
        pytest.param(lambda h: h.update({"webhook-id": "a b"}), id="id with space"),
    ],
)
async def test_malformed_signature_headers_are_401(
    receiver: Receiver, client: Client, mangle: Callable[[dict[str, str]], object]
) -> None:
    """Malformed headers are refused with 401, never a 500."""
    body, headers = signed_webhook(receiver.config.secret, "7")
    mangle(headers)
    status, _ = await post(client, body, headers)
    assert status == 401
    assert_nothing_scheduled(receiver)


# Not ±301: the request takes time on a loaded machine; the exact boundary is tested in
# test_signing.py with an injected clock.
@pytest.mark.parametrize("offset", [-310, 310, -600, 600, -3600])
async def test_timestamp_outside_the_window_is_401(
    receiver: Receiver, client: Client, offset: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A timestamp beyond ±300 s is refused and the log points at the clocks."""
    body, headers = signed_webhook(receiver.config.secret, "7", timestamp=int(time.time()) + offset)
    status, answer = await post(client, body, headers)
    assert status == 401
    assert "NTP" in str(answer["error"])
    assert "NTP" in caplog.text
    assert_nothing_scheduled(receiver)


async def test_body_altered_after_signing_is_401(receiver: Receiver, client: Client) -> None:
    body, headers = signed_webhook(receiver.config.secret, "7")
    status, _ = await post(client, body.replace(b'"7"', b'"8"'), headers)
    assert status == 401


def _signed_raw(secret: signing.Secret | None, body: bytes) -> dict[str, str]:
    assert secret is not None
    headers = signing.signed_headers(secret, "raw-1", int(time.time()), body)
    headers["Content-Type"] = "application/json"
    return headers


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not utf-8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'{"type": "mirror.deleted", "data": {}}', id="wrong type"),
        pytest.param(
            b'{"type": "mirror.updated", "timestamp": "t", "data": {"marker": "CURRENT", '
            b'"current": 7, "source": "x"}}',
            id="current not a string",
        ),
        pytest.param(
            b'{"type": "mirror.updated", "timestamp": "t", "data": {"marker": "OTHER", '
            b'"current": "7", "source": "x"}}',
            id="another marker",
        ),
    ],
)
async def test_signed_but_malformed_body_is_400(
    receiver: Receiver, client: Client, body: bytes
) -> None:
    """A validly signed body that is not the schema is 400, never a 500."""
    status, answer = await post(client, body, _signed_raw(receiver.config.secret, body))
    assert status == 400
    assert "error" in answer
    assert_nothing_scheduled(receiver)


async def test_unsigned_non_utf8_body_is_401(receiver: Receiver, client: Client) -> None:
    headers = _signed_raw(receiver.config.secret, b"other")
    status, _ = await post(client, b"\xff\xfe", headers)
    assert status == 401


async def test_oversized_body_by_content_length_is_413(receiver: Receiver, client: Client) -> None:
    body = b"x" * (receiver.config.max_body + 1)
    status, _ = await post(client, body, _signed_raw(receiver.config.secret, body))
    assert status == 413
    assert_nothing_scheduled(receiver)


async def test_oversized_content_length_is_refused_before_the_body_arrives(
    receiver: Receiver, client: Client
) -> None:
    """The Content-Length check answers 413 without waiting for (or reading) the body."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /v1/hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    await writer.drain()
    async with asyncio.timeout(5):
        status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"413"
    assert_nothing_scheduled(receiver)


async def test_oversized_chunked_body_is_413(receiver: Receiver, client: Client) -> None:
    """A chunked body (no Content-Length) is cut off once it passes max_body."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"y" * 4096

    headers = {"Content-Type": "application/json", "webhook-id": "x", "webhook-timestamp": "1"}
    async with client.post(HOOK_PATH, data=chunks(), headers=headers) as response:
        assert response.status == 413
    assert_nothing_scheduled(receiver)


async def test_trickling_body_is_cut_off(receiver: Receiver, client: Client) -> None:
    """A body slower than the read deadline is refused (408) instead of holding a handler."""
    receiver.read_deadline = 0.3

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"{"
            await asyncio.sleep(0.1)

    headers = {"Content-Type": "application/json"}
    async with client.post(HOOK_PATH, data=trickle(), headers=headers) as response:
        assert response.status == 408
    assert_nothing_scheduled(receiver)


async def test_wrong_method_is_405(client: Client) -> None:
    async with client.get(HOOK_PATH) as response:
        assert response.status == 405


async def test_wrong_content_type_is_415(receiver: Receiver, client: Client) -> None:
    body, headers = signed_webhook(receiver.config.secret, "7")
    headers["Content-Type"] = "text/plain"
    status, _ = await post(client, body, headers)
    assert status == 415
    assert_nothing_scheduled(receiver)


# --- other endpoints -------------------------------------------------------------------------


async def test_healthz(client: Client) -> None:
    async with client.get("/healthz") as response:
        assert response.status == 200


async def test_status_shows_state_and_no_secrets(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """GET /v1/status has the receiver's state, and neither the secret nor upstream credentials."""
    receiver = make_receiver(tmp_path, "rsync://mirror-login@127.0.0.1:9/up/")
    client = await aiohttp_client(make_app(receiver))
    async with client.get("/v1/status") as response:
        assert response.status == 200
        text = await response.text()
        status = (await response.json())["receiver"]
    secret_text = (tmp_path / "receiver.secret").read_text().strip()
    assert secret_text not in text
    assert secret_text.removeprefix("whsec_") not in text
    assert "mirror-login" not in text
    assert status["upstream"] == "rsync://127.0.0.1:9/up/"
    assert status["state"] == "idle"
    assert status["local_marker"] is None


async def test_metrics_count_syncs_stages_bytes_markers_and_webhooks(
    tmp_path: Path, daemon: RsyncDaemon, aiohttp_client: ClientFactory
) -> None:
    """GET /metrics (Prometheus text): syncs by result, stage durations, bytes received
    (from rsync --stats), last success, both markers, and webhooks by outcome."""
    receiver = make_receiver(tmp_path, daemon.url)
    app = make_app(receiver)
    app.cleanup_ctx.append(background)
    client = await aiohttp_client(app)
    await wait_until_synced(receiver, "1")
    await post(client, *signed_webhook(receiver.config.secret, "1"))
    await post(client, *signed_webhook(_other_secret(), "2"))
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    lines = set(text.splitlines())
    assert 'mirrorhook_syncs_total{result="synced"} 1.0' in lines
    assert 'mirrorhook_webhooks_total{outcome="up_to_date"} 1.0' in lines
    assert 'mirrorhook_webhooks_total{outcome="bad_signature"} 1.0' in lines
    assert 'mirrorhook_marker_info{marker="1",side="local"} 1.0' in lines
    assert 'mirrorhook_marker_info{marker="1",side="upstream"} 1.0' in lines
    assert 'mirrorhook_sync_stage_seconds_count{stage="transfer"} 1.0' in lines
    assert 'mirrorhook_sync_stage_seconds_count{stage="read_marker"} 2.0' in lines
    received = [line for line in lines if line.startswith("mirrorhook_rsync_received_bytes_total")]
    assert received
    assert (
        float(received[0].split()[1])
        > sum(path.stat().st_size for path in daemon.root.rglob("*.rpm")) / 2
    )
    success = [line for line in lines if line.startswith("mirrorhook_last_success_timestamp")]
    assert float(success[0].split()[1]) > time.time() - 60


@pytest.mark.parametrize("header", [";0*", "a/b; x*=''", ";", "text/plain; charset*=x'y"])
async def test_a_content_type_that_cannot_be_parsed_is_415_not_500(
    receiver: Receiver, client: Client, header: str
) -> None:
    """Found by hypothesis: aiohttp's parsing of "Content-Type: ;0*" raised inside the
    handler."""
    body, headers = signed_webhook(receiver.config.secret, "7")
    headers["Content-Type"] = header
    async with client.post(HOOK_PATH, data=body, headers=headers) as response:
        assert response.status == 415
    assert_nothing_scheduled(receiver)


async def test_only_a_webhook_meant_for_this_mirror_tells_it_who_it_is(tmp_path: Path) -> None:
    """A receiver holding a secret and the upstream's public key: a webhook that passes by
    its v1a signature alone (another mirror's, replayed here) does not rename it for its
    reports; one with this mirror's own v1 signature does."""
    key = SigningKey.generate()
    (tmp_path / "upstream.pub").write_text(f"{key.public()}\n")
    receiver = make_receiver(
        tmp_path, "rsync://127.0.0.1:9/up/", public_key_file=str(tmp_path / "upstream.pub")
    )
    assert receiver.config.secret is not None
    app = make_app(receiver)

    def webhook(mirror: str, signers: list[signing.Signer]) -> tuple[bytes, dict[str, str]]:
        now = int(time.time())
        update = dataclasses.replace(
            message.new_update("CURRENT", "local", "up", now, report_url="http://up/v1/report"),
            mirror=mirror,
        )
        body = update.encode()
        headers = signing.signed_headers(signers, f"id-{mirror}-{now}", now, body)
        return body, {**headers, "Content-Type": "application/json"}

    (receiver.config.target).mkdir(parents=True, exist_ok=True)
    publish(receiver.config.target, "local")
    async with TestClient(TestServer(app)) as client:
        body, headers = webhook("mirror-b", [key])  # another mirror's webhook: v1a only
        assert (await post(client, body, headers))[0] == 200
        assert receiver.reporter.to is None
        body, headers = webhook("mirror-a", [receiver.config.secret, key])
        assert (await post(client, body, headers))[0] == 200
        assert receiver.reporter.to is not None
        assert receiver.reporter.to.mirror == "mirror-a"
