"""The receiver's state file and its one owner: typed entries, the file of earlier versions,
and writes that never stall the event loop (docs/design.md#state-files)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

from mirrorhook import message, receiver_records, receiver_state, signing
from mirrorhook.fleet import build_receiver
from mirrorhook.message import HOOK_PATH
from mirrorhook.receiver import background, make_app
from mirrorhook.receiver_records import (
    DaemonNote,
    HookNote,
    InProgress,
    LastSync,
    ReceiverState,
    ReportTo,
)
from mirrorhook.receiver_state import receiver_state_path
from mirrorhook.status import receiver_status
from tests.helpers import ClientFactory, RsyncDaemon, ServerFactory, receiver_config, until

# receiver.json as the version before this module wrote it (syncer.py, status.py, hooks.py
# and reporter.py each wrote their own keys), with a key of some later version beside them.
EARLIER_FILE = """{
  "daemon": {
    "next_poll": "2026-11-25T19:02:55.120+00:00",
    "phase": "idle",
    "pid": 4242,
    "sync_starts_at": null
  },
  "in_progress": null,
  "last_hook": {
    "at": "2026-11-25T19:02:51.000+00:00",
    "command": "exec_on_failure",
    "outcome": "exit status 3"
  },
  "last_success": "2026-11-25T18:00:04.500+00:00",
  "last_sync": {
    "duration": 2.25,
    "error": "rsync exited with code 5 (permanent): @ERROR: auth failed on module ius",
    "finished": "2026-11-25T19:02:50.250+00:00",
    "marker": null,
    "result": "failed",
    "returncode": 5,
    "started": "2026-11-25T19:02:48.000+00:00",
    "stderr_tail": [
      "@ERROR: auth failed on module ius",
      "rsync error: error starting client-server protocol (code 5)"
    ],
    "trigger": "poll"
  },
  "report": {
    "mirror": "mirror-a",
    "url": "https://up.example.org/v1/report"
  },
  "some_later_key": {"kept": [1, 2]}
}
"""

HOLDER = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))  # until told to go, or the deadline
"""
HOLD_AT_MOST = 30.0
"""Seconds another process holds the state file's lock (as a cron sync does to write) unless
told to let go first, which the test does once /healthz has answered: a loop that a state
write blocked could answer only after the holder let go, at this deadline."""
ANSWERS = 20
"""How many times /healthz is asked while the lock is held."""


def test_the_file_of_an_earlier_version_loads_into_typed_entries(tmp_path: Path) -> None:
    """Every entry reads back typed; `status` shows the last sync exactly as recorded, its
    keys in the file's order."""
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    config.state_dir.mkdir(parents=True)
    receiver_state_path(config).write_text(EARLIER_FILE)
    recorded = json.loads(EARLIER_FILE)

    state = receiver_state.read(config)
    assert state == ReceiverState(
        in_progress=None,
        last_sync=LastSync(
            trigger="poll",
            started="2026-11-25T19:02:48.000+00:00",
            finished="2026-11-25T19:02:50.250+00:00",
            duration=2.25,
            result="failed",
            marker=None,
            error="rsync exited with code 5 (permanent): @ERROR: auth failed on module ius",
            returncode=5,
            stderr_tail=(
                "@ERROR: auth failed on module ius",
                "rsync error: error starting client-server protocol (code 5)",
            ),
        ),
        last_success="2026-11-25T18:00:04.500+00:00",
        daemon=DaemonNote(
            pid=4242, phase="idle", sync_starts_at=None, next_poll="2026-11-25T19:02:55.120+00:00"
        ),
        last_hook=HookNote("exec_on_failure", "exit status 3", "2026-11-25T19:02:51.000+00:00"),
        report=ReportTo("https://up.example.org/v1/report", "mirror-a"),
    )
    status = receiver_status(config)
    assert status["last_sync"] == recorded["last_sync"]
    assert list(status["last_sync"]) == list(recorded["last_sync"])  # `status --json`'s order
    assert status["last_success"] == recorded["last_success"]


async def test_each_write_changes_its_own_entry_and_keeps_the_rest(tmp_path: Path) -> None:
    """A sync's begin and end, a hook's note, a report address: each round-trips through
    the file, and every other key (one of a later version too) is kept as it was."""
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    config.state_dir.mkdir(parents=True)
    path = receiver_state_path(config)
    path.write_text(EARLIER_FILE)
    earlier = json.loads(EARLIER_FILE)

    began = InProgress("webhook from up, marker '8'", "2026-11-26T08:00:00.000+00:00", 77)
    before = await receiver_state.begin_sync(config, began)
    assert before == receiver_records.ReceiverState.from_json(earlier)
    assert receiver_state.read(config).in_progress == began
    synced = LastSync(
        "webhook from up, marker '8'",
        "2026-11-26T08:00:00.000+00:00",
        "2026-11-26T08:00:03.000+00:00",
        3.0,
        "synced",
        "8",
    )
    await receiver_state.end_sync(config, synced, success_at="2026-11-26T08:00:03.000+00:00")
    hook = HookNote("exec_on_success", "ok", "2026-11-26T08:00:04.000+00:00")
    await receiver_state.note_hook(config, hook)
    report = ReportTo("https://other.example.org/v1/report", "mirror-b")
    await receiver_state.remember_report(config, report)

    state = receiver_state.read(config)
    assert (state.in_progress, state.last_sync, state.last_hook, state.report) == (
        None,
        synced,
        hook,
        report,
    )
    assert state.last_success == "2026-11-26T08:00:03.000+00:00"
    written = json.loads(path.read_text())
    assert written["last_sync"] == {
        "trigger": "webhook from up, marker '8'",
        "started": "2026-11-26T08:00:00.000+00:00",
        "finished": "2026-11-26T08:00:03.000+00:00",
        "duration": 3.0,
        "result": "synced",
        "marker": "8",
    }
    assert written["daemon"] == earlier["daemon"]
    assert written["some_later_key"] == {"kept": [1, 2]}


def test_entries_of_the_wrong_shape_read_as_absent(tmp_path: Path) -> None:
    """A hand-edited file: a pid that is `true`, a tail of numbers, a report without its
    mirror are not trusted; the well-formed entries beside them still load."""
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    config.state_dir.mkdir(parents=True)
    document = json.loads(EARLIER_FILE)
    document["daemon"]["pid"] = True
    document["last_sync"]["stderr_tail"] = [1, 2]
    del document["report"]["mirror"]
    receiver_state_path(config).write_text(json.dumps(document))
    state = receiver_state.read(config)
    assert (state.daemon, state.last_sync, state.report) == (None, None, None)
    assert state.last_hook == HookNote(
        "exec_on_failure", "exit status 3", "2026-11-25T19:02:51.000+00:00"
    )


async def test_healthz_answers_while_the_state_file_is_locked_by_another_process(
    tmp_path: Path,
    daemon: RsyncDaemon,
    aiohttp_client: ClientFactory,
    aiohttp_server: ServerFactory,
) -> None:
    """Another process holds receiver.json's lock (a cron sync writing it, say) while the
    daemon's start-up sync, a webhook that brings a report address and the daemon's live
    note all need to write the file: they wait in threads, and /healthz keeps answering while
    the lock is held. Once the lock is free, every write lands: the sync's outcome, the
    hook's, the report address, the live note."""
    config = receiver_config(
        tmp_path, upstream=daemon.url, exec_on_success=["/bin/true"], poll_interval=600
    ).receiver
    assert config is not None
    assert config.secret is not None
    config.state_dir.mkdir(parents=True)
    lock_file = receiver_state_path(config).with_name("receiver.json.lock")

    async def take_report(_request: web.Request) -> web.Response:
        return web.json_response({"status": "checking"}, status=202)

    reports = web.Application()
    reports.router.add_post("/v1/report", take_report)
    report_url = str((await aiohttp_server(reports)).make_url("/v1/report"))
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file), str(HOLD_AT_MOST)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        try:
            receiver = build_receiver(config)
            app = make_app(receiver)
            app.cleanup_ctx.append(background)
            client = await aiohttp_client(app)  # starts the scheduler and the start-up check

            now = int(time.time())
            update = message.new_update(config.marker, "1", "up", now, report_url=report_url)
            body = dataclasses.replace(update, mirror="m").encode()
            headers = signing.signed_headers(config.secret, "msg_1", now, body)
            headers["Content-Type"] = "application/json"
            webhook = asyncio.ensure_future(client.post(HOOK_PATH, data=body, headers=headers))

            # The start-up sync has begun (its note and the daemon's live note wait for the
            # lock) and the webhook is past its replay check (its report address waits).
            await until(
                lambda: receiver.scheduler.phase == "syncing" and len(receiver.intake.replays) == 1,
                2 * HOLD_AT_MOST,  # past the holder's deadline: a blocked loop fails below
            )
            for _ in range(ANSWERS):
                async with client.get("/healthz") as response:
                    assert response.status == 200
            # The holder lets go only when told (below) or at its deadline: still holding,
            # it held the lock through every answer (the cause, not how fast they came).
            assert holder.poll() is None, "the loop waited for the lock: the holder's deadline"
            # Nothing could be written meanwhile: every write was waiting for the lock.
            assert not receiver_state_path(config).exists()
            assert not webhook.done()
        finally:
            with contextlib.suppress(BrokenPipeError):  # gone at its deadline
                holder.stdin.write("go\n")
                holder.stdin.flush()

    async with await webhook as response:
        assert response.status in (200, 202)

    def all_written() -> bool:
        state = receiver_state.read(config)
        return (
            state.last_sync is not None
            and state.last_sync.marker == "1"
            and state.last_hook is not None
            and (state.last_hook.command, state.last_hook.outcome) == ("exec_on_success", "ok")
            and state.report == ReportTo(report_url, "m")
            and state.daemon is not None
            and state.daemon.phase == "idle"
        )

    await until(all_written, 30)
