"""The webhook body (docs/design.md#body): building, encoding and strictly decoding
``mirror.updated``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorhook.errors import PayloadError
from mirrorhook.message import MAX_FIELD_LENGTH, Update, decode, new_update

NOW = 1_700_000_000
STAMP = "2023-11-14T22:13:20Z"


def _document(**changes: Any) -> dict[str, Any]:
    """Return a valid body document with top-level ``changes`` applied."""
    document: dict[str, Any] = {
        "type": "mirror.updated",
        "timestamp": STAMP,
        "data": {"marker": "CURRENT", "current": "1700000000", "source": "upstream"},
    }
    document.update(changes)
    return document


def _with_data(**changes: Any) -> bytes:
    """Return a body whose ``data`` object has ``changes`` applied (``None`` drops a key)."""
    document = _document()
    document["data"].update(changes)
    document["data"] = {key: value for key, value in document["data"].items() if value is not None}
    return json.dumps(document).encode()


def test_new_update_encodes_and_decodes_to_itself() -> None:
    """decode(update.encode()) gives back the same Update."""
    update = new_update("CURRENT", "2024-05-01 12:00 build 7", "ius-upstream", NOW)
    assert decode(update.encode()) == update


def test_non_ascii_marker_content_round_trips() -> None:
    """Marker content is opaque text: any Unicode survives the wire."""
    update = new_update("CURRENT", 'été 🌞 \\ " \n', "upstream-é", NOW)
    assert decode(update.encode()) == update


def test_encoded_body_has_the_wire_format_of_spec() -> None:
    """docs/design.md#the-webhook-wire-format: type, RFC 3339 timestamp, and data with marker,
    current and source."""
    body = new_update("CURRENT", "1700000000", "upstream", NOW).encode()
    assert json.loads(body) == _document()


def test_new_update_stamps_rfc3339_utc_seconds() -> None:
    """The timestamp is RFC 3339 in UTC, to the second, with a ``Z``."""
    update = new_update("CURRENT", "x", "upstream", NOW + 0.75)
    assert update.timestamp == STAMP
    assert datetime.fromisoformat(update.timestamp) == datetime.fromtimestamp(NOW, UTC)


def test_decode_accepts_fields_of_maximum_length() -> None:
    """Fields of exactly MAX_FIELD_LENGTH characters are accepted."""
    longest = "x" * MAX_FIELD_LENGTH
    update = decode(_with_data(current=longest, source=longest))
    assert update.current == longest
    assert update.source == longest


REJECTED = [
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b'{"type": "mirror.updated", "x": "\xe9"}', id="latin1-in-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b'{"type": "mirror.updated",', id="truncated-json"),
    pytest.param(b"[]", id="json-array"),
    pytest.param(json.dumps([_document()]).encode(), id="document-in-array"),
    pytest.param(b'"mirror.updated"', id="json-string"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"42", id="json-number"),
    pytest.param(json.dumps(_document(type="mirror.deleted")).encode(), id="wrong-type"),
    pytest.param(json.dumps(_document(type=None)).encode(), id="null-type"),
    pytest.param(
        json.dumps({k: v for k, v in _document().items() if k != "type"}).encode(),
        id="missing-type",
    ),
    pytest.param(
        json.dumps({k: v for k, v in _document().items() if k != "data"}).encode(),
        id="missing-data",
    ),
    pytest.param(json.dumps(_document(data=[])).encode(), id="data-array"),
    pytest.param(json.dumps(_document(data="CURRENT")).encode(), id="data-string"),
    pytest.param(
        json.dumps({k: v for k, v in _document().items() if k != "timestamp"}).encode(),
        id="missing-timestamp",
    ),
    pytest.param(json.dumps(_document(timestamp=NOW)).encode(), id="number-timestamp"),
    pytest.param(_with_data(marker=None), id="missing-marker"),
    pytest.param(_with_data(current=None), id="missing-current"),
    pytest.param(_with_data(source=None), id="missing-source"),
    pytest.param(_with_data(current=1700000000), id="number-current"),
    pytest.param(_with_data(marker=["CURRENT"]), id="array-marker"),
    pytest.param(_with_data(source={"name": "x"}), id="object-source"),
    pytest.param(_with_data(current=True), id="bool-current"),
    pytest.param(_with_data(marker="x" * (MAX_FIELD_LENGTH + 1)), id="long-marker"),
    pytest.param(_with_data(current="x" * (MAX_FIELD_LENGTH + 1)), id="long-current"),
    pytest.param(_with_data(source="x" * (MAX_FIELD_LENGTH + 1)), id="long-source"),
    pytest.param(
        json.dumps(_document(timestamp="x" * (MAX_FIELD_LENGTH + 1))).encode(),
        id="long-timestamp",
    ),
]


@pytest.mark.parametrize("body", REJECTED)
def test_decode_rejects_with_payload_error_only(body: bytes) -> None:
    """A body that is not the §4 document raises PayloadError (a 400), never anything else."""
    with pytest.raises(PayloadError):
        decode(body)


def test_decode_rejects_deeply_nested_json_with_payload_error() -> None:
    """A body of 5000 nested arrays (far below max_body) is a PayloadError, not a crash."""
    with pytest.raises(PayloadError):
        decode(b"[" * 5000 + b"]" * 5000)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.just("mirror.updated"), _JSON),
        "timestamp": _JSON,
        "data": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"marker": _JSON, "current": _JSON, "source": _JSON}
            ),
            _JSON,
        ),
    },
)
_BODIES = st.one_of(
    st.binary(max_size=300),
    _JSON.map(json.dumps).map(str.encode),
    _SHAPED.map(json.dumps).map(str.encode),
)


@given(body=_BODIES)
def test_decode_raises_only_payload_error_for_any_bytes(body: bytes) -> None:
    """For arbitrary bytes, decode() returns an Update of string fields or raises PayloadError."""
    try:
        update = decode(body)
    except PayloadError:
        return
    assert isinstance(update, Update)
    fields = (update.marker, update.current, update.source, update.timestamp)
    assert all(isinstance(field, str) and len(field) <= MAX_FIELD_LENGTH for field in fields)
