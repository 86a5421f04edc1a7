"""The host form of ``[publisher]``: repositories with their own mirrors, hub roots taken
from the receiver's targets, and every problem named by its repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError
from tests.helpers import write_secret


def write(tmp: Path, text: str) -> Path:
    for name in ("m1", "m2", "r"):
        if not (tmp / f"{name}.secret").exists():
            write_secret(tmp / f"{name}.secret")
    path = tmp / "pub.toml"
    path.write_text(text.replace("TMP", str(tmp)))
    return path


MIRROR = (
    "[[publisher.repos.{repo}.mirrors]]\n"
    'name = "{name}"\n'
    'url = "https://{name}.example/v1/hook"\n'
    'secret_file = "TMP/{name}.secret"\n'
)


def test_repositories_have_their_own_root_mirrors_and_state(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[publisher]\nstate_dir = "TMP/state"\nconcurrency = 8\nwatch = "poll"\n'
        '[publisher.repos.ius]\nroot = "TMP/srv/ius"\n'
        + MIRROR.format(repo="ius", name="m1")
        + '[publisher.repos.epel]\nroot = "TMP/srv/epel"\nwatch = "inotify"\n'
        + MIRROR.format(repo="epel", name="m2"),
    )
    host = load_config(path).publishers
    assert host is not None
    assert not host.single
    ius, epel = host.named("ius"), host.named("epel")
    assert ius is not None
    assert epel is not None
    assert (ius.root, epel.root) == (tmp_path / "srv/ius", tmp_path / "srv/epel")
    assert ([m.name for m in ius.mirrors], [m.name for m in epel.mirrors]) == (["m1"], ["m2"])
    assert (ius.watch, epel.watch) == ("poll", "inotify")  # host default, own value
    assert ius.concurrency == epel.concurrency == 8
    assert ius.state_dir == tmp_path / "state/repos/ius"
    assert load_config(path).publisher is None  # not the single form


def test_a_hub_repository_announces_the_tree_it_mirrors(tmp_path: Path) -> None:
    """A repository in both sections may leave out the publisher's root."""
    path = write(
        tmp_path,
        '[receiver]\nlisten = ["127.0.0.1:8873"]\nstate_dir = "TMP/rstate"\n'
        '[receiver.repos.ius]\nsecret_file = "TMP/r.secret"\n'
        'upstream = "rsync://up.example/ius/"\ntarget = "TMP/srv/ius"\nmarker = "lastupdate"\n'
        '[publisher]\nstate_dir = "TMP/pstate"\n[publisher.repos.ius]\n'
        + MIRROR.format(repo="ius", name="m1"),
    )
    host = load_config(path).publishers
    assert host is not None
    assert host.repos[0].root == tmp_path / "srv/ius"
    assert host.repos[0].marker == "lastupdate"  # the marker the hub installs
    assert host.repos[0].after_marker == ()


def test_a_hubs_trace_and_lastsync_are_written_after_the_marker(tmp_path: Path) -> None:
    """The files the hub's receiver writes in the published tree once the marker is in:
    the publisher's walk must not take them for a publish under way."""
    path = write(
        tmp_path,
        HUB.replace(
            'target = "TMP/srv/ius"\n',
            'target = "TMP/srv/ius"\ntrace = "project/trace/hub"\nlastsync = "lastsync"\n',
        ),
    )
    host = load_config(path).publishers
    assert host is not None
    assert host.repos[0].after_marker == ("project/trace/hub", "lastsync")


def test_problems_are_named_by_repository(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[publisher]\nstate_dir = "TMP/state"\nroot = "TMP/x"\n'
        '[publisher.repos.ius]\nroot = "TMP/srv/ius"\nmirrors = []\n'
        "[publisher.repos.epel]\n" + MIRROR.format(repo="epel", name="m2"),
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = [problem.removeprefix(f"{path}: ") for problem in caught.value.problems]
    assert found == [
        "publisher.root: set it in each [publisher.repos.NAME] table, not beside repos",
        "publisher.repos.ius.mirrors: must list at least one mirror"
        " (or set signing_key_file: mirrors may subscribe)",
        "publisher.repos.epel.root: required key is missing (a hub leaves it out when "
        "[receiver.repos.epel] is there too: its target is the root)",
    ]


HUB = (
    '[receiver]\nlisten = ["127.0.0.1:8873"]\nstate_dir = "TMP/rstate"\n'
    '[receiver.repos.ius]\nsecret_file = "TMP/r.secret"\n'
    'upstream = "rsync://up.example/ius/"\ntarget = "TMP/srv/ius"\n'
    '[publisher]\nstate_dir = "TMP/pstate"\n[publisher.repos.ius]\n'
    + MIRROR.format(repo="ius", name="m1")
)


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        pytest.param(
            ('target = "TMP/srv/ius"\n', ""),
            "receiver.repos.ius.target: required key is missing",
            id="repository-key",
        ),
        pytest.param(
            ('listen = ["127.0.0.1:8873"]', 'listen = ["nowhere"]'),
            "receiver.listen: item 0: ",
            id="host-key",
        ),
    ],
)
def test_a_broken_receiver_is_named_not_the_hub_publishers_root(
    tmp_path: Path, broken: tuple[str, str], problem: str
) -> None:
    """A hub repository's root is its receiver's target: when the receiver's section is
    broken, its own key is the problem listed, not ``publisher.repos.ius.root`` (which the
    file rightly leaves out); the publisher's own problems are still listed."""
    text = HUB.replace(*broken).replace('name = "m1"', 'name = "m 1"')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    found = [line.split(": ", 1)[1] for line in caught.value.problems]
    assert len(found) == 2, found
    assert found[0].startswith(problem), found
    assert found[1].startswith("publisher.repos.ius.mirrors[0].name: "), found
