"""``mirrorhook status`` shows what the daemon runs, and how the config file stands beside it
(docs/design.md#what-status-shows): a real ``mirrorhook serve`` whose file is refused at a
reload, then broken past parsing, then restored; and the pieces on their own."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mirrorhook.config import load_config
from mirrorhook.daemon_note import NOTE_NAME, ConfigNotes
from mirrorhook.errors import ConfigError
from mirrorhook.running_config import status_now
from mirrorhook.status import format_status
from tests.helpers import (
    Processes,
    free_port,
    make_upstream,
    marker_of,
    mirrorhook,
    wait_for_port,
    wait_until,
    write_secret,
)


def hub_toml(tmp: Path, port: int, *, single: bool = False) -> str:
    """Two receiver repositories synced from local upstreams (with ``single``, ius alone in
    the single form), and a publisher announcing ius (a hub repository) to a mirror that
    is only checked."""
    lines = [
        "[receiver]",
        f'listen = ["127.0.0.1:{port}"]',
        f'state_dir = "{tmp / "rstate"}"',
        "backoff = 0",
        "poll_interval = 0",
    ]
    for name in ("ius",) if single else ("ius", "epel"):
        make_upstream(tmp / "up" / name)
        write_secret(tmp / "r.secret")
        lines += [
            *([] if single else [f"[receiver.repos.{name}]"]),
            f'secret_file = "{tmp / "r.secret"}"',
            f'upstream = "{tmp / "up" / name}/"',
            f'target = "{tmp / "srv" / name}"',
        ]
    lines += [
        "[publisher]",
        f'state_dir = "{tmp / "pstate"}"',
        'name = "hub.example"',
        "[publisher.repos.ius]",
        *([f'root = "{tmp / "srv" / "ius"}"'] if single else []),
        "[[publisher.repos.ius.mirrors]]",
        'name = "leaf"',
        'check_url = "http://127.0.0.1:1/ius/CURRENT"',
    ]
    return "\n".join(lines) + "\n"


def status(config: Path) -> tuple[int, str, dict[str, Any]]:
    """``status``'s exit status, its text and its JSON."""
    text = mirrorhook("status", "-c", config)
    document = mirrorhook("status", "--json", "-c", config)
    assert text.returncode == document.returncode, (text.stderr, document.stderr)
    return text.returncode, text.stdout, json.loads(document.stdout or "{}")


def served(port: int) -> dict[str, Any]:
    """The daemon's ``/v1/status``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=10) as answer:
        document: dict[str, Any] = json.loads(answer.read())
        return document


def reload(daemon: subprocess.Popen[bytes], processes: Processes, outcome: str) -> None:
    """SIGHUP, and wait until the log has one more line saying ``outcome``."""
    seen = processes.log("hub").count(outcome)
    daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: processes.log("hub").count(outcome) > seen, what=outcome)


@pytest.mark.slow
def test_after_a_refused_reload_status_shows_what_runs_and_says_the_file_was_refused(
    tmp_path: Path, processes: Processes
) -> None:
    """The file gains a repository and a bad value, and SIGHUP is refused: ``status`` shows
    the two repositories the daemon runs (not the file's three) and its publisher, and one
    line naming the refused file and its problem; the same when the file does not even parse
    (it says where the state is, line by line); a switch to the single form, which only a
    restart applies, is refused the same way; once restored, nothing more is said. When the
    daemon has stopped, a broken file is a config error again (exit 2)."""
    port = free_port()
    config = tmp_path / "hub.toml"
    good = hub_toml(tmp_path, port)
    config.write_text(good)
    daemon = processes.serve(config, "hub")
    wait_for_port(port)
    wait_until(lambda: all(marker_of(tmp_path / "srv" / n) == "1" for n in ("ius", "epel")))
    assert (tmp_path / "rstate" / NOTE_NAME).exists()
    assert (tmp_path / "pstate" / NOTE_NAME).exists()
    code, text, document = status(config)
    assert (code, document["config"]["state"]) == (0, "applied")
    assert not text.startswith("config ")

    extra = f'[receiver.repos.extra]\nsecret_file = "{tmp_path / "r.secret"}"\n'
    extra += f'upstream = "{tmp_path / "up" / "ius"}/"\ntarget = "{tmp_path / "srv" / "x"}"\n'
    broken = good.replace("target = ", "backoff = -1\ntarget = ", 1).replace(
        "[publisher]", extra + "[publisher]"
    )
    config.write_text(broken)
    reload(daemon, processes, "reload refused")
    code, text, document = status(config)
    assert code == 0, text
    first, rest = text.split("\n", 1)
    assert first.startswith(
        f"config {config}: the daemon (pid {daemon.pid}) runs the config it loaded at "
    )
    assert first.endswith(
        "; the file on disk was refused at the reload of "
        + document["config"]["refused_at"]
        + ": receiver.repos.ius.backoff: must not be negative, not -1"
    )
    table = rest.split("repositories\n", 1)[1].split("\n\n")[0].splitlines()
    assert [row.split()[0] for row in table] == ["REPO", "ius", "epel"]
    assert "extra" not in rest
    assert "publisher, repository ius" in rest
    assert [repo["name"] for repo in document["repos"]] == ["ius", "epel"]
    assert document["config"]["state"] == "refused"
    assert [tree["repo"] for tree in document["publishers"]] == ["ius"]
    wait_until(lambda: served(port)["config"] == document["config"], what="/v1/status")

    config.write_text(broken + 'oops = "\n')  # no longer TOML at all
    code, text, document = status(config)
    assert code == 0, text
    said = "; the file on disk does not load (a reload would be refused): not valid TOML: "
    assert said in text.splitlines()[0]
    assert [repo["name"] for repo in document["repos"]] == ["ius", "epel"]

    config.write_text(hub_toml(tmp_path, port, single=True))
    assert load_config(config).receiver is not None  # a valid file, in the single form
    reload(daemon, processes, "reload refused")
    code, text, document = status(config)
    assert "receiver: switching between one tree and [receiver.repos] needs a restart" in text
    assert [repo["name"] for repo in document["repos"]] == ["ius", "epel"]

    config.write_text(good)
    code, text, document = status(config)
    assert (code, document["config"]["state"]) == (0, "applied")
    assert text.startswith("repositories\n")
    reload(daemon, processes, " applied")

    config.write_text(broken)
    daemon.terminate()
    assert daemon.wait(15) == 0
    assert not (tmp_path / "rstate" / NOTE_NAME).exists()
    result = mirrorhook("status", "-c", config)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{config}: receiver.repos.ius.backoff: must not be negative, not -1\n"


async def test_a_file_changed_but_not_reloaded_is_said_so_beside_what_runs(
    tmp_path: Path,
) -> None:
    """The daemon runs one repository; the file, valid, has two: ``status`` shows the one
    that runs, and says the file was not reloaded."""
    port = free_port()
    config = tmp_path / "hub.toml"
    config.write_text(hub_toml(tmp_path, port, single=True))
    notes = ConfigNotes(load_config(config))  # this process stands in for the daemon
    await notes.loaded(load_config(config))
    config.write_text(hub_toml(tmp_path, port))
    shown = status_now(config)
    assert shown["config"]["state"] == "changed"
    assert shown["receiver"]["target"] == str(tmp_path / "srv" / "ius")
    assert "repos" not in shown
    assert (
        format_status(shown)
        .splitlines()[0]
        .endswith(
            "; the file on disk has changed since and was not reloaded "
            "(systemctl reload mirrorhook applies it)"
        )
    )
    await notes.remove()
    assert "config" not in status_now(config)  # no daemon: the file's two repositories
    assert [repo["name"] for repo in status_now(config)["repos"]] == ["ius", "epel"]


@pytest.mark.parametrize("quote", ['"', "'"])
async def test_a_file_that_does_not_parse_still_says_where_the_state_is(
    tmp_path: Path, quote: str
) -> None:
    """A stray quote breaks the TOML: the state folders are read line by line, so the
    note of the daemon is found in the publisher's (the receiver's is not the only one)."""
    config = tmp_path / "hub.toml"
    good = hub_toml(tmp_path, free_port())
    config.write_text(good)
    running = load_config(config)
    notes = ConfigNotes(running)
    await notes.loaded(running)
    (tmp_path / "rstate" / NOTE_NAME).unlink()
    pstate = f"state_dir = {quote}{tmp_path / 'pstate'}{quote}   # a comment"
    config.write_text(
        good.replace(f'state_dir = "{tmp_path / "pstate"}"', pstate)
        .replace('state_dir = "', 'state_dir = "/nowhere/', 1)  # the receiver's: no note there
        .replace("[receiver.repos.ius]", "[receiver.repos.ius]\nbackoff = 'broken")
    )
    with pytest.raises(ConfigError):
        load_config(config)
    shown = status_now(config)
    assert shown["config"]["state"] == "broken"
    assert shown["config"]["problems"][0].startswith(f"{config}: not valid TOML: ")
    assert [repo["name"] for repo in shown["repos"]] == ["ius", "epel"]
    await notes.remove()
    with pytest.raises(ConfigError):
        status_now(config)
