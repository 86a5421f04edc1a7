"""The change between two manifests and its document (docs/design.md#changes): what a
mirror must fetch and delete, and a decoder that refuses anything it could not safely
hand to rsync."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mirrorhook.changes import (
    Change,
    check_path,
    decode_change,
    decode_path,
    diff,
    encode_path,
)
from mirrorhook.errors import ChangeError, PayloadError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key

FILE, FOLDER, SYMLINK, OTHER = Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK, Kind.OTHER


def _entry(path: bytes, kind: Kind = FILE, **facts: Any) -> Entry:
    defaults: dict[str, Any] = {"size": 1, "mtime_ns": 10, "mode": 0o644, "uid": 0, "gid": 0}
    defaults["inode"] = hash(path) % 10**6
    if kind is FOLDER:
        defaults.update(size=0, mode=0o755)
    if kind is SYMLINK:
        defaults.update(target=b"elsewhere", mode=0o777)
    defaults.update(facts)
    return Entry(path=path, kind=kind, **defaults)


def _manifest(marker: str, *entries: Entry) -> Manifest:
    return Manifest(marker, 0.0, tuple(sorted(entries, key=lambda entry: tree_key(entry.path))))


TREE = (
    _entry(b"a", FOLDER),
    _entry(b"a/file"),
    _entry(b"a/link", SYMLINK),
    _entry(b"a-b"),
    _entry(b"gone", FOLDER),
    _entry(b"gone/deep", FOLDER),
    _entry(b"gone/deep/file"),
    _entry(b"fifo", OTHER, size=0),
)


def _diff(old: tuple[Entry, ...], new: tuple[Entry, ...]) -> Change:
    return diff(_manifest("old", *old), _manifest("new", *new))


def _replaced(entries: tuple[Entry, ...], path: bytes, **facts: Any) -> tuple[Entry, ...]:
    return tuple(entry._replace(**facts) if entry.path == path else entry for entry in entries)


def test_no_change_names_nothing() -> None:
    change = _diff(TREE, TREE)
    assert (change.changed, change.removed, change.count) == ((), (), 0)
    assert (change.from_marker, change.to_marker) == ("old", "new")


@pytest.mark.parametrize(
    ("path", "facts"),
    [
        (b"a/file", {"size": 2}),
        (b"a/file", {"mtime_ns": 11}),
        (b"a/file", {"mode": 0o600}),
        (b"a/file", {"uid": 1000}),
        (b"a/file", {"gid": 1000}),
        (b"a", {"mtime_ns": 11}),
        (b"a", {"mode": 0o700}),
        (b"a/link", {"target": b"other"}),
        (b"a/link", {"mtime_ns": 11}),
        (b"fifo", {"inode": 1}),
        (b"a/file", {"kind": FOLDER}),
    ],
)
def test_a_fact_rsync_keeps_that_changed_lists_the_path(path: bytes, facts: dict[str, Any]) -> None:
    """Size, mtime, mode and owner of any kind (a folder's too: rsync sets a folder's
    times and mode only when it lists it), a symlink's target, another kind's inode (made
    again), the kind itself."""
    new = _replaced(TREE, path, **facts)
    change = _diff(TREE, new)
    kind = facts.get("kind", next(entry.kind for entry in TREE if entry.path == path))
    assert change.changed == ((path, kind),)
    assert change.removed == ()


def test_what_rsync_does_not_see_is_no_change() -> None:
    """A file with another inode but the same facts (rsync's quick check passes it), a
    digest known on one side only."""
    new = _replaced(TREE, b"a/file", inode=999_999, sha256=b"\1" * 32)
    assert _diff(TREE, new).changed == ()


def test_a_digest_known_on_both_sides_tells_a_content_change() -> None:
    old = _replaced(TREE, b"a/file", sha256=b"\1" * 32)
    new = _replaced(TREE, b"a/file", sha256=b"\2" * 32)
    assert _diff(old, new).changed == ((b"a/file", FILE),)


def test_added_and_removed_paths_in_tree_order() -> None:
    """Every removed path is named, a removed folder's contents too (a hub updates its own
    manifest from the change); added paths with their kind."""
    new = (*TREE[:4], TREE[7], _entry(b"new", FOLDER), _entry(b"new/x"), _entry(b"a/b c"))
    change = _diff(TREE, new)
    assert change.changed == ((b"a/b c", FILE), (b"new", FOLDER), (b"new/x", FILE))
    assert change.removed == (b"gone", b"gone/deep", b"gone/deep/file")
    assert change.count == 6


def test_a_folder_that_became_a_file_is_changed_and_its_contents_removed() -> None:
    new = (*TREE[:4], _entry(b"gone"), TREE[7])
    change = _diff(TREE, new)
    assert change.changed == ((b"gone", FILE),)
    assert change.removed == (b"gone/deep", b"gone/deep/file")


def test_a_new_hard_link_lists_the_whole_group() -> None:
    """rsync -H links only files it lists: a link added to an unchanged file lists both."""
    new: tuple[Entry, ...] = (*TREE, _entry(b"b-link", inode=5, link_group=1))
    new = _replaced(new, b"a/file", inode=5, link_group=1)
    change = _diff(TREE, new)
    assert change.changed == ((b"a/file", FILE), (b"b-link", FILE))
    assert change.links == ((b"a/file", b"b-link"),)


def test_a_broken_hard_link_lists_the_old_group() -> None:
    """Files that were one and are now two (one replaced): both are listed."""
    old: tuple[Entry, ...] = (*TREE, _entry(b"b-link", inode=5, link_group=1))
    old = _replaced(old, b"a/file", inode=5, link_group=1)
    new = _replaced(old, b"b-link", inode=6, link_group=None)
    new = _replaced(new, b"a/file", link_group=None)
    change = _diff(old, new)
    assert change.changed == ((b"a/file", FILE), (b"b-link", FILE))
    assert change.links == ()


def test_a_changed_member_lists_every_member() -> None:
    """One member of a group of three listed (here the only one whose facts changed):
    the other two are listed with it, and the three travel as one group."""
    group = (
        _entry(b"x1", inode=5, link_group=1),
        _entry(b"x2", inode=5, link_group=1),
        _entry(b"x3", inode=5, link_group=1),
    )
    new = (group[0]._replace(size=7), *group[1:])
    change = _diff((*TREE, *group), (*TREE, *new))
    assert [path for path, _kind in change.changed] == [b"x1", b"x2", b"x3"]
    assert change.links == ((b"x1", b"x2", b"x3"),)


def test_group_numbers_that_moved_are_no_change() -> None:
    """A group added before another renumbers it; its members are the same, so it is
    not listed."""
    old = (*TREE, _entry(b"y1", inode=7, link_group=1), _entry(b"y2", inode=7, link_group=1))
    added = (_entry(b"0a", inode=8, link_group=1), _entry(b"0b", inode=8, link_group=1))
    new = (*TREE, *added, *(entry._replace(link_group=2) for entry in old[len(TREE) :]))
    change = _diff(old, new)
    assert change.changed == ((b"0a", FILE), (b"0b", FILE))
    assert change.links == ((b"0a", b"0b"),)


# --- the document -------------------------------------------------------------------------


def _change() -> Change:
    return Change(
        from_marker="2026-12-01 ünïcode",
        to_marker="2026-12-02",
        changed=((b"a b", FOLDER), (b"a b/%\n\xff", FILE), (b"x", FILE), (b"y", FILE)),
        removed=(b"-dash", b"gone"),
        links=((b"x", b"y"),),
    )


def test_a_change_survives_the_wire() -> None:
    body = _change().encode()
    document = json.loads(body)
    assert document == {
        "type": "mirror.changes",
        "from": "2026-12-01 ünïcode",
        "to": "2026-12-02",
        "count": 6,
        "changed": [
            ["a%20b", "directory"],
            ["a%20b/%25%0A%FF", "file"],
            ["x", "file", 1],
            ["y", "file", 1],
        ],
        "removed": ["-dash", "gone"],
    }
    assert decode_change(body, max_changes=6) == _change()


@given(path=st.binary(min_size=1, max_size=60))
def test_any_path_survives_the_encoding(path: bytes) -> None:
    """Any bytes encode to ASCII text that names no other path; a safe path decodes back
    to itself, an unsafe one is refused on the way back."""
    text = encode_path(path)
    assert text.isascii()
    assert "%" not in path.decode("latin-1") or "%25" in text
    try:
        check_path(path)
    except ChangeError:
        with pytest.raises(ChangeError):
            decode_path(text)
    else:
        assert decode_path(text) == path


def _document(**fields: Any) -> bytes:
    document: dict[str, Any] = {
        "type": "mirror.changes",
        "from": "1",
        "to": "2",
        "count": 2,
        "changed": [["a", "file"]],
        "removed": ["b"],
    }
    document.update(fields)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"[" * 100_000, "nested too deeply"),
        (_document(type="mirror.updated"), "type must be"),
        (_document(count=3), "count is 3"),
        (_document(count="2"), "count must be an integer"),
        (_document(count=True), "count must be an integer"),
        (_document(changed={}), "must be lists"),
        (_document(removed=None), "must be lists"),
        (_document(**{"from": ""}), "from is not a marker value"),
        (_document(to="a\nb"), "to is not a marker value"),
        (_document(to=" 2"), "to is not a marker value"),
        (_document(to=2), "to must be a marker value"),
        (_document(changed=[["/etc/passwd", "file"]]), "absolute"),
        (_document(changed=[["../up", "file"]]), r"\.\. component"),
        (_document(changed=[["a/../../up", "file"]]), r"\.\. component"),
        (_document(removed=["a//b"]), "empty"),
        (_document(removed=["a/./b"]), "component"),
        (_document(removed=["a/"]), "component"),
        (_document(removed=[""]), "empty"),
        (_document(removed=["a%00b"]), "NUL"),
        (_document(removed=["%2E%2E"]), "needs no encoding"),
        (_document(removed=["a%2Fb"]), "needs no encoding"),
        (_document(removed=["a%2fb"]), "not in the encoding"),
        (_document(removed=["a b"]), "not in the encoding"),
        (_document(removed=["é"]), "not in the encoding"),
        (_document(removed=["%ZZ"]), "not in the encoding"),
        (_document(removed=[1]), "must be a string"),
        (_document(changed=[["a", "device"]]), "kind must be one of"),
        (_document(changed=[["a"]]), r"\[path, kind\]"),
        (_document(changed=["a"]), r"\[path, kind\]"),
        (_document(changed=[["a", "file", 0]]), "positive integer"),
        (_document(changed=[["a", "file", True]]), "positive integer"),
        (_document(changed=[["a", "file", 1]]), "fewer than two"),
        (_document(count=3, changed=[["a", "directory", 1], ["b", "directory", 1]]), "only files"),
        (_document(count=3, changed=[["b", "file"], ["a", "file"]]), "tree order"),
        (_document(count=3, removed=["b", "b"]), "repeated"),
        (_document(changed=[["b", "file"]]), "both changed and removed"),
        (_document(removed=["a"], changed=[["a/x", "file"]]), "below a path that is no folder"),
        (_document(changed=[["a", "file"], ["a/x", "file"]], removed=[]), "no folder"),
        (_document(count=1, changed=[["x" * 4097, "file"]], removed=[]), "too long"),
    ],
)
def test_the_decoder_refuses_what_it_could_not_safely_use(body: bytes, reason: str) -> None:
    with pytest.raises(ChangeError, match=reason):
        decode_change(body, max_changes=100)


def test_more_paths_than_max_changes_are_refused_before_they_are_read() -> None:
    body = _document(count=3, changed=[["a", "file"], ["../x", "file"]])
    with pytest.raises(ChangeError, match="3 paths, more than max_changes 2"):
        decode_change(body, max_changes=2)
    assert decode_change(_document(), max_changes=2).count == 2


def test_a_change_error_is_a_payload_error() -> None:
    """Callers that handle a bad webhook body handle a bad change the same way."""
    assert issubclass(ChangeError, PayloadError)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
PATHS = st.sampled_from(["a", "a/b", "-x", "%25", "..", "/", "a//b", "%00", "b%20c", "", "z"])
ITEMS = st.lists(st.sampled_from(["file", "directory", "symlink", "other", "x"]) | PATHS)


@settings(max_examples=500)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "type": st.just("mirror.changes") | JSON,
            "from": st.just("1") | JSON,
            "to": st.just("2") | JSON,
            "count": st.integers(0, 6) | JSON,
            "changed": st.lists(st.lists(PATHS | ITEMS | JSON, max_size=3), max_size=4) | JSON,
            "removed": st.lists(PATHS | JSON, max_size=4) | JSON,
        },
    ),
    noise=st.binary(max_size=3),
)
@example(
    fields={
        "type": "mirror.changes",
        "from": "1",
        "to": "2",
        "count": 1,
        "changed": [["a", "file"]],
        "removed": [],
    },
    noise=b"",
)
def test_a_hostile_document_is_refused_or_safe(fields: dict[str, Any], noise: bytes) -> None:
    """Whatever arrives, the decoder refuses it with ``ChangeError`` or answers a change
    whose every path is safe, in order, and counted."""
    body = json.dumps(fields).encode() + noise
    try:
        change = decode_change(body, max_changes=5)
    except ChangeError:
        return
    paths = [path for path, _kind in change.changed] + list(change.removed)
    for path in paths:
        check_path(path)
    assert change.count == len(paths) <= 5
    assert [path for path, _kind in change.changed] == sorted(
        (path for path, _kind in change.changed), key=tree_key
    )
