"""Reading server-sent events: the W3C format's rules, any split of the bytes, and the
bounds that keep a hostile stream from growing the receiver's memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorhook.sse import Event, EventReader, StreamError

STREAM = (
    b": keep-alive\n\n"
    b'event: announcement\nid: msg_1\ndata: {"a":1}\n\n'
    b"retry: 5000\r\n"
    b"data: first line\r\ndata: second line\r\n\r\n"
    b"event: announcement\rid: msg_2\rdata:no space\r\r"
    b"id\n\n"
)
EXPECTED = [
    Event("announcement", '{"a":1}', "msg_1"),
    Event("message", "first line\nsecond line", "msg_1"),
    Event("announcement", "no space", "msg_2"),
]


def test_events_are_read_with_every_line_ending() -> None:
    reader = EventReader()
    assert reader.feed(STREAM) == EXPECTED
    assert reader.retry == 5000
    assert reader.last_id == ""  # a bare "id" line resets it, as the format says


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    reader = EventReader()
    bounds = [0, *sorted(cuts), len(STREAM)]
    events = []
    for start, end in itertools.pairwise(bounds):
        events += reader.feed(STREAM[start:end])
    assert events == EXPECTED


def test_a_line_over_the_bound_drops_the_stream_even_before_it_ends() -> None:
    reader = EventReader(max_line=100)
    reader.feed(b"data: " + b"x" * 90)
    with pytest.raises(StreamError, match="longer than 100 bytes"):
        reader.feed(b"x" * 20)


def test_many_data_lines_cannot_add_up_past_the_bound() -> None:
    reader = EventReader(max_line=100)
    with pytest.raises(StreamError, match="data longer than 100 bytes"):
        reader.feed(b"data: 0123456789\n" * 20)


def test_an_event_without_data_is_not_dispatched() -> None:
    assert EventReader().feed(b"event: announcement\nid: x\n\n") == []
