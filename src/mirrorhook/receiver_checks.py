"""Checks of a receiver repository that span keys or reach the file system: the programs
it names exist, its own files lie apart in the tree, and no tree holds, lies in or nests
with the state folder or another repository's tree (rsync --delete in one would remove the
other's files)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mirrorhook.checks import INVALID, Table, executable, valid


def check_programs(t: Table, values: dict[str, Any]) -> None:
    """Check the programs that ``t`` itself names (inherited ones were checked where they
    were set, so that a missing one is reported once): rsync, and the exec hooks."""
    program = values["rsync"]
    if "rsync" in t.data and valid(program) and shutil.which(program) is None:
        t.problem("rsync", f"{program!r} is not an executable (nor on PATH): install rsync")
        values["rsync"] = INVALID
    for key in ("exec_on_success", "exec_on_failure"):
        if key in t.data:
            values[key] = _command(t, key, values[key])


def apart_in_tree(t: Table, values: dict[str, Any]) -> None:
    """The trace and lastsync files may be neither the marker nor each other, nor lie inside
    one another (one would have to be a file and a folder at once)."""
    taken = [("marker", values["marker"])]
    for key in ("trace", "lastsync"):
        path = values[key]
        if not valid(path):
            continue
        for other_key, other in taken:
            if valid(other) and _overlap(path, other):
                how = "is the same file as" if path == other else "nests with"
                t.problem(key, f"{path!r} {how} {other_key} ({other!r})")
                values[key] = INVALID
                break
        else:
            taken.append((key, path))


def _overlap(path: str, other: str) -> bool:
    return path == other or path.startswith(other + "/") or other.startswith(path + "/")


def _command(t: Table, key: str, argv: Any) -> Any:
    """An ``exec_on_*`` argument list: empty, or a program that exists and its arguments."""
    if not valid(argv) or not argv:
        return argv
    try:
        program = executable(argv[0])
    except ValueError as err:
        t.problem(key, f"item 0: {err}")
        return INVALID
    if shutil.which(program) is None:
        t.problem(key, f"{program!r} is not an executable (nor on PATH)")
        return INVALID
    return argv


INSIDE_STATE_DIR = (
    "must be outside state_dir ({state_dir}): rsync --delete would remove the state there "
    "(the sync locks with it)"
)


def trees_apart(t: Table, repos: list[dict[str, Any]], state_dir: Any) -> bool:
    """Targets may not be shared, nested, hold the state folder or lie in it: rsync --delete
    in one tree would remove another's files, or the state."""
    ok = True
    for index, repo in enumerate(repos):
        target: Path = repo["target"]
        if valid(state_dir) and (state_dir.is_relative_to(target)):
            t.problem(
                f"repos.{repo['name']}.target",
                f"must not hold state_dir ({state_dir}): rsync --delete would remove it",
            )
            ok = False
        elif valid(state_dir) and target.is_relative_to(state_dir):
            t.problem(f"repos.{repo['name']}.target", INSIDE_STATE_DIR.format(state_dir=state_dir))
            ok = False
        for other in repos[:index]:
            if target.is_relative_to(other["target"]) or other["target"].is_relative_to(target):
                how = "is the same as" if target == other["target"] else "nests with"
                t.problem(
                    f"repos.{repo['name']}.target",
                    f"{how} the target of repository {other['name']!r} ({other['target']})",
                )
                ok = False
    return ok
