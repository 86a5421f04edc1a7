"""Whatever a mirror answers is at worst a failed delivery to that mirror.

A real ``mirrorhook serve`` publisher (and a real ``mirrorhook notify``) delivers to a
healthy mirror and to one that answers a zoo of odd responses, written byte by byte by
``RawMirror``: the healthy mirror must receive every publish, the daemon must stay up, and
``notify`` must print its whole table.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from tests.helpers import (
    MIRRORHOOK,
    Processes,
    free_port,
    mirror_secret,
    publish,
    publisher_toml,
    wait_until,
)
from tests.mirrors import HookMirror, RawMirror, always, mirror_in_thread

pytestmark = pytest.mark.slow  # real daemons and processes: see `make test-fast`


def answer(status: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}".encode(), *headers, b"Connection: close"]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


ZOO = [
    answer("503 Unavailable", "Retry-After: ²".encode()),  # isdigit() is true, float() raises
    answer("503 Unavailable", "Retry-After: ٣".encode()),  # an Arabic-Indic digit
    answer("429 Slow Down", b"Retry-After: " + b"9" * 400),
    answer("503 Unavailable", b"Retry-After: -30"),
    answer("503 Unavailable", b"Retry-After: 1e400"),
    answer("503 Unavailable", b"Retry-After: Fri, 31 Dec 9999 23:59:59 GMT"),
    answer("503 Unavailable", b"Retry-After: Thu, 01 Jan 1970 00:00:00 GMT"),
    answer("503 Unavailable", b"Retry-After: Mon, 99 Foo 99999999999 99:99:99 GMT"),
    answer("503 Unavailable", b"Retry-After: 1", b"Retry-After: 2"),
    answer("503 Unavailable", b"Retry-After:"),
    answer("503 Unavailable", b"Retry-After: \xff\xfe\x00"),
    answer("429 Slow Down", b"Retry-After: nan"),
    answer("301 Moved", b"Location: \x1b[2J\x1b[31mhttp://evil.example/"),
    answer("500 Oops", body=b"\x1b]0;pwned\x07\r\n2026-11-25 INFO forged log line"),
    answer("200 OK", b"Content-Encoding: gzip", body=b"this is not gzip"),
    answer("999 Whatever"),
    answer("abc Not A Status"),
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"",
]


def asked(mirror: RawMirror, times: int) -> bool:
    return mirror.requests >= times


def newest(mirror: HookMirror, value: str) -> bool:
    return mirror.values()[-1:] == [value]


@contextmanager
def two_mirrors(
    tmp_path: Path, answers: list[bytes], marker: str
) -> Iterator[tuple[Path, HookMirror, RawMirror]]:
    """A publisher config for a healthy mirror and an odd one answering ``answers``, both
    serving; yields the config's path and the two mirrors."""
    root = tmp_path / "repo"
    root.mkdir()
    publish(root, marker)
    port = free_port()
    with RawMirror(answers) as odd:
        config = publisher_toml(
            tmp_path,
            root=root,
            mirrors=[("healthy", f"http://127.0.0.1:{port}/v1/hook"), ("odd", odd.url)],
        )
        healthy = HookMirror(mirror_secret(tmp_path, "healthy"), always(202))
        with mirror_in_thread(healthy, port):
            yield config, healthy, odd


def test_a_zoo_of_answers_never_stops_the_publisher(tmp_path: Path, processes: Processes) -> None:
    """One publish per odd answer: the healthy mirror receives every one and the daemon
    stays up; the odd mirror is asked again for each publish (its worker lives on)."""
    root = tmp_path / "repo"
    with two_mirrors(tmp_path, ZOO, "0") as (config, healthy, odd):
        daemon = processes.serve(config, "publisher")
        wait_until(lambda: healthy.values() == ["0"], what="the first delivery")
        for number in range(1, len(ZOO) + 1):
            wait_until(partial(asked, odd, number), what=f"odd answer {number}")
            publish(root, str(number))
            wait_until(
                partial(newest, healthy, str(number)),
                what=f"publish {number} at the healthy mirror",
            )
        assert daemon.poll() is None, processes.log("publisher")
    assert healthy.values() == [str(number) for number in range(len(ZOO) + 1)]
    log = processes.log("publisher")
    assert "Traceback" not in log
    assert "\x1b" not in log  # the mirror's escape sequences were escaped, not replayed


def test_notify_prints_its_whole_table_whatever_a_mirror_answers(tmp_path: Path) -> None:
    """``notify`` against a mirror answering odd Retry-After values: exit 1, one row per
    mirror, the healthy one delivered."""
    with two_mirrors(tmp_path, ZOO[:3], "7") as (config, healthy, odd):
        result = subprocess.run(
            [*MIRRORHOOK, "notify", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:]}
    assert rows == {"healthy": "delivered", "odd": "failed"}, result.stdout
    assert odd.requests == 3
    assert healthy.values() == ["7"]
