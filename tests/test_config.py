"""The TOML configuration: values, defaults, and every problem as ``FILE: key.path: problem``."""

from __future__ import annotations

import base64
import math
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mirrorhook.addresses import Listen, parse_listen, redact_upstream
from mirrorhook.config import load_config
from mirrorhook.errors import ConfigError
from mirrorhook.signing import Secret
from tests.helpers import receiver_toml, write_secret

UPSTREAM = "rsync://mirror.example.org/ius/"
LISTEN = "127.0.0.1:8873"


def _write(tmp_path: Path, text: str) -> Path:
    """Write a config file with ``text`` (dedented) and return its path."""
    path = tmp_path / "mirrorhook.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _minimal(tmp_path: Path, *, omit: str = "", extra: str = "") -> Path:
    """Write a ``[receiver]`` config with only the required keys (less ``omit``, plus ``extra``)."""
    secret_file = tmp_path / "receiver.secret"
    if not secret_file.exists():
        write_secret(secret_file)
    required = {
        "listen": f'["{LISTEN}"]',
        "secret_file": f'"{secret_file}"',
        "upstream": f'"{UPSTREAM}"',
        "target": f'"{tmp_path / "mirror"}"',
        "state_dir": f'"{tmp_path / "state"}"',
    }
    lines = ["[receiver]"] + [f"{key} = {value}" for key, value in required.items() if key != omit]
    path = tmp_path / "mirrorhook.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _with(tmp_path: Path, **overrides: Any) -> Path:
    """Write a valid ``[receiver]`` config with ``overrides`` applied."""
    values: dict[str, Any] = {"upstream": UPSTREAM, "port": 8873, **overrides}
    return receiver_toml(tmp_path, **values)


def _problems(path: Path) -> tuple[str, ...]:
    """Load ``path``, expecting a ``ConfigError``; return its problems."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def _only_problem(path: Path, key_path: str) -> str:
    """Return the one problem of ``path``, after checking it names the file and ``key_path``."""
    problems = _problems(path)
    assert len(problems) == 1, problems
    prefix = f"{path}: {key_path}: "
    assert problems[0].startswith(prefix), problems[0]
    return problems[0].removeprefix(prefix)


def _key_path(path: Path, problem: str) -> str:
    """Return the key path part of a ``FILE: key.path: problem`` line."""
    assert problem.startswith(f"{path}: "), problem
    return problem.removeprefix(f"{path}: ").split(": ", 1)[0]


# --- valid configurations ---


def test_minimal_receiver_config_loads_with_spec_defaults(tmp_path: Path) -> None:
    """Only the required keys given: every optional key takes the default of
    docs/design.md#configuration-defaults."""
    path = _minimal(tmp_path)
    config = load_config(path)
    receiver = config.receiver
    assert receiver is not None
    assert config.path == path
    assert receiver.listen == (Listen(host="127.0.0.1", port=8873),)
    assert receiver.secret_file == tmp_path / "receiver.secret"
    assert receiver.secret == Secret.parse((tmp_path / "receiver.secret").read_text())
    assert receiver.upstream == UPSTREAM
    assert receiver.target == tmp_path / "mirror"
    assert receiver.state_dir == tmp_path / "state"
    assert receiver.marker == "CURRENT"
    assert receiver.exclude_from is None
    assert receiver.rsync == "rsync"
    assert receiver.rsync_args == ()
    assert receiver.max_delete == 10_000
    assert receiver.backoff == 30
    assert receiver.poll_interval == 3600
    assert receiver.poll_jitter == 300
    assert receiver.retries == 5
    assert receiver.timeout == 21600
    assert receiver.max_body == 65536


RSYNC = shutil.which("rsync") or "/usr/bin/rsync"


def test_full_receiver_config_loads_every_value(tmp_path: Path) -> None:
    """Every [receiver] key of docs/design.md#configuration-defaults is read into the matching
    field."""
    secret_text = write_secret(tmp_path / "hook.secret")
    path = _write(
        tmp_path,
        f"""\
        [receiver]
        listen = ["127.0.0.1:8873", "[::1]:9000", "unix:/run/mirrorhook/hook.sock"]
        secret_file = "{tmp_path}/hook.secret"
        upstream = "mirror.example.org::ius/"
        target = "/srv/mirror/ius"
        marker = "TIME.stamp_1"
        exclude_from = "/etc/mirrorhook/exclude.txt"
        rsync = "{RSYNC}"
        rsync_args = ["--bwlimit=1000", "--ipv4"]
        max_delete = 500
        backoff = 12
        poll_interval = 0
        poll_jitter = 2.5
        retries = 7
        timeout = 600
        state_dir = "/var/lib/mirrorhook"
        max_body = 1024
        """,
    )
    receiver = load_config(path).receiver
    assert receiver is not None
    assert receiver.listen == (
        Listen(host="127.0.0.1", port=8873),
        Listen(host="::1", port=9000),
        Listen(path=Path("/run/mirrorhook/hook.sock")),
    )
    assert receiver.secret_file == tmp_path / "hook.secret"
    assert receiver.secret == Secret.parse(secret_text)
    assert receiver.upstream == "mirror.example.org::ius/"
    assert receiver.target == Path("/srv/mirror/ius")
    assert receiver.marker == "TIME.stamp_1"
    assert receiver.exclude_from == Path("/etc/mirrorhook/exclude.txt")
    assert receiver.rsync == RSYNC
    assert receiver.rsync_args == ("--bwlimit=1000", "--ipv4")
    assert receiver.max_delete == 500
    assert receiver.backoff == 12
    assert receiver.poll_interval == 0
    assert receiver.poll_jitter == 2.5
    assert receiver.retries == 7
    assert receiver.timeout == 600
    assert receiver.state_dir == Path("/var/lib/mirrorhook")
    assert receiver.max_body == 1024


@pytest.mark.parametrize(
    "upstream",
    [
        "rsync://mirror.example.org/ius/",
        "rsync://mirror@mirror.example.org:873/ius/el9/",
        "mirror.example.org::ius/",
        "mirror@mirror.example.org::ius/",
        "mirror.example.org:/srv/ius/",
        "mirror@mirror.example.org:/srv/ius/",
        "/srv/upstream/ius/",
    ],
)
def test_every_rsync_source_form_is_accepted(tmp_path: Path, upstream: str) -> None:
    """rsync://, HOST::MODULE, [USER@]HOST:PATH and absolute local paths are all sources."""
    receiver = load_config(_with(tmp_path, upstream=upstream)).receiver
    assert receiver is not None
    assert receiver.upstream == upstream


def test_group_readable_secret_file_is_accepted(tmp_path: Path) -> None:
    """Only world-readable secrets are refused: mode 0640 (a service group) is fine."""
    write_secret(tmp_path / "receiver.secret")
    (tmp_path / "receiver.secret").chmod(0o640)
    assert load_config(_with(tmp_path)).receiver is not None


# --- unknown and missing keys ---


def test_unknown_key_is_named_with_its_section(tmp_path: Path) -> None:
    """A typo such as ``bakcoff`` is an error, not silently ignored."""
    path = _with(tmp_path, bakcoff=5)
    assert "unknown key" in _only_problem(path, "receiver.bakcoff")


def test_an_unknown_key_names_the_nearest_known_one_or_every_key_of_its_table(
    tmp_path: Path,
) -> None:
    """``bakcoff`` suggests ``backoff``; a name like no key lists the keys the table takes."""
    assert _only_problem(_with(tmp_path, bakcoff=5), "receiver.bakcoff") == (
        "unknown key: did you mean 'backoff'?"
    )
    far = _only_problem(_with(tmp_path, zzzz=5), "receiver.zzzz")
    assert far.startswith("unknown key (this table takes ")
    assert "backoff" in far
    assert "poll_interval" in far


def test_problems_are_listed_in_the_order_of_the_file(tmp_path: Path) -> None:
    """Problems come top to bottom as their keys stand in the file, whatever order the
    loader checks them in: here the file's order is the reverse of the loader's."""
    path = _minimal(
        tmp_path,
        extra='zzz_first = 1\npoll_jitter = -1\nbackoff = "soon"\nretries = 0\n',
    )
    keys = [_key_path(path, problem) for problem in _problems(path)]
    assert keys == [
        "receiver.zzz_first",
        "receiver.poll_jitter",
        "receiver.backoff",
        "receiver.retries",
    ]


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """A misspelt section name is an error too."""
    path = _minimal(tmp_path, extra="[reciever]\nbackoff = 5\n")
    assert "unknown" in _only_problem(path, "reciever")


@pytest.mark.parametrize("key", ["listen", "secret_file", "upstream", "target", "state_dir"])
def test_missing_required_key_is_named(tmp_path: Path, key: str) -> None:
    """Each required key of [receiver] is reported by name when it is absent."""
    path = _minimal(tmp_path, omit=key)
    assert "missing" in _only_problem(path, f"receiver.{key}")


def test_file_without_any_role_section_is_refused(tmp_path: Path) -> None:
    """A config that runs nothing is an error naming the file."""
    path = _write(tmp_path, "# nothing here\n")
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")


# --- bad values: one problem each, naming file and key path ---

BAD_VALUES = [
    # wrong types
    pytest.param("backoff", "30", "number", id="string-for-duration"),
    pytest.param("timeout", [600], "number", id="array-for-duration"),
    pytest.param("backoff", True, "number", id="bool-for-duration"),
    pytest.param("retries", True, "integer", id="bool-for-int"),
    pytest.param("max_delete", False, "integer", id="bool-for-max-delete"),
    pytest.param("retries", 2.5, "integer", id="float-for-int"),
    pytest.param("max_body", "65536", "integer", id="string-for-int"),
    pytest.param("target", 5, "string", id="number-for-path"),
    pytest.param("marker", 1, "string", id="number-for-marker"),
    pytest.param("rsync", 1.5, "string", id="number-for-rsync"),
    pytest.param("upstream", 42, "string", id="number-for-upstream"),
    pytest.param("rsync_args", "--ipv4", "array", id="string-for-array"),
    pytest.param("rsync_args", ["--ipv4", 3], "item 1", id="number-in-string-array"),
    pytest.param("rsync_args", ["--ipv4", ""], "item 1", id="empty-string-in-array"),
    pytest.param("listen", ["127.0.0.1:8873", 8873], "item 1", id="number-in-listen"),
    # relative paths
    pytest.param("target", "srv/mirror", "absolute", id="relative-target"),
    pytest.param("state_dir", "./state", "absolute", id="relative-state-dir"),
    pytest.param("secret_file", "receiver.secret", "absolute", id="relative-secret-file"),
    pytest.param("exclude_from", "exclude.txt", "absolute", id="relative-exclude-from"),
    pytest.param("rsync", "./x", "absolute", id="relative-rsync"),
    pytest.param("rsync", "bin/rsync", "absolute", id="relative-rsync-in-folder"),
    pytest.param("rsync", "/nonexistent/rsync", "not an executable", id="missing-rsync"),
    pytest.param("rsync", "rsynx", "not an executable", id="rsync-not-on-path"),
    pytest.param("target", "", "empty", id="empty-target"),
    # listen forms
    pytest.param("listen", "127.0.0.1:8873", "array", id="listen-not-array"),
    pytest.param("listen", [], "at least one", id="listen-empty-list"),
    pytest.param("listen", ["127.0.0.1"], "HOST:PORT", id="listen-no-port"),
    pytest.param("listen", ["127.0.0.1:"], "port", id="listen-empty-port"),
    pytest.param("listen", ["127.0.0.1:0"], "port", id="listen-port-0"),
    pytest.param("listen", ["127.0.0.1:70000"], "port", id="listen-port-70000"),
    pytest.param("listen", ["127.0.0.1:abc"], "port", id="listen-port-abc"),
    pytest.param("listen", [":8873"], "HOST:PORT", id="listen-no-host"),
    pytest.param("listen", ["::1:8873"], "brackets", id="listen-ipv6-without-brackets"),
    pytest.param("listen", ["[zz::1]:8873"], "IPv6", id="listen-bad-bracket-content"),
    pytest.param("listen", ["[127.0.0.1]:8873"], "IPv6", id="listen-ipv4-in-brackets"),
    pytest.param("listen", ["unix:run/hook.sock"], "absolute", id="listen-relative-unix"),
    pytest.param("listen", [""], "empty", id="listen-empty-string"),
    # upstream forms
    pytest.param("upstream", "-x", "option", id="upstream-option"),
    pytest.param("upstream", "--rsh=sh -c evil", "option", id="upstream-long-option"),
    pytest.param("upstream", "ftp://mirror.example.org/ius/", "rsync://", id="upstream-ftp-url"),
    pytest.param("upstream", "https://mirror.example.org/ius/", "rsync://", id="upstream-https"),
    pytest.param("upstream", "mirror/ius", "rsync://", id="upstream-relative-path"),
    pytest.param("upstream", "./ius/", "rsync://", id="upstream-dot-relative-path"),
    pytest.param("upstream", "rsync://mirror.example.org", "rsync://", id="upstream-no-module"),
    pytest.param("upstream", "rsync://u:pw@host/ius/", "password", id="upstream-url-password"),
    pytest.param("upstream", "u:pw@host::ius/", "password", id="upstream-daemon-password"),
    # marker names
    pytest.param("marker", "a/b", "file name", id="marker-with-slash"),
    pytest.param("marker", "*", "file name", id="marker-glob"),
    pytest.param("marker", "..", "file name", id="marker-dotdot"),
    pytest.param("marker", "", "empty", id="marker-empty"),
    # files mirrorhook writes into the tree
    pytest.param("trace", "/srv/mirror/trace", "relative to target", id="absolute-trace"),
    pytest.param("lastsync", "/lastsync", "relative to target", id="absolute-lastsync"),
    pytest.param("trace", "project/../../etc/x", "'..'", id="trace-dotdot"),
    pytest.param("lastsync", "..", "'..'", id="lastsync-dotdot"),
    pytest.param("trace", "project//trace", "single '/'", id="trace-empty-part"),
    pytest.param("trace", "project/trace/", "single '/'", id="trace-trailing-slash"),
    pytest.param("trace", "project/*", "plain names", id="trace-glob"),
    pytest.param("lastsync", ".lastsync", "plain names", id="lastsync-hidden"),
    pytest.param("lastsync", 1, "string", id="number-for-lastsync"),
    # numbers out of range
    pytest.param("backoff", -1, "negative", id="negative-backoff"),
    pytest.param("poll_interval", -0.5, "negative", id="negative-poll-interval"),
    pytest.param("poll_jitter", -300, "negative", id="negative-poll-jitter"),
    pytest.param("timeout", -5, "more than 0", id="negative-timeout"),
    pytest.param("timeout", 0, "more than 0", id="zero-timeout"),
    pytest.param("backoff", math.inf, "finite", id="infinite-backoff"),
    pytest.param("retries", 0, "at least 1", id="zero-retries"),
    pytest.param("max_delete", 0, "at least 1", id="zero-max-delete"),
    pytest.param("max_body", 1023, "1024", id="max-body-too-small"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), BAD_VALUES)
def test_bad_value_is_one_problem_naming_file_and_key(
    tmp_path: Path, key: str, value: object, fragment: str
) -> None:
    """A bad value gives exactly one ``FILE: receiver.KEY: problem`` line saying what is wrong."""
    path = _with(tmp_path, **{key: value})
    assert fragment in _only_problem(path, f"receiver.{key}")


@pytest.mark.parametrize(
    ("overrides", "key", "problem"),
    [
        ({"trace": "CURRENT"}, "trace", "'CURRENT' is the same file as marker ('CURRENT')"),
        ({"lastsync": "CURRENT"}, "lastsync", "'CURRENT' is the same file as marker ('CURRENT')"),
        (
            {"marker": "stamp", "trace": "stamp/trace"},
            "trace",
            "'stamp/trace' nests with marker ('stamp')",
        ),
        (
            {"trace": "project/trace/m", "lastsync": "project/trace/m"},
            "lastsync",
            "'project/trace/m' is the same file as trace ('project/trace/m')",
        ),
        (
            {"trace": "project/trace", "lastsync": "project/trace/lastsync"},
            "lastsync",
            "'project/trace/lastsync' nests with trace ('project/trace')",
        ),
    ],
)
def test_trace_and_lastsync_must_be_apart_from_the_marker_and_each_other(
    tmp_path: Path, overrides: dict[str, str], key: str, problem: str
) -> None:
    """One file cannot be the marker and a trace, nor a file and a folder at once: one
    one-line problem naming the key and the file it collides with."""
    assert _only_problem(_with(tmp_path, **overrides), f"receiver.{key}") == problem


def test_trace_and_lastsync_are_kept_as_given(tmp_path: Path) -> None:
    """Valid paths load as written; they are protected like the marker, in that order."""
    receiver = load_config(
        _with(tmp_path, trace="project/trace/mirror.example.org", lastsync="lastsync")
    ).receiver
    assert receiver is not None
    assert receiver.trace == "project/trace/mirror.example.org"
    assert receiver.lastsync == "lastsync"
    assert receiver.own_files == ("CURRENT", "project/trace/mirror.example.org", "lastsync")
    plain = load_config(_with(tmp_path)).receiver
    assert plain is not None
    assert (plain.trace, plain.lastsync, plain.own_files) == (None, None, ("CURRENT",))


def test_bad_listen_entry_names_its_index(tmp_path: Path) -> None:
    """In a list of addresses, the problem says which item is wrong."""
    path = _with(tmp_path, listen=["127.0.0.1:8873", "[::1]:8873", "localhost"])
    assert _only_problem(path, "receiver.listen").startswith("item 2: ")


# --- the secret file ---


def _secret_problem(tmp_path: Path, text: str) -> str:
    """Write ``text`` as the receiver's secret file and return the one problem loading gives."""
    write_secret(tmp_path / "receiver.secret", text)
    problem = _only_problem(_with(tmp_path), "receiver.secret_file")
    assert text not in problem, "a problem line must not reveal the secret"
    return problem


def test_missing_secret_file_is_reported(tmp_path: Path) -> None:
    """A secret file that does not exist is named, with the reason it cannot be read."""
    absent = tmp_path / "absent.secret"
    path = _with(tmp_path, secret_file=str(absent))
    problem = _only_problem(path, "receiver.secret_file")
    assert str(absent) in problem
    assert "No such file" in problem


def test_world_readable_secret_file_is_refused(tmp_path: Path) -> None:
    """A secret other users can read is not a secret: mode 0644 is refused."""
    write_secret(tmp_path / "receiver.secret")
    (tmp_path / "receiver.secret").chmod(0o644)
    assert "world-readable" in _only_problem(_with(tmp_path), "receiver.secret_file")


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o660, 0o622])
def test_secret_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever can rewrite a secret can forge webhooks: group or world write is refused."""
    write_secret(tmp_path / "receiver.secret")
    (tmp_path / "receiver.secret").chmod(mode)
    problem = _only_problem(_with(tmp_path), "receiver.secret_file")
    assert "writable by others than its owner" in problem


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_secret_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A secret owned by some other account (it can chmod it at will) is refused, named."""
    write_secret(tmp_path / "receiver.secret")
    os.chown(tmp_path / "receiver.secret", 65534, 65534)
    problem = _only_problem(_with(tmp_path), "receiver.secret_file")
    assert "owned by uid 65534, neither this user (uid 0) nor root" in problem


def test_secret_without_whsec_prefix_is_refused(tmp_path: Path) -> None:
    """The secret must be in the Standard Webhooks form ``whsec_<base64>``."""
    text = base64.b64encode(bytes(range(32))).decode()
    assert "whsec_" in _secret_problem(tmp_path, text)


def test_secret_with_invalid_base64_is_refused(tmp_path: Path) -> None:
    """What follows ``whsec_`` must be valid base64."""
    assert "base64" in _secret_problem(tmp_path, "whsec_not*base64!at&all")


def test_secret_with_too_short_a_key_is_refused(tmp_path: Path) -> None:
    """A key of fewer than 16 bytes is too weak to sign with."""
    text = "whsec_" + base64.b64encode(b"8 bytes!").decode()
    assert "too short" in _secret_problem(tmp_path, text)


# --- several problems at once; unreadable files ---


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """An operator fixes a config in one round: all problems come in one ConfigError."""
    path = _minimal(tmp_path, omit="state_dir")
    with path.open("a") as config:
        config.write(
            'colour = "blue"\nbackoff = -1\nretries = 0\nmarker = "a/b"\n'
            'listen_extra = 1\nrsync = "./x"\n'
        )
    problems = _problems(path)
    assert sorted(_key_path(path, problem) for problem in problems) == [
        "receiver.backoff",
        "receiver.colour",
        "receiver.listen_extra",
        "receiver.marker",
        "receiver.retries",
        "receiver.rsync",
        "receiver.state_dir",
    ]


def test_invalid_secret_and_invalid_values_are_reported_together(tmp_path: Path) -> None:
    """A bad secret file does not hide the problems of other keys, nor the reverse."""
    write_secret(tmp_path / "receiver.secret")
    (tmp_path / "receiver.secret").chmod(0o644)
    path = _with(tmp_path, target="relative", retries=0)
    problems = _problems(path)
    assert sorted(_key_path(path, problem) for problem in problems) == [
        "receiver.retries",
        "receiver.secret_file",
        "receiver.target",
    ]


def test_bad_toml_syntax_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A TOML syntax error is reported as one line that starts with the file's path."""
    path = _write(tmp_path, "[receiver\nlisten = \n")
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")
    assert "TOML" in problems[0]
    assert "\n" not in problems[0]


def test_missing_config_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A config file that does not exist is reported as one line naming it."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 1
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_config_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A binary or mis-encoded config file is an error naming it, not a traceback."""
    path = tmp_path / "mirrorhook.toml"
    path.write_bytes(b'[receiver]\nmarker = "\xff"\n')
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")


# --- parse_listen ---


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8873", Listen(host="127.0.0.1", port=8873)),
        ("[::1]:8873", Listen(host="::1", port=8873)),
        ("localhost:1", Listen(host="localhost", port=1)),
        ("0.0.0.0:65535", Listen(host="0.0.0.0", port=65535)),  # noqa: S104 - a test value
        ("unix:/run/x.sock", Listen(path=Path("/run/x.sock"))),
    ],
)
def test_parse_listen_reads_each_address_form(text: str, expected: Listen) -> None:
    """HOST:PORT, [IPV6]:PORT and unix:/PATH parse, and print back as written."""
    listen = parse_listen(text)
    assert listen == expected
    assert str(listen) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("localhost", "HOST:PORT"),
        ("localhost:0", "port"),
        ("localhost:65536", "port"),
        ("::1:8873", "brackets"),
        ("[nope]:1", "IPv6"),
        ("unix:x.sock", "absolute"),
    ],
)
def test_parse_listen_rejects_malformed_addresses(text: str, fragment: str) -> None:
    """A malformed address raises ValueError (which load_config turns into a problem line)."""
    with pytest.raises(ValueError, match=fragment):
        parse_listen(text)


# --- redact_upstream ---


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("rsync://mirror@host.example/ius/", "rsync://host.example/ius/"),
        ("rsync://mirror:s3cret@host.example/ius/", "rsync://host.example/ius/"),
        ("rsync://mirror:s3cret@host.example:873/ius/", "rsync://host.example:873/ius/"),
        ("mirror@host.example::ius/", "host.example::ius/"),
        pytest.param("mirror:s3cret@host.example::ius/", "host.example::ius/"),
        ("mirror@host.example:/srv/ius/", "host.example:/srv/ius/"),
    ],
)
def test_redact_upstream_removes_credentials(upstream: str, expected: str) -> None:
    """``user@`` and ``user:password@`` never reach status output or logs."""
    assert redact_upstream(upstream) == expected


@pytest.mark.parametrize(
    "upstream",
    [
        "/srv/user@host/ius/",
        "/srv/upstream:ius/",
        "rsync://host.example/ius/a@b/",
        "host.example::ius/a@b/",
        "host.example:/srv/a@b/",
    ],
)
def test_redact_upstream_leaves_sources_without_credentials_untouched(upstream: str) -> None:
    """An ``@`` in a path, not in the host part, is not a credential and is kept."""
    assert redact_upstream(upstream) == upstream


def test_a_target_inside_the_state_dir_is_refused(tmp_path: Path) -> None:
    """rsync --delete there could remove the state, the tree locks with it."""
    path = _with(tmp_path, state_dir=str(tmp_path / "state"), target=str(tmp_path / "state/t"))
    assert "must be outside state_dir" in _only_problem(path, "receiver.target")


@pytest.mark.parametrize("inside", ["", ".mirrorhook", "sub/state"])
def test_state_dir_inside_the_target_is_refused(tmp_path: Path, inside: str) -> None:
    """rsync --delete would remove a state folder inside the tree, lock file included."""
    target = tmp_path / "tree"
    path = _with(tmp_path, target=str(target), state_dir=str(target / inside))
    assert "outside target" in _only_problem(path, "receiver.state_dir")
