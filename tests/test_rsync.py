"""The rsync runner: argument lists, the exit-code policy, deadlines and cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mirrorhook import process, rsync
from mirrorhook.errors import RsyncError, RsyncTimeoutError
from tests.helpers import RsyncDaemon, marker_of, mirrorhook, receiver_config, stub_rsync, until

TRANSIENT = [10, 12, 23, 30, 35]
PERMANENT = [1, 2, 3, 4, 5, 11, 20, 22, 25]


@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_codes_are_retryable(code: int) -> None:
    """docs/design.md#the-retry-policy: 10, 12, 23, 30 and 35 are worth another attempt."""
    assert rsync.is_transient(code, [])


@pytest.mark.parametrize("code", PERMANENT)
def test_permanent_codes_are_not_retryable(code: int) -> None:
    """docs/design.md#the-retry-policy: usage errors, daemon refusals, --max-delete hits...
    fail at once."""
    assert not rsync.is_transient(code, ["@ERROR: auth failed on module up"])


def test_code_5_depends_on_the_daemons_words() -> None:
    """A daemon at its connection limit is transient; any other daemon refusal is not."""
    full = ["@ERROR: max connections (2) reached -- try again later"]
    assert rsync.is_transient(5, full)
    assert not rsync.is_transient(5, ["@ERROR: auth failed on module up"])
    assert not rsync.is_transient(5, ["@ERROR: Unknown module 'nope'"])


def test_code_20_is_transient_only_when_the_upstream_was_signalled() -> None:
    """20 from the sender (the upstream daemon stopped mid-transfer) is retried; 20 from our
    own side (we are shutting down) is not."""
    signalled = "rsync error: received SIGINT, SIGTERM, or SIGHUP (code 20)"
    theirs = [f"{signalled} at io.c(586) [sender=3.5.0]"]
    ours = [f"{signalled} at rsync.c(713) [generator=3.5.0]"]
    assert rsync.is_transient(20, theirs)
    assert not rsync.is_transient(20, ours)
    assert not rsync.is_transient(20, [])


def test_vanished_files_complete_the_stage() -> None:
    """Exit 24 (files vanished during a publish) completes the transfer stage."""
    assert rsync.completes_stage(0)
    assert rsync.completes_stage(24)
    assert not rsync.completes_stage(23)


def test_tree_args_follow_the_seed_and_protect_the_marker(tmp_path: Path) -> None:
    """The stage-1 command is the seed's, with guards, the marker excluded and protected."""
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("*.iso\n")
    config = receiver_config(
        tmp_path,
        upstream="rsync://mirror.example.org/ius/",
        exclude_from=str(exclude),
        max_delete=500,
        rsync_args=["--bwlimit=1000"],
    ).receiver
    assert config is not None
    args = rsync.tree_args(config)
    assert args[:6] == [
        "rsync",
        "-aH",
        "--numeric-ids",
        "--delete",
        "--delete-after",
        "--delay-updates",
    ]
    for expected in ("--safe-links", "--timeout=600", "--contimeout=60", "--max-delete=500"):
        assert expected in args
    assert f"--exclude-from={exclude}" in args
    assert args.index("--filter=P /CURRENT") < args.index(f"--exclude-from={exclude}")
    assert args.index("--exclude=/CURRENT") < args.index("--bwlimit=1000")
    assert args[-3:] == ["--", "rsync://mirror.example.org/ius/", f"{tmp_path}/mirror/"]


def test_contimeout_and_nodelay_only_for_daemon_upstreams(tmp_path: Path) -> None:
    """rsync refuses --contimeout over ssh or locally, and opens no socket of its own there
    for TCP_NODELAY to apply to: both are only added for daemons, to every run."""
    for upstream, daemon in [
        ("rsync://h/m/", True),
        ("h::m/", True),
        ("user@h:/srv/m/", False),
        ("/srv/m", False),
    ]:
        config = receiver_config(tmp_path, upstream=upstream).receiver
        assert config is not None
        for args in (rsync.tree_args(config), rsync.marker_args(config, tmp_path / "m")):
            assert ("--contimeout=60" in args) is daemon, upstream
            assert ("--sockopts=TCP_NODELAY" in args) is daemon, upstream
        assert rsync.tree_args(config)[-2] == rsync.source_of(upstream)


def test_operators_sockopts_replace_ours(tmp_path: Path) -> None:
    """An operator's own --sockopts in rsync_args is kept, and ours is not added."""
    config = receiver_config(
        tmp_path, upstream="rsync://h/m/", rsync_args=["--sockopts=SO_SNDBUF=1048576"]
    ).receiver
    assert config is not None
    args = rsync.tree_args(config)
    assert [arg for arg in args if arg.startswith("--sockopts")] == ["--sockopts=SO_SNDBUF=1048576"]


async def test_nodelay_runs_against_a_real_daemon(tmp_path: Path, daemon: RsyncDaemon) -> None:
    """rsync accepts TCP_NODELAY against a real daemon that sets it too: the tree arrives."""
    config = receiver_config(tmp_path, upstream=daemon.url).receiver
    assert config is not None
    args = rsync.tree_args(config)
    assert rsync.NODELAY in args
    assert "socket options = TCP_NODELAY" in daemon.config.read_text()
    await rsync.run(args, timeout=60)
    assert (config.target / "dir0").is_dir()


async def test_run_reports_the_exit_code_and_stderr_tail(tmp_path: Path) -> None:
    """A failing run raises RsyncError with the code, its class and rsync's last lines."""
    stub = stub_rsync(
        tmp_path, "echo 'rsync: some detail' >&2\necho 'rsync error: code 23' >&2\nexit 23\n"
    )
    with pytest.raises(RsyncError) as caught:
        await rsync.run([str(stub)], timeout=10)
    assert caught.value.returncode == 23
    assert caught.value.transient
    assert caught.value.stderr_tail == ("rsync: some detail", "rsync error: code 23")
    assert "code 23" in str(caught.value)


async def test_run_returns_for_vanished_files(tmp_path: Path) -> None:
    """Exit 24 is a completed run, not an error."""
    stub = stub_rsync(tmp_path, "echo 'file has vanished: x' >&2\nexit 24\n")
    result = await rsync.run([str(stub)], timeout=10)
    assert result.returncode == 24


def _running(pid: int) -> bool:
    """Return whether ``pid`` is a live process (a zombie awaiting its reaper is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _survivors(pid_file: Path) -> list[int]:
    """Return the recorded processes still running once SIGKILL has had time to land."""
    pids = [int(line) for line in pid_file.read_text().split()]
    await until(lambda: not any(map(_running, pids)), 5)
    return [pid for pid in pids if _running(pid)]


async def _wait_for(path: Path, lines: int) -> None:
    await until(lambda: path.exists() and len(path.read_text().split()) >= lines, 10)


@pytest.mark.slow
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A run past its deadline is killed with its children (a stub that hangs, with a child)."""
    pids = tmp_path / "pids"
    stub = stub_rsync(tmp_path, f"sleep 300 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n")
    with pytest.raises(RsyncTimeoutError):
        await rsync.run([str(stub)], timeout=1)
    await _wait_for(pids, 2)
    assert await _survivors(pids) == []


async def test_cancel_terminates_then_kills(tmp_path: Path) -> None:
    """Cancelling a run sends TERM to the group; a child that ignores TERM is then killed."""
    pids = tmp_path / "pids"
    stub = stub_rsync(
        tmp_path,
        f"sh -c 'trap \"\" TERM; echo $$ >> {pids}; while :; do sleep 0.1; done' &\n"
        f"echo $$ >> {pids}\nwait\n",
    )
    task = asyncio.create_task(rsync.run([str(stub)], timeout=60, term_grace=0.5))
    await _wait_for(pids, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _survivors(pids) == []


async def test_progress_output_without_newlines_is_read_in_pieces(tmp_path: Path) -> None:
    """--info=progress2 rewrites one line with \\r for a whole transfer: megabytes without a
    newline must not break the reader (a stub, to produce that output on demand)."""
    stub = stub_rsync(
        tmp_path,
        "i=0; while [ $i -lt 20000 ]; do printf '  %d 50%%   1.00MB/s    0:00:01\\r' $i;"
        " i=$((i+1)); done\necho 'rsync: done' >&2\nprintf 'last' \nexit 0\n",
    )
    result = await rsync.run([str(stub)], timeout=60)
    assert result.returncode == 0
    assert result.stdout_tail[-1] == "last"
    assert all(len(line) <= process.MAX_LINE for line in result.stdout_tail)
    assert result.stderr_tail == ("rsync: done",)


def test_error_names_the_daemons_reason_not_the_summary() -> None:
    """The one-line error shows '@ERROR: Unknown module', not rsync's generic last line."""
    error = RsyncError(
        5,
        [
            "@ERROR: Unknown module 'nope'",
            "rsync error: error starting client-server protocol (code 5) at main.c(1850)",
        ],
        transient=False,
    )
    assert "Unknown module 'nope'" in str(error)
    plain = RsyncError(
        23, ["rsync: [sender] link_stat failed", "rsync error: code 23"], transient=True
    )
    assert "link_stat failed" in str(plain)
    assert "no error output" in str(RsyncError(12, [], transient=True))


def test_marker_args_bound_the_size_after_the_extra_arguments(tmp_path: Path) -> None:
    """The marker read fetches at most 4096 bytes and says when it skips the file for that;
    the bound comes after rsync_args, so an extra argument cannot lift it."""
    config = receiver_config(
        tmp_path, upstream="rsync://h/m/", rsync_args=["--max-size=1G", "--info=skip0"]
    ).receiver
    assert config is not None
    args = rsync.marker_args(config, tmp_path / "CURRENT")
    assert args[:4] == ["rsync", "-t", "--no-motd", "--ignore-missing-args"]
    assert args[-5:] == [
        "--max-size=4096",
        "--info=skip1",
        "--",
        "rsync://h/m/CURRENT",
        str(tmp_path / "CURRENT"),
    ]
    assert args.index("--max-size=1G") < args.index("--max-size=4096")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("CURRENT is over max-size", "it is larger than 4096 bytes"),
        (
            'skipping non-regular file "CURRENT"',
            "it is not a regular file (a symbolic link, a FIFO or a device: rsync skipped it)",
        ),
        ("skipping directory CURRENT", "it is a directory"),
        ("sent 20 bytes  received 43 bytes  126.00 bytes/sec", None),
    ],
)
def test_skipped_marker_names_what_rsync_skipped(line: str, reason: str | None) -> None:
    """rsync's own words (3.5, with --info=skip1) for a marker it left on the upstream."""
    assert rsync.skipped_marker(["receiving file list ... done", line]) == reason


def test_the_marker_read_is_never_quiet(tmp_path: Path) -> None:
    """-q in rsync_args silences the skip lines that tell a refused upstream marker from a
    missing one: the marker read leaves it out (the tree transfer keeps it)."""
    config = receiver_config(
        tmp_path, upstream="rsync://h/m/", rsync_args=["-q", "--bwlimit=100", "--quiet"]
    ).receiver
    assert config is not None
    args = rsync.marker_args(config, tmp_path / "m")
    assert "-q" not in args
    assert "--quiet" not in args
    assert "--bwlimit=100" in args
    assert "-q" in rsync.tree_args(config)


def test_delete_options_in_rsync_args_leave_the_marker_read_working(
    tmp_path: Path, daemon: RsyncDaemon
) -> None:
    """rsync refuses --delete-excluded without --recursive: the one-file marker read leaves
    every --delete option out (the tree transfer keeps them), so such a config syncs."""
    config = receiver_config(
        tmp_path, upstream=daemon.url, rsync_args=["--delete-excluded", "--bwlimit=1000"]
    ).receiver
    assert config is not None
    args = rsync.marker_args(config, tmp_path / "m")
    assert not [arg for arg in args if arg.startswith("--del")]
    assert "--delete-excluded" in rsync.tree_args(config)
    result = mirrorhook("sync", "-c", tmp_path / "mirrorhook.toml")
    assert result.returncode == 0, result.stderr
    assert marker_of(config.target) == "1"
