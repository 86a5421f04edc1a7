"""Reading marker files safely: real files, symlinks, FIFOs and folders in ``tmp_path``.

Whoever can write the published root may plant anything as the marker; its value is sent
to every mirror and shown in status and logs. Each refusal must say why, naming the path,
and never repeat what the file holds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from mirrorhook import marker, signing
from mirrorhook.errors import MarkerError
from tests.helpers import fifo_released_after, write_secret

SECRET = signing.new_secret()
"""A real secret, planted in the hostile files."""


def refusal(path: Path) -> MarkerError:
    """Read ``path``, expecting a refusal; return it after checking it names the path."""
    with pytest.raises(MarkerError) as caught:
        marker.read(path)
    error = caught.value
    assert error.path == str(path)
    assert str(error).startswith(f"refusing marker {path}: ")
    return error


def assert_not_quoted(error: MarkerError, text: str) -> None:
    """Neither the message nor the exception's fields repeat ``text``."""
    for shown in (str(error), repr(error), error.reason, *map(str, error.args)):
        assert text not in shown


def test_symlink_to_a_secret_is_refused_and_the_secret_never_shown(tmp_path: Path) -> None:
    """CURRENT replaced by a symlink to a mirror's secret file: refused as a symlink, not
    followed; the secret appears in no part of the error."""
    secret_file = tmp_path / "mirror-a.secret"
    write_secret(secret_file, SECRET)
    current = tmp_path / "CURRENT"
    current.symlink_to(secret_file)
    error = refusal(current)
    assert "symbolic link" in error.reason
    assert_not_quoted(error, SECRET)
    assert_not_quoted(error, SECRET.removeprefix("whsec_"))


def test_dangling_symlink_is_refused_not_taken_for_a_missing_marker(tmp_path: Path) -> None:
    """A symlink to nowhere is a planted symlink, not "no marker yet"."""
    current = tmp_path / "CURRENT"
    current.symlink_to(tmp_path / "nowhere")
    assert "symbolic link" in refusal(current).reason


def test_missing_marker_is_none(tmp_path: Path) -> None:
    """No file at all is not an error: there is no marker yet."""
    assert marker.read(tmp_path / "CURRENT") is None
    assert marker.load(tmp_path / "CURRENT") is None


def test_fifo_is_refused_at_once_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A FIFO as CURRENT: the read returns at once with a refusal. (A read that waited for
    a writer would be let go after 5 s by the releaser, and the test fail on the time.)"""
    current = tmp_path / "CURRENT"
    os.mkfifo(current)
    with fifo_released_after(current, 5) as released:
        with pytest.raises(MarkerError) as caught:
            marker.read(current)
        assert not released.is_set(), "the read waited for a writer to open the FIFO"
    assert caught.value.reason == "it is not a regular file but a FIFO"


def test_directory_is_refused(tmp_path: Path) -> None:
    current = tmp_path / "CURRENT"
    current.mkdir()
    assert refusal(current).reason == "it is not a regular file but a directory"


def test_socket_that_cannot_be_opened_is_refused_with_the_systems_reason(tmp_path: Path) -> None:
    """A Unix socket as CURRENT cannot be opened at all: refused with the reason open() gave."""
    current = tmp_path / "CURRENT"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(current))
        assert refusal(current).reason == "cannot open it: No such device or address"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param((SECRET + "\n") * 100, "it is larger than 4096 bytes", id="5-KB-file"),
        pytest.param(
            "2" * 2048 + SECRET + "\n", "its value is longer than 1024 bytes", id="2-KB-line"
        ),
        pytest.param(
            SECRET.encode() + b"\xff\xfe\n", "it is not valid UTF-8 text", id="invalid-UTF-8"
        ),
        pytest.param(
            f"2026\x1b[2J{SECRET}\n",
            "it contains a non-printable character (U+001B)",
            id="ESC",
        ),
        pytest.param(
            f"2026\x00{SECRET}\n", "it contains a non-printable character (U+0000)", id="NUL"
        ),
        pytest.param(
            f"2026\r{SECRET}\n", "it contains a non-printable character (U+000D)", id="CR-inside"
        ),
        pytest.param(f"2026\n{SECRET}\n", "it holds more than one line", id="second-line"),
        pytest.param(
            f"2026\u202e{SECRET}\n",
            "it contains a non-printable character (U+202E)",
            id="bidi-override",
        ),
        pytest.param(
            f"2026\u2028{SECRET}\n",
            "it contains a non-printable character (U+2028)",
            id="line-separator",
        ),
    ],
)
def test_content_outside_the_rules_is_refused_without_being_quoted(
    tmp_path: Path, content: str | bytes, reason: str
) -> None:
    """Too big, too long, not UTF-8, control characters or a second line: refused with the
    reason; the content (with a secret in it) is quoted nowhere."""
    current = tmp_path / "CURRENT"
    current.write_bytes(content if isinstance(content, bytes) else content.encode())
    error = refusal(current)
    assert error.reason == reason
    assert_not_quoted(error, SECRET)
    assert_not_quoted(error, SECRET.removeprefix("whsec_")[:12])


@pytest.mark.parametrize(
    ("content", "value"),
    [
        pytest.param(b"Tue Nov 25 12:00:00 UTC 2026\n", "Tue Nov 25 12:00:00 UTC 2026", id="date"),
        pytest.param(b"20261125T1200\r\n", "20261125T1200", id="CRLF"),
        pytest.param(b"  1764072000 \n\n", "1764072000", id="surrounding-blanks"),
        pytest.param("Ausgabe 25. Nov ü\n".encode(), "Ausgabe 25. Nov ü", id="non-ASCII"),
        pytest.param(b"", "", id="empty"),
    ],
)
def test_ordinary_markers_read_as_before(tmp_path: Path, content: bytes, value: str) -> None:
    """``date > CURRENT`` and friends: inner spaces kept, surrounding whitespace stripped."""
    current = tmp_path / "CURRENT"
    current.write_bytes(content)
    assert marker.read(current) == value


def test_bounds_are_inclusive(tmp_path: Path) -> None:
    """A 4096-byte file and a 1024-byte value pass; one byte more of either is refused."""
    current = tmp_path / "CURRENT"
    current.write_bytes(b"7" * 1024 + b" " * 3072)
    assert marker.read(current) == "7" * 1024
    current.write_bytes(b"7" * 1024 + b" " * 3073)
    assert refusal(current).reason == "it is larger than 4096 bytes"
    current.write_bytes(b"7" * 1025)
    assert refusal(current).reason == "its value is longer than 1024 bytes"


def test_load_keeps_the_bytes_the_mtime_and_the_ctime(tmp_path: Path) -> None:
    """What the receiver installs: the file's exact bytes and its modification time; and
    when it was written, which a publisher's manifest is checked against."""
    current = tmp_path / "CURRENT"
    current.write_bytes(b"42\n")
    os.utime(current, (1_700_000_000, 1_700_000_000))
    changed = current.stat().st_ctime_ns
    assert marker.load(current) == marker.Marker("42", b"42\n", 1_700_000_000.0, changed)
