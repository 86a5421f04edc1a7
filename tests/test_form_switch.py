"""A role switched from the single form to the host form keeps its state: the files move
into the one repository's folder when that is unambiguous, and stay (said so) otherwise
(docs/design.md#many-repositories)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from mirrorhook import lock
from mirrorhook.config import Config, load_config
from mirrorhook.form_switch import move_state
from mirrorhook.status import host_status
from tests.helpers import make_upstream, marker_of, mirrorhook, write_secret

RECEIVED = {
    "last_success": "2026-11-25T18:00:04.500+00:00",
    "last_sync": {
        "duration": 2.25,
        "finished": "2026-11-25T18:00:04.500+00:00",
        "marker": "1",
        "result": "synced",
        "started": "2026-11-25T18:00:02.250+00:00",
        "trigger": "poll",
    },
    "report": {"mirror": "m1", "repo": "ius", "url": "https://up.example/v1/report"},
}


def receiver_toml(tmp: Path, repos: tuple[str, ...]) -> Path:
    """The single form (no ``repos``) or the host form, every tree from a local upstream."""
    write_secret(tmp / "r.secret")
    lines = ["[receiver]", 'listen = ["127.0.0.1:8873"]', f'state_dir = "{tmp / "state"}"']
    for name in repos or ("ius",):
        make_upstream(tmp / "up" / name)
        lines += [f"[receiver.repos.{name}]"] if repos else []
        lines += [
            f'secret_file = "{tmp / "r.secret"}"',
            f'upstream = "{tmp / "up" / name}/"',
            f'target = "{tmp / "srv" / name}"',
        ]
    path = tmp / "mirrorhook.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def single_form_state(tmp: Path) -> Path:
    """What the single form left in ``state_dir``: its receiver.json."""
    path = tmp / "state" / "receiver.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RECEIVED))
    return path


def test_the_one_repository_of_the_host_form_takes_the_single_forms_state(
    tmp_path: Path,
) -> None:
    """``check-config`` says the state will move; the first ``sync`` in the host form moves
    it into ``state_dir/repos/ius`` (saying so) and keeps it: its report address and last
    success are there, and status shows them."""
    single_form_state(tmp_path)
    config = receiver_toml(tmp_path, ("ius",))
    checked = mirrorhook("check-config", "-c", config)
    state = tmp_path / "state"
    assert (
        f"  state move     the single form's receiver.json in {state}: to be moved at the next "
        f"start into {state / 'repos' / 'ius'}\n"
    ) in checked.stdout
    synced = mirrorhook("sync", "-c", config)
    assert synced.returncode == 0, synced.stderr
    assert (
        f"receiver: the single form's receiver.json in {state}: moved into "
        f"{state / 'repos' / 'ius'}"
    ) in synced.stderr
    assert marker_of(tmp_path / "srv" / "ius") == "1"
    assert not (state / "receiver.json").exists()
    moved = json.loads((state / "repos" / "ius" / "receiver.json").read_text())
    assert moved["report"] == RECEIVED["report"]
    assert moved["last_sync"]["trigger"] == "mirrorhook sync"  # the sync went on from there
    rerun = mirrorhook("sync", "-c", config)
    assert "single form" not in rerun.stderr  # nothing left to move


def run(config: Path) -> Config:
    loaded = load_config(config)
    move_state(loaded)
    return loaded


def test_the_state_stays_when_it_is_unclear_which_repository_it_was(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two repositories: the old file stays where it was, and the log and check-config say
    why and where to move it by hand."""
    old = single_form_state(tmp_path)
    config = receiver_toml(tmp_path, ("ius", "epel"))
    with caplog.at_level(logging.INFO):
        run(config)
    assert old.read_text() == json.dumps(RECEIVED)
    assert not (tmp_path / "state" / "repos").exists()
    said = (
        f"the single form's receiver.json in {tmp_path / 'state'} stays there, unread: the host "
        "form has 2 repositories, and which one it was is not known (to keep its history, "
        f"stop mirrorhook and move it into {tmp_path / 'state' / 'repos' / 'NAME'})"
    )
    assert [r.getMessage() for r in caplog.records] == [f"receiver: {said}"]
    assert caplog.records[0].levelno == logging.WARNING
    assert f"  state move     {said}\n" in mirrorhook("check-config", "-c", config).stdout


def test_a_repository_folder_with_state_of_its_own_keeps_it_and_the_old_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = single_form_state(tmp_path)
    own = tmp_path / "state" / "repos" / "ius" / "receiver.json"
    own.parent.mkdir(parents=True)
    own.write_text("{}")
    with caplog.at_level(logging.WARNING):
        run(receiver_toml(tmp_path, ("ius",)))
    assert (old.read_text(), own.read_text()) == (json.dumps(RECEIVED), "{}")
    assert f"{own.parent} holds its own receiver.json already" in caplog.text


def test_a_sync_of_the_single_form_running_keeps_its_state_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync that still runs in the single form holds its repository lock: nothing moves
    under it (the next start moves it)."""
    old = single_form_state(tmp_path)
    config = receiver_toml(tmp_path, ("ius",))
    with lock.hold_repository(tmp_path / "state"), caplog.at_level(logging.WARNING):
        run(config)
    assert old.exists()
    assert "stays there, unread: another sync holds the lock" in caplog.text
    status = host_status(run(config))
    assert status["repos"][0]["last_success"] == RECEIVED["last_success"]
    assert not old.exists()


def test_a_move_cut_short_is_finished(tmp_path: Path) -> None:
    """A crash between the link and the unlink left both names of one file: the next
    start removes the old name, and the file is kept."""
    old = single_form_state(tmp_path)
    new = tmp_path / "state" / "repos" / "ius" / "receiver.json"
    new.parent.mkdir(parents=True)
    os.link(old, new)
    run(receiver_toml(tmp_path, ("ius",)))
    assert not old.exists()
    assert json.loads(new.read_text()) == RECEIVED


def test_the_publisher_keeps_its_deliveries_freshness_and_history(tmp_path: Path) -> None:
    """A publisher switched to one ``[publisher.repos.NAME]``: its record of deliveries,
    freshness and history move along, and its status shows what was delivered."""
    (tmp_path / "repo").mkdir()
    write_secret(tmp_path / "m.secret")
    state = tmp_path / "pstate"
    state.mkdir()
    (state / "publisher.json").write_text(
        json.dumps({"mirrors": {"m": {"delivered": "7", "result": "delivered"}}})
    )
    (state / "freshness.json").write_text(json.dumps({"newest": "7"}))
    (state / "history.json").write_text(json.dumps({"publishes": []}))
    config = tmp_path / "pub.toml"
    config.write_text(
        f'[publisher]\nstate_dir = "{state}"\n[publisher.repos.ius]\nroot = "{tmp_path / "repo"}"\n'
        '[[publisher.repos.ius.mirrors]]\nname = "m"\nurl = "https://m.example/v1/hook"\n'
        f'secret_file = "{tmp_path / "m.secret"}"\n'
    )
    status = host_status(run(config))
    assert status["publishers"][0]["mirrors"][0]["delivered"] == "7"
    assert sorted(path.name for path in (state / "repos" / "ius").iterdir()) == [
        "freshness.json",
        "history.json",
        "publisher.json",
    ]
    assert sorted(path.name for path in state.iterdir()) == ["publisher.json.lock", "repos"]
