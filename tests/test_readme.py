"""The README cannot drift from the code: its table of contents, its config examples, the
commands and flags it shows, the files it names, the URLs it gives for the daemon, its
metric names, and the headings and rsync command of the output it quotes are each checked
against what they describe."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorhook import endpoints, service
from mirrorhook.cli import build_parser
from mirrorhook.config import load_config
from mirrorhook.credentials import write_private_key
from mirrorhook.describe import describe
from mirrorhook.fleet import Fleet
from mirrorhook.keys import SigningKey
from mirrorhook.metrics import Metrics
from mirrorhook.notify import format_outcomes
from mirrorhook.status import format_publisher, format_repos
from mirrorhook.supervisor import Supervisor
from tests import markdown
from tests.helpers import write_secret

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
BLOCKS = markdown.blocks(README)
PROSE = markdown.prose(README)
INLINE = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", PROSE)]
"""The README's inline code spans, each on one line."""


# --- the table of contents ------------------------------------------------------------------


def _contents() -> list[str]:
    """The anchors the table of contents links to: the list after ``**Contents**``."""
    after = README.split("\n**Contents**\n", 1)[1].lstrip("\n")
    listed = after.split("\n\n", 1)[0]
    assert listed.startswith("- ")
    return re.findall(r"\]\(#([^)]+)\)", listed)


def test_the_table_of_contents_links_every_section_and_resolves() -> None:
    """Each link of the table of contents is a heading's anchor (GitHub's slugs), and each
    section (## and ###) is in it; every other link to an anchor of the README resolves."""
    anchors = markdown.anchors(README)
    contents = _contents()
    assert len(contents) >= 10
    for anchor in contents:
        assert anchor in anchors, f"the table of contents links #{anchor}: no such heading"
    sections = [markdown.slug(text) for level, text in markdown.headings(README) if level in (2, 3)]
    missing = [anchor for anchor in sections if anchor not in contents]
    assert not missing, f"sections missing from the table of contents: {missing}"
    for anchor in re.findall(r"\]\(#([^)]+)\)", PROSE):
        assert anchor in anchors, f"the README links #{anchor}: no such heading"


# --- the config examples --------------------------------------------------------------------

_BASES: dict[str, dict[str, Any]] = {
    "receiver": {
        "listen": ["127.0.0.1:8873"],
        "state_dir": "/var/lib/mirrorhook",
        "upstream": "rsync://mirror.example.org/ius/",
        "target": "/srv/mirror/ius",
        "secret_file": "/etc/mirrorhook/receiver.secret",
    },
    "receiver-host": {"listen": ["127.0.0.1:8873"], "state_dir": "/var/lib/mirrorhook"},
    "publisher": {
        "root": "/srv/repo/ius",
        "state_dir": "/var/lib/mirrorhook/publisher",
        "mirrors": [
            {
                "name": "mirror-a",
                "url": "https://mirror-a.example.org/mirrorhook/v1/hook",
                "secret_file": "/etc/mirrorhook/mirror-a.secret",
            }
        ],
    },
}
"""What a fragment lacks to be a whole file: the keys each section requires."""


def _merged(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _whole(fragment: dict[str, Any]) -> dict[str, Any]:
    """A fragment made a whole file: each section it has, on the base of that section."""
    document = {}
    for section, table in fragment.items():
        kind = "receiver-host" if section == "receiver" and "repos" in table else section
        document[section] = _merged(_BASES.get(kind, {}), table)
    return document


def _toml(table: dict[str, Any], name: str = "") -> list[str]:
    """``table`` as TOML lines: its values, then its tables and arrays of tables."""
    lines = [
        f"{key} = {json.dumps(value)}"  # JSON's strings, numbers and arrays are TOML's too
        for key, value in table.items()
        if not isinstance(value, dict) and not _tables(value)
    ]
    for key, value in table.items():
        path = f"{name}.{key}" if name else key
        if isinstance(value, dict):
            lines += ["", f"[{path}]", *_toml(value, path)]
        elif _tables(value):
            for item in value:
                lines += ["", f"[[{path}]]", *_toml(item, path)]
    return lines


def _tables(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)


def _local(text: str, tmp: Path) -> str:
    """``text`` with the README's system paths moved into ``tmp``."""
    return (
        text.replace("/etc/mirrorhook/", f"{tmp}/etc/")
        .replace("/var/lib/mirrorhook", f"{tmp}/var")
        .replace("/srv/", f"{tmp}/srv/")
    )


def _key_files(document: object) -> Iterator[tuple[str, str]]:
    """Every secret or key file a loaded document names: its key and path."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in (
                "secret_file",
                "signing_key_file",
                "public_key_file",
                "password_file",
                "mqtt_password_file",
            ):
                yield key, value
            else:
                yield from _key_files(value)
    elif isinstance(document, list):
        for item in document:
            yield from _key_files(item)


def _write_key_files(text: str) -> None:
    """Make each secret and key file the config ``text`` names, as its operator would."""
    key = SigningKey.generate()
    for kind, name in _key_files(tomllib.loads(text)):
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            continue
        if kind == "secret_file":
            write_secret(path)
        elif kind == "signing_key_file":
            write_private_key(path, key)
        elif kind.endswith("password_file"):
            write_secret(path, "a broker password")
        else:
            path.write_text(f"{key.public()}\n")


TOML = [block for block in BLOCKS if block.lang == "toml"]


def test_the_readme_has_whole_and_fragment_config_examples() -> None:
    """So that the test below cannot pass on examples it failed to find."""
    assert any(block.fragment for block in TOML)
    assert any(not block.fragment for block in TOML)


@pytest.mark.parametrize("block", TOML, ids=[f"line {block.line}" for block in TOML])
def test_every_config_example_loads(tmp_path: Path, block: markdown.Block) -> None:
    """Each ```toml block loads through the real loader, once the files it names exist; a
    block marked as a fragment does so in a file that adds only the keys it lacks (so its
    keys must be known to the loader and its values valid)."""
    document = tomllib.loads(block.body)
    text = "\n".join(_toml(_whole(document))) + "\n" if block.fragment else block.body
    text = _local(text, tmp_path)
    _write_key_files(text)
    path = tmp_path / "mirrorhook.toml"
    path.write_text(text)
    load_config(path)  # a ConfigError lists every problem, with its key


# --- commands and flags ---------------------------------------------------------------------


def _command_lines() -> Iterator[tuple[str, str]]:
    """Every shell command the README shows, with the kind of text it is in: the lines of
    shell and cron blocks, the ``$ `` lines of output, and inline code that runs mirrorhook."""
    for block in BLOCKS:
        for line in block.body.splitlines():
            if block.lang in ("sh", "cron"):
                yield block.lang, line
            elif not block.lang and line.startswith("$ "):
                yield "sh", line.removeprefix("$ ")
    for span in INLINE:
        if span.startswith(("mirrorhook ", "sudo -u mirrorhook mirrorhook ")):
            yield "sh", span


def _invocations() -> Iterator[list[str]]:
    """The arguments of every ``mirrorhook`` run among the README's commands: the first
    word of a command (after ``sudo``'s options, and a cron line's schedule and user)."""
    for kind, line in _command_lines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        lexer.whitespace_split = True
        words = list(lexer)
        if kind == "cron" and words and "=" not in words[0]:
            words = words[6:]  # minute, hour, day, month, weekday, user
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("|", "||", "&&", ";", "&"):
                yield from _mirrorhook_run(command)
                command = []
            else:
                command.append(word)


def _mirrorhook_run(words: list[str]) -> Iterator[list[str]]:
    while words[:1] == ["sudo"]:
        words = words[1:]
        while words and words[0].startswith("-"):
            words = words[2:] if words[0] in ("-u", "-g") else words[1:]
    if words and Path(words[0]).name == "mirrorhook":
        arguments = []
        for word in words[1:]:
            if "<" in word or ">" in word:  # a redirection: the arguments end
                break
            arguments.append(word)
        yield arguments


def _help(capsys: pytest.CaptureFixture[str], *arguments: str) -> set[str] | None:
    """The options ``mirrorhook ARGUMENTS --help`` lists; ``None`` when it is refused."""
    with pytest.raises(SystemExit) as leaving:
        build_parser().parse_args([*arguments, "--help"])
    text = capsys.readouterr().out
    if leaving.value.code != 0:
        return None
    options = set()
    for line in text.splitlines():
        if match := re.match(r"  (-\S.*?)(?:  |$)", line):
            options.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", match.group(1)))
    return options


def test_every_command_and_flag_shown_exists(capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``mirrorhook COMMAND --flag`` the README shows is a command whose ``--help``
    lists that flag (placeholders such as ``COMMAND`` and ``…`` aside)."""
    runs = list(_invocations())
    assert len(runs) >= 15
    commands = {}
    checked = set()
    options = _help(capsys)
    for arguments in runs:
        words = iter(arguments)
        for word in words:
            if word.startswith("-"):
                assert word.split("=")[0] in (options or set()), f"mirrorhook {word}"
                continue
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break  # a placeholder: COMMAND, FILE, …
            if word not in commands:
                commands[word] = _help(capsys, word)
            assert commands[word] is not None, f"mirrorhook {word}: no such command"
            for flag in (flag for flag in words if flag.startswith("-")):
                assert flag.split("=")[0] in (commands[word] or set()), (
                    f"mirrorhook {word} has no {flag}"
                )
                checked.add(flag)
            break
    assert {"sync", "check-config", "keygen", "status"} <= set(commands)
    assert {"-c", "--if-changed", "--json"} <= checked


# --- files ----------------------------------------------------------------------------------


def test_every_file_named_exists() -> None:
    """Each file of this repository the README names — in a link, as ``contrib/…``,
    ``docs/…``, ``systemd/…`` and the like, as a ``bench.NAME`` module, or as a module of
    the layout — exists."""
    named = set(
        re.findall(
            r"(?<![\w./$-])((?:contrib|docs|systemd|tests|scripts|bench|src)/[\w./-]*)", README
        )
    )
    named = {name.rstrip(".") for name in named}
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", PROSE)
    named |= {link for link in links if not re.match(r"[a-z]+:", link)}
    named |= {f"bench/{module}.py" for module in re.findall(r"\bbench\.([a-z_]+)\b", README)}
    layout = PROSE.split("\nLayout: ", 1)[1].split("\n\n", 1)[0]
    named |= {
        f"src/mirrorhook/{module}.py"
        for module in re.findall(r"`([a-z_]+)`", layout.split("(", 1)[1].split(")", 1)[0])
    }
    assert {"docs/page.png", "contrib/host.toml", "bench/end_to_end.py"} <= named
    assert "src/mirrorhook/syncer.py" in named
    for name in sorted(named):
        assert (REPO / name).exists(), f"the README names {name}, which does not exist"


def test_every_make_target_named_exists() -> None:
    """Each ``make TARGET`` the README shows (in code) is a target of the Makefile."""
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    lines = [line for block in BLOCKS if block.lang == "sh" for line in block.body.splitlines()]
    named = {line.split()[1] for line in [*lines, *INLINE] if line.startswith("make ")}
    assert {"demo", "test", "test-fast", "bench"} <= named
    assert not named - targets, f"no such make targets: {sorted(named - targets)}"


# --- the daemon's URLs ----------------------------------------------------------------------

_FOLDERS = {"etc", "srv", "var", "run", "usr", "opt", "tmp", "dev", "home", "bin", "sbin"}
"""Top-level folders: an inline ``/srv/mirror`` is a path on disk, not a URL path."""


def _http_paths() -> set[tuple[str | None, str]]:
    """Every path of the daemon's URLs the README shows, with its method when it says one:
    ``GET /…`` and ``POST /…``, every ``/v1/…``, the path of a URL on loopback or behind
    the web server's ``/mirrorhook/`` prefix, and inline code that is a path alone."""
    found: set[tuple[str | None, str]] = set()
    for method, path in re.findall(r"\b(GET|POST) (/[^\s`,;)]*)", README):
        found.add((method, path))
    for path in re.findall(r"/v1/[\w{}/.-]*", README):
        found.add((None, path))
    for url in re.findall(r"https?://[^\s`\"'<>)]+", README):
        parts = urllib.parse.urlsplit(url.rstrip(".;"))
        if parts.path.startswith("/mirrorhook/"):
            found.add((None, parts.path.removeprefix("/mirrorhook")))
        elif parts.hostname in ("127.0.0.1", "localhost", "::1"):
            found.add((None, parts.path or "/"))
    for span in INLINE:
        path = span.split("?")[0]
        if re.fullmatch(r"/[^\s:]*", path) and path.split("/")[1] not in _FOLDERS:
            found.add((None, path.removeprefix("/mirrorhook") or "/"))
    return {(method, path.rstrip(".") or "/") for method, path in found}


def _routes(tmp_path: Path) -> list[tuple[str, re.Pattern[str]]]:
    """The routes of the daemon's web application, as ``serve`` builds it for a hub host
    with repositories (``contrib/host.toml``): the receiver's and the publisher's."""
    text = _local((REPO / "contrib" / "host.toml").read_text(), tmp_path)
    _write_key_files(text)
    path = tmp_path / "host.toml"
    path.write_text(text)
    config = load_config(path)
    metrics, supervisor = Metrics(repos=True), Supervisor()
    fleet = Fleet(config, metrics, supervisor)
    common = endpoints.Endpoints(lambda: {}, metrics, supervisor)
    # The application serve itself builds, not a copy of its list of routes.
    app, _listen, _desk, _streams = service._app(config, fleet, common)
    routes = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(canonical))
        routes.append((route.method, re.compile(pattern)))
    return routes


def test_every_url_path_shown_is_a_route_of_the_daemon(tmp_path: Path) -> None:
    """Each URL path the README gives for ``mirrorhook serve`` (``/v1/status``,
    ``/mirrorlist``, ``/v1/hook/NAME``…) is a route its application registers, with the
    method the README says."""
    routes = _routes(tmp_path)
    shown = _http_paths()
    assert {"/", "/metrics", "/metalink", "/v1/history", "/v1/report"} <= {p for _, p in shown}
    for method, path in sorted(shown, key=str):
        served = {m for m, pattern in routes if pattern.fullmatch(path)}
        assert served, f"the README shows {path}: the daemon serves no such path"
        if method is not None:
            assert method in served, f"the README shows {method} {path}: it answers {served}"


# --- metrics --------------------------------------------------------------------------------


def test_every_metric_named_is_exported() -> None:
    """Each ``mirrorhook_…`` metric the README names is one ``/metrics`` exports (a
    counter's samples end in ``_total``, a histogram's in ``_bucket``, ``_sum``, ``_count``)."""
    exported = set()
    for family in Metrics().registry.collect():
        exported.add(family.name)
        if family.type == "counter":
            exported.add(f"{family.name}_total")
        if family.type == "histogram":
            exported |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    named = set(re.findall(r"\bmirrorhook_[a-z_]+[a-z]", README))
    assert len(named) >= 10
    assert not named - exported, f"not exported: {sorted(named - exported)}"


# --- the output shown -----------------------------------------------------------------------


def _columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_the_tables_shown_have_the_columns_the_commands_print() -> None:
    """The heading rows of the output the README quotes (``notify``'s lines, ``status``'s
    repositories and mirrors) are those the commands print."""
    publisher = {"root": "/srv/repo/ius", "marker_file": "CURRENT", "current_marker": None}
    printed = [
        _columns(format_outcomes([]).splitlines()[0]),
        _columns(format_repos([]).splitlines()[0]),
        _columns(format_publisher({**publisher, "mirrors": []}).splitlines()[1]),
    ]
    shown = [
        _columns(line)
        for block in BLOCKS
        if not block.lang
        for line in block.body.splitlines()
        if line.strip().startswith(("MIRROR ", "REPO "))
    ]
    assert len(shown) >= 3
    for columns in shown:
        assert columns in printed, f"the README shows columns {columns}; printed are {printed}"


def test_the_rsync_command_shown_is_the_one_check_config_prints(tmp_path: Path) -> None:
    """The rsync command the README quotes from ``check-config`` is what it prints for
    ``contrib/receiver.toml``, the example it tells mirror operators to copy."""
    shown = [block for block in BLOCKS if block.body.startswith("rsync -aH")]
    assert len(shown) == 1
    text = _local((REPO / "contrib" / "receiver.toml").read_text(), tmp_path)
    _write_key_files(text)
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    line = next(
        line for line in describe(load_config(path)).splitlines() if "rsync command" in line
    )
    printed = line.split("rsync command", 1)[1].strip()
    printed = printed.replace(f"{tmp_path}/etc/", "/etc/mirrorhook/").replace(
        f"{tmp_path}/srv/", "/srv/"
    )
    quoted = " ".join(shown[0].body.split())
    assert quoted == printed, f"the README quotes\n{quoted}\ncheck-config prints\n{printed}"
