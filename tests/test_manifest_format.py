"""A manifest's bytes (docs/design.md#the-manifest-file): a round trip of anything a tree
can hold, and refusals of what is not a whole, sound manifest file."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key
from mirrorhook.manifest_format import (
    MAGIC,
    VERSION,
    decode_manifest,
    encode_manifest,
    read_header,
)

NAME = st.binary(min_size=1, max_size=6).filter(
    lambda name: b"/" not in name and b"\0" not in name and name not in (b".", b"..")
)
PATH = st.lists(NAME, min_size=1, max_size=3).map(b"/".join)


@st.composite
def entries(draw: st.DrawFn, path: bytes) -> Entry:
    kind = draw(st.sampled_from(list(Kind)))
    return Entry(
        path=path,
        kind=kind,
        size=draw(st.integers(0, 2**64 - 1)),
        mtime_ns=draw(st.integers(-(2**63), 2**63 - 1)),
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
        inode=draw(st.integers(0, 2**64 - 1)),
        target=draw(st.binary(max_size=8).filter(lambda t: b"\0" not in t))
        if kind is Kind.SYMLINK
        else None,
        link_group=draw(st.none() | st.integers(1, 2**32 - 1)) if kind is Kind.FILE else None,
        sha256=draw(st.none() | st.binary(min_size=32, max_size=32)) if kind is Kind.FILE else None,
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    paths = sorted(draw(st.sets(PATH, max_size=12)), key=tree_key)
    return Manifest(
        marker=draw(st.text(max_size=20)),
        created=draw(st.floats(0, 2e9)),
        entries=tuple(draw(entries(path)) for path in paths),
    )


@given(manifest=manifests())
def test_any_manifest_survives_the_round_trip(manifest: Manifest) -> None:
    """Every field, at the ends of its range: sizes and inodes of 64 bits, mtimes before
    1970, names of any bytes, empty symlink targets, no digest or one."""
    data = encode_manifest(manifest)
    assert data.startswith(MAGIC + bytes([VERSION]))
    assert decode_manifest(data) == manifest


def _sample() -> Manifest:
    file = Entry(b"a b/\xff\n", Kind.FILE, 3, 10**18, 0o644, 0, 0, 7, None, 1, b"\x01" * 32)
    return Manifest(
        marker="20261202T1200",
        created=1764672000.25,
        entries=(
            Entry(b"a b", Kind.DIRECTORY, 0, -5, 0o755, 1, 2, 3),
            Entry(b"a b/link", Kind.SYMLINK, 4, 9, 0o777, 0, 0, 8, b"../x"),
            file,
            file._replace(path=b"a-b", sha256=None),
        ),
    )


def test_the_header_says_what_the_file_holds() -> None:
    assert decode_manifest(encode_manifest(_sample())) == _sample()
    header = read_header(encode_manifest(_sample()))
    assert (header["marker"], header["created"], header["entries"]) == (
        "20261202T1200",
        1764672000.25,
        4,
    )
    assert header["digests"] == 1


def test_an_empty_manifest_survives_the_round_trip() -> None:
    empty = Manifest(marker="1", created=0.0, entries=())
    assert decode_manifest(encode_manifest(empty)) == empty


def test_a_manifest_says_whether_its_walk_was_settled() -> None:
    """An unsettled manifest stays one on disk and on the wire; a header without the field
    (written before it was) is taken as unsettled: nothing is known of its walk."""
    unsettled = dataclasses.replace(_sample(), settled=False)
    assert decode_manifest(encode_manifest(unsettled)).settled is False
    assert decode_manifest(encode_manifest(_sample())).settled is True
    data = encode_manifest(_sample())
    header = read_header(data)
    del header["settled"], header["size"]
    raw = json.dumps(header, separators=(",", ":")).encode()
    length = struct.unpack_from(">I", data, 5)[0]
    body = data[:5] + struct.pack(">I", len(raw)) + raw + data[9 + length : -4]
    assert decode_manifest(body + struct.pack(">I", zlib.crc32(body))).settled is False


def test_every_truncation_is_refused() -> None:
    """A file cut anywhere (a crash, a short download) is an error, never a shorter
    manifest."""
    data = encode_manifest(_sample())
    for cut in range(len(data)):
        with pytest.raises(ManifestError):
            decode_manifest(data[:cut], "m.mhmf")


def test_a_changed_byte_anywhere_is_refused() -> None:
    data = encode_manifest(_sample())
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x20
        with pytest.raises(ManifestError):
            decode_manifest(bytes(damaged))


def test_a_wrong_magic_or_version_is_refused_saying_so() -> None:
    data = encode_manifest(_sample())
    with pytest.raises(ManifestError, match="not a manifest"):
        decode_manifest(b"PK\3\4" + data[4:])
    with pytest.raises(ManifestError, match="format version 2, this mirrorhook reads 1"):
        decode_manifest(data[:4] + b"\2" + data[5:])
    with pytest.raises(ManifestError, match=r"manifest m\.mhmf: truncated"):
        decode_manifest(data[:100], "m.mhmf")
    with pytest.raises(ManifestError, match="bytes past its end"):
        decode_manifest(data + b"\0")


def _reforged(manifest: Manifest, **header: object) -> bytes:
    """``manifest``'s file with header fields replaced and a CRC that matches again."""
    data = encode_manifest(manifest)
    found = read_header(data)
    start = found.pop("size")
    found.update(header)
    raw = json.dumps(found).encode()
    body = data[:5] + struct.pack(">I", len(raw)) + raw + data[start:-4]
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        (b"/etc/passwd", "unsafe"),
        (b"../up", "unsafe"),
        (b"a/../../up", "unsafe"),
        (b"a//b", "unsafe"),
        (b"a/./b", "unsafe"),
        (b"a/", "unsafe"),
        (b".", "unsafe"),
        (b"x" * 4097, "longer than 4096"),
    ],
)
def test_paths_a_walk_never_makes_are_refused(path: bytes, reason: str) -> None:
    """A manifest from elsewhere (a mirror's ``verify`` reads the upstream's) names only
    plain relative paths: one that climbs out or is absolute is refused whole."""
    bad = Manifest("1", 0.0, (Entry(path, Kind.FILE, 0, 0, 0o644, 0, 0, 1),))
    with pytest.raises(ManifestError, match=reason):
        decode_manifest(encode_manifest(bad))


def test_paths_out_of_tree_order_or_repeated_are_refused() -> None:
    entry = Entry(b"b", Kind.FILE, 0, 0, 0o644, 0, 0, 1)
    for paths in ((b"b", b"a"), (b"a", b"a"), (b"a-b", b"a/x")):
        bad = Manifest("1", 0.0, tuple(entry._replace(path=path) for path in paths))
        with pytest.raises(ManifestError, match="not in tree order"):
            decode_manifest(encode_manifest(bad))


def test_a_header_that_lies_about_the_counts_is_refused() -> None:
    """Each count is checked against what follows, and a huge one is refused before
    anything is decompressed."""
    sample = _sample()
    with pytest.raises(ManifestError, match="more than the 1000 allowed"):
        decode_manifest(_reforged(sample, entries=10**6), max_entries=1000)
    with pytest.raises(ManifestError):
        decode_manifest(_reforged(sample, entries=3))
    with pytest.raises(ManifestError, match="bytes of metadata for 4 entries"):
        decode_manifest(_reforged(sample, metadata_size=10**9))
    with pytest.raises(ManifestError):
        decode_manifest(_reforged(sample, digests=2))
    with pytest.raises(ManifestError, match="lacks a field"):
        decode_manifest(_reforged(sample, marker=None))
