"""The head/tail sample serves describers exactly the bytes of the stream, or says it can't."""

from __future__ import annotations

import itertools
import os

import pytest
from gitmld.daemon.content_sample import StreamSample
from gitmld.daemon.describe.base import DescribeError
from hypothesis import given, settings
from hypothesis import strategies as st


def feed_in_pieces(data: bytes, cuts: list[int], head: int, tail: int) -> StreamSample:
    """The sample after feeding `data` split at `cuts`."""
    sample = StreamSample(head_bytes=head, tail_bytes=tail)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        sample.feed(data[a:b])
    return sample


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    head=st.integers(min_value=0, max_value=64),
    tail=st.integers(min_value=1, max_value=64),
    offset=st.integers(min_value=0, max_value=420),
    length=st.integers(min_value=0, max_value=100),
)
def test_reads_match_the_stream_or_raise(data, cuts, head, tail, offset, length):
    sample = feed_in_pieces(data, cuts, head, tail)
    assert sample.size == len(data)
    reader = sample.reader()
    end = min(offset + length, len(data))
    inside_head = end <= head
    inside_tail = offset >= len(data) - tail
    if end <= offset or inside_head or inside_tail or len(data) <= head + tail:
        assert reader.read(offset, length) == data[offset:end]
    else:
        with pytest.raises(DescribeError):
            reader.read(offset, length)


def test_large_stream_keeps_only_head_and_tail():
    sample = StreamSample(head_bytes=1024, tail_bytes=512)
    blob = os.urandom(1 << 20)
    for i in range(0, len(blob), 4096):
        sample.feed(blob[i : i + 4096])
    reader = sample.reader()
    assert reader.read(0, 1024) == blob[:1024]
    assert reader.read(len(blob) - 512, 512) == blob[-512:]
    assert reader.read(len(blob) - 10, 100) == blob[-10:]
    with pytest.raises(DescribeError, match="were not kept"):
        reader.read(2048, 10)
    assert reader.bytes_read == 1024 + 512 + 10


def test_negative_reads_are_refused():
    sample = StreamSample()
    sample.feed(b"abc")
    with pytest.raises(DescribeError):
        sample.reader().read(-1, 2)
