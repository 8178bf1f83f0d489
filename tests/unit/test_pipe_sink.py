"""The daemon's direct smudge writer: whole, full-size pkt-lines into a pipe, whatever the pieces."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from gitmld.daemon.channel import RequestError
from gitmld.daemon.pipe_sink import PipeSink, open_peer_stdout
from gitmld.proto import pktline


def _drain(fd: int, out: bytearray) -> None:
    while data := os.read(fd, 1 << 20):
        out += data


@pytest.mark.parametrize("sizes", [[1], [65516], [65517], [100_000, 3, 70_000, 65516 * 3 + 5], [10] * 7000])
def test_pieces_become_full_packets_with_the_same_bytes(sizes: list[int]) -> None:
    pieces = [os.urandom(n) for n in sizes]
    r, w = os.pipe()
    os.set_blocking(w, False)
    received = bytearray()
    reader = threading.Thread(target=_drain, args=(r, received))
    reader.start()

    async def write_all() -> int:
        sink = PipeSink(w)  # the sink closes w
        try:
            for piece in pieces:
                await sink.write(piece)
            await sink.finish()
        finally:
            sink.close()
        return sink.written

    try:
        written = asyncio.run(write_all())
    finally:
        reader.join(30)
        os.close(r)
    assert written == sum(sizes)
    parser = pktline.PktLineReader()
    parser.feed(bytes(received))
    events = list(parser)
    assert all(isinstance(e, pktline.Data) for e in events), "content packets only: no flush"
    packets = [e.data for e in events if isinstance(e, pktline.Data)]
    assert b"".join(packets) == b"".join(pieces)
    assert sum(len(p) + pktline.HEADER_SIZE for p in packets) == len(received), "no partial packet at the end"
    assert all(len(p) == pktline.MAX_PAYLOAD for p in packets[:-1]), "every packet but the last is full"


def test_a_reader_that_left_is_a_clear_error() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.close(r)

    async def write() -> None:
        sink = PipeSink(w)
        try:
            await sink.write(b"x" * 200_000)
        finally:
            sink.close()

    with pytest.raises(RequestError, match="git stopped reading"):
        asyncio.run(write())


def test_without_finish_the_pipe_holds_only_whole_packets() -> None:
    """An error mid-file: the bytes of an unfinished packet are never written, so the filter's
    status=error can follow what is in the pipe."""
    r, w = os.pipe()
    os.set_blocking(w, False)

    async def write() -> None:
        sink = PipeSink(w)
        await sink.write(b"y" * 100_000)  # one full packet written, 34,484 bytes held back
        sink.close()

    asyncio.run(write())
    received = os.read(r, 1 << 20)
    os.close(r)
    assert received == b"fff0" + b"y" * pktline.MAX_PAYLOAD


@pytest.mark.parametrize("pid", [-1, 0, 2**22 + 12345])
def test_no_peer_pid_or_no_such_process_is_unsupported(pid: int) -> None:
    with pytest.raises(RequestError) as info:
        open_peer_stdout(pid, 1, 2)
    assert info.value.code == "unsupported"


def test_a_pipe_other_than_the_one_named_is_refused() -> None:
    r, w = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(w, 1)  # our stdout is now a pipe, but not the (dev, ino) the request names
        with pytest.raises(RequestError, match="is not the pipe the client named") as info:
            open_peer_stdout(os.getpid(), 0, 0)
        st = os.fstat(1)
        os.close(open_peer_stdout(os.getpid(), st.st_dev, st.st_ino))  # the right one opens
    finally:
        os.dup2(saved, 1)
        for fd in (saved, r, w):
            os.close(fd)
    assert info.value.code == "unsupported"
