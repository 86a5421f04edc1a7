"""The publisher's side of changes, with a real `mirrorhook serve` (docs/design.md#changes):
each publish's manifest is built before it is announced, the announcement carries the
small change inline and where to fetch others, and /v1/changes and /v1/manifest answer
signed with the upstream's key."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import signing
from mirrorhook.changes import Change, decode_change
from mirrorhook.delta_transfer import transfer_change
from mirrorhook.errors import SyncError
from mirrorhook.keys import parse_public_keys
from mirrorhook.manifest import Kind
from mirrorhook.manifest_format import decode_manifest
from mirrorhook.process import Completed
from tests.helpers import (
    Processes,
    RsyncDaemon,
    free_port,
    key_pair,
    make_upstream,
    marker_of,
    publish,
    receiver_config,
    tree_invocations,
    wait_for_port,
    wait_until,
)
from tests.pushed import assert_same_tree, pushed_mirror
from tests.scene import json_toml

pytestmark = pytest.mark.slow


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def last_value(port: int) -> dict[str, Any]:
    """The announcement the event stream hands a new subscriber (its body's data)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/events", timeout=10) as stream:
        stream.readline()
        stream.readline()
        envelope = json.loads(stream.readline().removeprefix(b"data: "))
    data: dict[str, Any] = json.loads(envelope["body"])["data"]
    return data


def test_a_publish_is_announced_with_its_change_and_the_changes_are_served_signed(
    tmp_path: Path, processes: Processes
) -> None:
    private, public = key_pair(tmp_path / "keys", "upstream")
    (key,) = parse_public_keys(public.read_text())
    root = make_upstream(tmp_path / "ius")
    port = free_port()
    config = tmp_path / "publisher.toml"
    base = f"http://127.0.0.1:{port}"
    config.write_text(
        json_toml(
            {
                "root": str(root),
                "state_dir": str(tmp_path / "state"),
                "listen": [f"127.0.0.1:{port}"],
                "public_url": base,
                "signing_key_file": str(private),
                "name": "upstream",
            },
            [],
        )
    )
    processes.serve(config, "publisher")
    wait_for_port(port)
    wait_until(lambda: last_value(port)["current"] == "1", what="the first announcement")
    assert "changes" not in last_value(port)  # nothing to compare the first manifest with

    (root / "dir1" / "file1.rpm").unlink()
    publish(root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: last_value(port)["current"] == "2", what="the second announcement")
    data = last_value(port)
    assert data["changes_url"] == f"{base}/v1/changes/upstream"
    inline = decode_change(json.dumps(data["changes"]).encode(), 100_000)
    assert (inline.from_marker, inline.to_marker) == ("1", "2")
    assert (b"dir0/new.rpm", Kind.FILE) in inline.changed
    assert inline.removed == (b"dir1/file1.rpm",)

    status, headers, body = fetch(f"{base}/v1/changes/upstream?from=1")
    assert status == 200
    signed = {name.lower(): value for name, value in headers.items()}
    signing.verify(key, signed, body, now=time.time())  # raises if it does not verify
    served = decode_change(body, 100_000)
    assert served == inline
    assert served.repo == "upstream"  # the NAME of its URL, which a mirror checks
    assert fetch(f"{base}/v1/changes/upstream?from=unknown")[0] == 404
    assert fetch(f"{base}/v1/changes/nope?from=1")[0] == 404
    assert fetch(f"{base}/v1/changes/upstream")[0] == 400

    status, headers, body = fetch(f"{base}/v1/manifest/ius")  # the root folder's name too
    assert status == 200
    signing.verify(key, {k.lower(): v for k, v in headers.items()}, body, now=time.time())
    manifest = decode_manifest(body)
    assert manifest.marker == "2"
    assert manifest.get(b"dir0/new.rpm") is not None
    assert manifest.get(b"dir1/file1.rpm") is None
    assert (tmp_path / "state" / "manifests").is_dir()


@pytest.mark.parametrize(
    "full_sync_interval",
    [pytest.param(86400, id="by-change"), pytest.param(0.001, id="whole-tree-due")],
)
def test_a_mirror_one_publish_behind_syncs_by_the_change_and_ends_as_the_full_transfer_would(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon, full_sync_interval: float
) -> None:
    """The webhook carries the change inline; the receiver's tree transfer is rsync with
    --files-from of its paths, and the tree then equals the upstream's (contents, modes,
    mtimes, symlinks). A mirror whose marker the change does not start from does a full
    transfer instead."""
    mirrored = pushed_mirror(tmp_path, processes, daemon, full_sync_interval=full_sync_interval)
    log, tree = mirrored.rsync_log, mirrored.tree
    full_runs = len(tree_invocations(log))

    (daemon.root / "dir1" / "file1.rpm").unlink()
    (daemon.root / "dir2" / "link").symlink_to("file2.rpm")
    (daemon.root / "dir3" / "file3.rpm").chmod(0o600)
    publish(daemon.root, "2", {"dir0/new.rpm": "new\n"})
    wait_until(lambda: marker_of(tree) == "2", what="the sync by change")
    runs = tree_invocations(log)[full_runs:]
    assert len(runs) == 1, runs
    if full_sync_interval < 1:  # a whole transfer is due: the change is not used
        assert "--files-from=" not in runs[0]
        assert "by change" not in processes.log("mirror")
    else:
        assert "--files-from=" in runs[0]
        assert "--delete-missing-args" in runs[0]
        # Four entries, the three folders whose mtimes they moved, and the marker (which
        # the transfer excludes, as the full one does).
        assert "stage 1 by change: 8 paths" in processes.log("mirror")
    assert_same_tree(daemon.root, tree)


def test_a_mirror_that_missed_publishes_fetches_its_change_from_the_publisher(
    tmp_path: Path, processes: Processes, daemon: RsyncDaemon
) -> None:
    """Down for two publishes: at its restart the announcement's inline change (3 to 4)
    does not start from its marker 2, so it asks changes_url?from=2, remembered from the
    announcement of 2, and transfers only the paths of 2 to 4."""
    mirrored = pushed_mirror(tmp_path, processes, daemon)
    log, tree = mirrored.rsync_log, mirrored.tree
    publish(daemon.root, "2", {"dir0/two.rpm": "two\n"})
    wait_until(lambda: marker_of(tree) == "2", what="the sync by the inline change")
    mirrored.process.terminate()
    mirrored.process.wait(15)

    (daemon.root / "dir1" / "file1.rpm").unlink()
    publish(daemon.root, "3", {"dir0/three.rpm": "three\n"})
    wait_until(lambda: "marker '3': announcing" in processes.log("publisher"))
    publish(daemon.root, "4", {"dir2/four.rpm": "four\n"})
    wait_until(lambda: "marker '4': announcing" in processes.log("publisher"))
    runs = len(tree_invocations(log))
    processes.serve(mirrored.config, "mirror")
    wait_until(lambda: marker_of(tree) == "4", what="the sync after the restart")
    (run,) = tree_invocations(log)[runs:]
    assert "--files-from=" in run
    assert "fetched the change from '2' to '4'" in processes.log("mirror")
    assert_same_tree(daemon.root, tree)


async def test_a_path_of_the_change_vanished_upstream_fails_the_transfer_by_change(
    tmp_path: Path,
) -> None:
    """rsync's exit 24 completes a full transfer (the marker re-read decides); in a transfer
    by change it means the change does not match the upstream: the engine then compares
    the whole tree (a stand-in for rsync: real rsync cannot be made to vanish a file on
    demand between the listing and the send)."""
    config = receiver_config(tmp_path, upstream="rsync://127.0.0.1:9/up/").receiver
    assert config is not None
    config.state_dir.mkdir(parents=True, exist_ok=True)
    change = Change("1", "2", ((b"a.rpm", Kind.FILE),), ())

    async def vanished(_args: list[str]) -> Completed:
        return Completed(24, ('file has vanished: "/a.rpm"',), ())

    with pytest.raises(SyncError, match="vanished upstream"):
        await transfer_change(config, change, vanished)
