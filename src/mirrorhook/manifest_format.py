"""A manifest's bytes: the on-disk and on-the-wire form (docs/design.md#the-manifest-file).

    b"MHMF"  version (1 byte)  header length (u32, big-endian)  header (JSON)
    metadata (zlib)  digests (32 bytes each, as they are)  CRC-32 of all before (u32)

The header holds the marker value, the creation time, whether the walk was settled and
the counts. The metadata is one column per field rather than one record per entry: a
column is encoded in one C call (``bytes.join``, ``array.tobytes``) instead of a million
``struct.pack`` calls, and compresses better, most of all with the bytes of each number
column grouped by significance (the high bytes of a million mtimes are nearly all alike).
Digests are random and would only cost time in zlib, so they follow the compressed part
as they are.
"""

from __future__ import annotations

import array
import itertools
import json
import operator
import re
import struct
import sys
import zlib
from collections.abc import Sequence
from typing import Any

from mirrorhook.errors import ManifestError
from mirrorhook.manifest import Entry, Kind, Manifest, tree_key, without_cyclic_gc

MAGIC = b"MHMF"
VERSION = 1
MAX_ENTRIES = 50_000_000
"""The most entries a manifest file may declare before anything is decompressed: four
times Fedora's tree, and a bound on what a hostile or corrupt file can make us allocate."""
MAX_PATH_BYTES = 4096
"""Linux's ``PATH_MAX``: a longer path cannot be one of a tree's."""
DIGEST_SIZE = 32
LEVEL = 1
"""zlib's fastest level: the 95 MB of metadata of a 1M-file tree (bench/manifest_walk.py)
compress to 23.8 MiB in 0.6 s; the default level 6 makes 21.3 MiB in 1.5 s, and the file
is mostly its digests (30.5 MiB) anyway."""

_PREAMBLE = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")
_LENGTH = struct.Struct("<Q")
_CODES = {Kind.FILE: 0, Kind.DIRECTORY: 1, Kind.SYMLINK: 2, Kind.OTHER: 3}
_KINDS = tuple(_CODES)
_SYMLINK = _CODES[Kind.SYMLINK]


def _typecode(size: int, *, signed: bool) -> str:
    """The ``array`` type code of ``size``-byte integers (the C types' sizes vary)."""
    codes = "bhilq" if signed else "BHILQ"
    return next(code for code in codes if array.array(code).itemsize == size)


# The number columns, in file order: Entry's field index, the bytes of a value, and the
# array type code. Sizes and inodes are unsigned, mtimes signed (before 1970); a link
# group of 0 is none.
_NUMBERS = tuple(
    (index, size, _typecode(size, signed=signed))
    for index, size, signed in (
        (2, 8, False),  # size
        (3, 8, True),  # mtime_ns
        (4, 2, False),  # mode
        (5, 4, False),  # uid
        (6, 4, False),  # gid
        (7, 8, False),  # inode
        (9, 4, False),  # link_group
    )
)
_SECTIONS = 2 + len(_NUMBERS) + 2
"""Paths, kinds, the number columns, symlink targets, digest flags."""
_ENTRY_BYTES = 1 + sum(size for _index, size, _code in _NUMBERS) + 1
"""The fixed-size metadata of an entry: its kind, its numbers, its digest flag."""

# A path the walk never makes and a reader must refuse: empty, absolute, ending in "/",
# with an empty, "." or ".." component. In the NUL-joined paths with a NUL at each end,
# each of these is two separators in a row, or a separator, one or two dots, a separator.
_BAD_PATH = re.compile(rb"[\0/](?:[\0/]|\.\.?[\0/])")


def encode_manifest(manifest: Manifest) -> bytes:
    """Return the file form of ``manifest``."""
    entries = manifest.entries
    columns: list[Sequence[Any]] = [
        list(map(operator.itemgetter(field), entries)) for field in range(len(Entry._fields))
    ]
    columns[9] = [group or 0 for group in columns[9]]
    sections = [
        b"\0".join(columns[0]),
        bytes(map(_CODES.__getitem__, columns[1])),
        *(_numbers(columns[index], code, size) for index, size, code in _NUMBERS),
        b"\0".join(target for target in columns[8] if target is not None),
        bytes(digest is not None for digest in columns[10]),
    ]
    raw = b"".join(_LENGTH.pack(len(section)) + section for section in sections)
    metadata = zlib.compress(raw, LEVEL)
    digests = b"".join(digest for digest in columns[10] if digest is not None)
    header = json.dumps(
        {
            "marker": manifest.marker,
            "created": manifest.created,
            "settled": manifest.settled,
            "entries": len(entries),
            "metadata": len(metadata),
            "metadata_size": len(raw),
            "digests": len(digests) // DIGEST_SIZE,
        },
        separators=(",", ":"),
    ).encode()
    body = _PREAMBLE.pack(MAGIC, VERSION, len(header)) + header + metadata + digests
    return body + _CRC.pack(zlib.crc32(body))


def read_header(data: bytes, source: str = "manifest") -> dict[str, Any]:
    """Return the header of a manifest file's first bytes (enough of them: the header is
    short); refuses a wrong magic or version. For listing stored manifests cheaply."""
    if len(data) < _PREAMBLE.size:
        raise ManifestError(source, f"truncated: {len(data)} bytes, no header")
    magic, version, length = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ManifestError(source, f"not a manifest (magic {magic!r}, not {MAGIC!r})")
    if version != VERSION:
        raise ManifestError(source, f"format version {version}, this mirrorhook reads {VERSION}")
    raw = data[_PREAMBLE.size : _PREAMBLE.size + length]
    if len(raw) < length:
        raise ManifestError(source, "truncated in the header")
    try:
        header: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise ManifestError(source, "the header is not JSON") from None
    if not (
        isinstance(header, dict)
        and isinstance(header.get("marker"), str)
        and isinstance(header.get("created"), int | float)
        and isinstance(header.get("settled", False), bool)
        and all(_count(header.get(key)) for key in _COUNTS)
    ):
        raise ManifestError(source, "the header lacks a field or has one of the wrong type")
    header["size"] = _PREAMBLE.size + length
    return header


_COUNTS = ("entries", "metadata", "metadata_size", "digests")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_manifest(
    data: bytes, source: str = "manifest", *, max_entries: int = MAX_ENTRIES
) -> Manifest:
    """Return the manifest in ``data``; ``ManifestError`` (naming ``source``) when it is not
    one: a wrong magic or version, truncated or corrupt (the CRC), inconsistent counts,
    more than ``max_entries`` entries, paths out of order or unsafe."""
    header = read_header(data, source)
    count, start = header["entries"], header["size"]
    if count > max_entries:
        raise ManifestError(source, f"{count} entries, more than the {max_entries} allowed")
    digests_at = start + header["metadata"]
    end = digests_at + header["digests"] * DIGEST_SIZE
    if len(data) < end + _CRC.size:
        raise ManifestError(source, f"truncated: {len(data)} bytes of {end + _CRC.size}")
    if len(data) > end + _CRC.size:
        raise ManifestError(source, f"{len(data) - end - _CRC.size} bytes past its end")
    if zlib.crc32(memoryview(data)[:end]) != _CRC.unpack_from(data, end)[0]:
        raise ManifestError(source, "corrupt: the CRC-32 does not match")
    sections = _sections(data[start:digests_at], header["metadata_size"], count, source)
    with without_cyclic_gc():
        entries = _entries(sections, data[digests_at:end], count, source)
    # A file from before the field was written says nothing of its walk: taken as unsettled.
    settled = header.get("settled", False)
    return Manifest(header["marker"], float(header["created"]), entries, settled=settled)


def _numbers(values: Sequence[int], code: str, size: int) -> bytes:
    """A number column, little-endian, its bytes grouped by significance (all lowest
    bytes first): the order zlib finds the most repeats in."""
    column = array.array(code, values)
    if sys.byteorder == "big":
        column.byteswap()
    raw = column.tobytes()
    return b"".join(raw[offset::size] for offset in range(size))


def _unnumbers(raw: bytes, code: str, size: int) -> array.array[int]:
    """The inverse of ``_numbers``."""
    count = len(raw) // size
    interleaved = bytearray(len(raw))
    for offset in range(size):
        interleaved[offset::size] = raw[offset * count : (offset + 1) * count]
    column = array.array(code, bytes(interleaved))
    if sys.byteorder == "big":
        column.byteswap()
    return column


def _sections(compressed: bytes, size: int, count: int, source: str) -> list[bytes]:
    """The metadata's sections (``size`` bytes once decompressed), each checked for the
    length ``count`` entries imply."""
    # Bounded before anything is decompressed: no metadata of ``count`` entries is longer
    # than this, and zlib stops at ``size`` (a hostile file cannot make it fill memory).
    if size > _SECTIONS * _LENGTH.size + count * (_ENTRY_BYTES + 2 * (MAX_PATH_BYTES + 1)):
        raise ManifestError(source, f"{size} bytes of metadata for {count} entries")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, size + 1)
    except zlib.error as err:
        raise ManifestError(source, f"corrupt metadata: {err}") from None
    if len(raw) != size or not inflater.eof or inflater.unused_data:
        raise ManifestError(source, "the metadata is not as long as the header says")
    widths = [1, *(width for _index, width, _code in _NUMBERS)]  # kinds, then the numbers
    sections: list[bytes] = []
    offset = 0
    for number in range(_SECTIONS):
        if offset + _LENGTH.size > len(raw):
            raise ManifestError(source, "truncated metadata")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        section = raw[offset : offset + length]
        offset += length
        fixed = widths[number - 1] * count if 1 <= number <= len(widths) else None
        if len(section) != length or fixed not in (None, length):
            raise ManifestError(source, f"metadata section {number} has the wrong length")
        sections.append(section)
    if offset != len(raw):
        raise ManifestError(source, "bytes past the metadata's last section")
    return sections


def _entries(sections: list[bytes], digests: bytes, count: int, source: str) -> tuple[Entry, ...]:
    """The entries the checked sections describe."""
    joined, kinds, *number_sections, targets_joined, flags = sections
    if not count:
        return ()
    paths = joined.split(b"\0")
    if len(paths) != count or _BAD_PATH.search(b"\0" + joined + b"\0"):
        raise ManifestError(source, "a path is empty or unsafe, or there are too many")
    if max(map(len, paths)) > MAX_PATH_BYTES:
        raise ManifestError(source, f"a path is longer than {MAX_PATH_BYTES} bytes")
    keys = [tree_key(path) for path in paths]
    if not all(map(bytes.__lt__, keys, itertools.islice(keys, 1, None))):
        raise ManifestError(source, "the paths are not in tree order, or one is repeated")
    if max(kinds) >= len(_KINDS) or len(flags) != count or flags.strip(b"\0\1"):
        raise ManifestError(source, "an unknown kind or digest flag")
    symlinks = kinds.count(_SYMLINK)
    targets = targets_joined.split(b"\0") if symlinks else []
    if len(targets) != symlinks or (not symlinks and targets_joined):
        raise ManifestError(source, "the symlink targets do not match the symlinks")
    if flags.count(1) * DIGEST_SIZE != len(digests):
        raise ManifestError(source, "the digests do not match their flags")
    columns: list[Sequence[Any]] = [paths, [_KINDS[code] for code in kinds]]
    for raw, (_index, size, code) in zip(number_sections, _NUMBERS, strict=True):
        columns.append(_unnumbers(raw, code, size))
    next_target = iter(targets).__next__
    next_digest = iter(
        [digests[at : at + DIGEST_SIZE] for at in range(0, len(digests), DIGEST_SIZE)]
    )
    links = columns.pop()
    columns.append([next_target() if code == _SYMLINK else None for code in kinds])
    columns.append([group or None for group in links])
    columns.append([next(next_digest) if flag else None for flag in flags])
    return tuple(map(tuple.__new__, itertools.repeat(Entry), zip(*columns, strict=True)))
