"""The host form of ``[receiver]``: many repositories, defaults from the host level, and
every problem named by its repository (the single form is tests/test_config.py's)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mirrorhook import rsync
from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError
from mirrorhook.receiver_config import repositories
from tests.helpers import write_secret


def host_toml(tmp: Path, repos: dict[str, dict[str, object]], host: str = "") -> Path:
    """A ``[receiver]`` host with ``repos`` (NAME → keys beyond the required ones)."""
    lines = [
        "[receiver]",
        'listen = ["127.0.0.1:8873"]',
        f'state_dir = "{tmp / "state"}"',
        textwrap.dedent(host),
    ]
    for name, keys in repos.items():
        secret = tmp / f"{name}.secret"
        if not secret.exists() and name.isascii():
            write_secret(secret)
        values: dict[str, object] = {
            "secret_file": str(secret),
            "upstream": f"rsync://mirror.example.org/{name}/",
            "target": str(tmp / "srv" / name),
            **keys,
        }
        lines.append(f'[receiver.repos."{name}"]')
        for key, value in values.items():
            text = f'"{value}"' if isinstance(value, str) else str(value).lower()
            if isinstance(value, list):
                text = "[" + ", ".join(f'"{item}"' for item in value) + "]"
            lines.append(f"{key} = {text}")
    path = tmp / "host.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def single_toml(tmp: Path, extra: str = "") -> Path:
    tmp.mkdir(exist_ok=True)
    write_secret(tmp / "r.secret")
    path = tmp / "single.toml"
    path.write_text(
        "[receiver]\n"
        'listen = ["127.0.0.1:8873"]\n'
        f'secret_file = "{tmp / "r.secret"}"\n'
        'upstream = "rsync://mirror.example.org/ius/"\n'
        f'target = "{tmp / "mirror"}"\n'
        f'state_dir = "{tmp / "state"}"\n' + extra
    )
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [problem.removeprefix(f"{path}: ") for problem in caught.value.problems]


def test_repositories_inherit_the_host_levels_keys_and_keep_their_own_state(
    tmp_path: Path,
) -> None:
    """A key at the host level is every repository's default; a repository's own wins;
    each repository's state lives in state_dir/repos/NAME."""
    path = host_toml(
        tmp_path,
        {"ius": {}, "epel": {"backoff": 120, "enabled": False}},
        host="backoff = 5\nmax_syncs = 3\npoll_interval = 600\n",
    )
    host = load_config(path).receivers
    assert host is not None
    assert not host.single
    assert host.max_syncs == 3
    ius, epel = host.named("ius"), host.named("epel")
    assert ius is not None
    assert epel is not None
    assert (ius.backoff, epel.backoff) == (5, 120)
    assert ius.poll_interval == epel.poll_interval == 600
    assert (ius.enabled, epel.enabled) == (True, False)
    assert ius.state_dir == tmp_path / "state" / "repos" / "ius"
    assert load_config(path).receiver is None  # not the single form


def test_the_single_form_is_one_unnamed_repository(tmp_path: Path) -> None:
    config = load_config(single_toml(tmp_path))
    assert config.receivers is not None
    assert config.receivers.single
    assert config.receiver is not None
    assert config.receiver.name is None
    assert config.receiver.state_dir == tmp_path / "state"


def test_every_form_limits_deletions_by_default_and_takes_another_limit(tmp_path: Path) -> None:
    """docs/design.md#configuration-defaults: a sync deletes at most ``max_delete`` files,
    10,000 unless set — in the single form, in each repository of the host form, from the
    host level, or the repository's own value — and its rsync says so."""
    single = load_config(single_toml(tmp_path / "single")).receivers
    own = load_config(single_toml(tmp_path / "own", "max_delete = 50\n")).receivers
    (tmp_path / "plain").mkdir()
    (tmp_path / "host").mkdir()
    plain = load_config(host_toml(tmp_path / "plain", {"ius": {}})).receivers
    host = load_config(
        host_toml(tmp_path / "host", {"ius": {}, "epel": {"max_delete": 7}}, "max_delete = 300")
    ).receivers
    sections = {"single": single, "own": own, "plain": plain, "host": host}
    limits = {
        f"{form} {repo.name}": [arg for arg in rsync.tree_args(repo) if "max-delete" in arg]
        for form, section in sections.items()
        for repo in repositories(section)
    }
    assert limits == {
        "single None": ["--max-delete=10000"],
        "own None": ["--max-delete=50"],
        "plain ius": ["--max-delete=10000"],
        "host ius": ["--max-delete=300"],
        "host epel": ["--max-delete=7"],
    }


def test_every_problem_is_named_by_its_repository(tmp_path: Path) -> None:
    """Problems in several repositories are all reported at once, each with its key path."""
    path = host_toml(
        tmp_path,
        {"ius": {"upstream": "http://nope/"}, "epel": {"backoff": -1}, "Bad Name": {}},
    )
    found = problems_of(path)
    assert any(line.startswith("receiver.repos.ius.upstream: ") for line in found), found
    assert any(line.startswith("receiver.repos.epel.backoff: ") for line in found), found
    assert any(
        line.startswith("receiver.repos.Bad Name: a repository name is") for line in found
    ), found


def test_shared_and_nested_targets_are_refused(tmp_path: Path) -> None:
    """rsync --delete in one tree must never touch another's files."""
    shared = problems_of(
        host_toml(tmp_path, {"a": {"target": "/srv/x"}, "b": {"target": "/srv/x"}})
    )
    assert shared == [
        "receiver.repos.b.target: is the same as the target of repository 'a' (/srv/x)"
    ]
    nested = problems_of(
        host_toml(tmp_path, {"a": {"target": "/srv/x"}, "b": {"target": "/srv/x/y"}})
    )
    assert nested == ["receiver.repos.b.target: nests with the target of repository 'a' (/srv/x)"]


def test_a_target_holding_the_state_dir_is_refused(tmp_path: Path) -> None:
    path = host_toml(tmp_path, {"a": {"target": str(tmp_path)}})
    assert problems_of(path) == [
        f"receiver.repos.a.target: must not hold state_dir ({tmp_path / 'state'}): "
        "rsync --delete would remove it"
    ]


def test_a_target_inside_the_state_dir_is_refused(tmp_path: Path) -> None:
    """rsync --delete there could remove the state, the host's tree locks with it."""
    path = host_toml(tmp_path, {"a": {"target": str(tmp_path / "state" / "locks")}})
    assert problems_of(path) == [
        f"receiver.repos.a.target: must be outside state_dir ({tmp_path / 'state'}): "
        "rsync --delete would remove the state there (the sync locks with it)"
    ]


def test_the_host_form_may_not_set_a_trees_own_keys(tmp_path: Path) -> None:
    path = host_toml(tmp_path, {"a": {}}, host='upstream = "rsync://h/m/"\n')
    assert problems_of(path) == [
        "receiver.upstream: set it in each [receiver.repos.NAME] table, not beside repos"
    ]


def test_unknown_keys_and_missing_ones_are_named_in_the_repository(tmp_path: Path) -> None:
    path = host_toml(tmp_path, {"a": {"bakcoff": 3}})
    assert problems_of(path) == ["receiver.repos.a.bakcoff: unknown key: did you mean 'backoff'?"]


def test_exec_hooks_must_name_a_program_that_exists(tmp_path: Path) -> None:
    path = host_toml(tmp_path, {"a": {"exec_on_success": ["no-such-program-here", "--x"]}})
    assert problems_of(path) == [
        "receiver.repos.a.exec_on_success: 'no-such-program-here' is not an executable "
        "(nor on PATH)"
    ]
    fine = host_toml(tmp_path, {"a": {"exec_on_failure": ["/bin/true", "x"]}})
    repo = load_config(fine).receivers.repos[0]  # type: ignore[union-attr]
    assert repo.exec_on_failure == ("/bin/true", "x")


def test_a_host_without_repositories_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text(
        f'[receiver]\nlisten = ["127.0.0.1:8873"]\nstate_dir = "{tmp_path}/s"\n[receiver.repos]\n'
    )
    assert problems_of(path) == [
        "receiver.repos: must hold at least one [receiver.repos.NAME] table"
    ]


def test_a_missing_program_set_for_every_repository_is_one_problem(tmp_path: Path) -> None:
    path = host_toml(tmp_path, {"a": {}, "b": {}}, host='rsync = "no-such-rsync-here"\n')
    assert problems_of(path) == [
        "receiver.rsync: 'no-such-rsync-here' is not an executable (nor on PATH): install rsync"
    ]


def test_targets_are_compared_after_dot_dot_is_resolved(tmp_path: Path) -> None:
    path = host_toml(
        tmp_path, {"a": {"target": "/srv/m/ius"}, "b": {"target": "/srv/m/epel/../ius"}}
    )
    assert problems_of(path) == [
        "receiver.repos.b.target: is the same as the target of repository 'a' (/srv/m/ius)"
    ]


def test_trace_files_are_inherited_and_checked_in_each_repository(tmp_path: Path) -> None:
    """trace and lastsync set at the host level are each repository's default; a clash with
    a repository's own marker is that repository's problem."""
    host = host_toml(
        tmp_path,
        {"ius": {}, "arch": {"lastsync": "lastupdate-ours"}},
        host='trace = "project/trace/m.example.org"\nlastsync = "lastsync"\n',
    )
    repos = load_config(host).receivers.repos  # type: ignore[union-attr]
    assert [(repo.trace, repo.lastsync) for repo in repos] == [
        ("project/trace/m.example.org", "lastsync"),
        ("project/trace/m.example.org", "lastupdate-ours"),
    ]
    clash = host_toml(tmp_path, {"ius": {"marker": "lastsync"}}, host='lastsync = "lastsync"\n')
    assert problems_of(clash) == [
        "receiver.repos.ius.lastsync: 'lastsync' is the same file as marker ('lastsync')"
    ]
