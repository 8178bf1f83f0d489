"""Streaming content-defined chunking (FastCDC 2020 via pyfastcdc), tensor-aligned for safetensors.

Why the chunk boundaries do not depend on how the input is split: pyfastcdc's cut search only
looks at the next ``max_size`` bytes after a chunk start. A cut is therefore final as soon as
``max_size`` bytes past the chunk start are buffered; :meth:`StreamChunker.feed` emits exactly
those chunks and keeps the tail (less than ``max_size`` plus one fed piece) for the next feed.
At the end of a segment every remaining cut is final.

Why segments: when the stream starts with a valid safetensors header, the file is cut into
segments — the header (``8 + N`` bytes), then each tensor's bytes (and any gap or trailing
bytes) — and each segment is chunked on its own. A fine-tuned tensor then changes only its
own chunks, and a header that grew (shifting every data offset) changes only the header
chunks. Cuts inside a tensor are rounded down to a multiple of its element size, so every
chunk of a bf16/f16/f32 tensor holds whole values and the codec can group their bytes.

Memory: the pending tail (< ``max_size`` + the last fed piece) and, while the header is being
recognised, at most ``8 + N`` bytes with ``N <= MAX_HEADER_LEN`` (10^8 bytes, the safetensors
library's own limit; real headers are KiB).
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
from pyfastcdc import FastCDC

from .safetensors_layout import SafetensorsLayout, TensorSpan, header_length, parse_layout

#: Average chunk size (FastCDC ``avg``; min avg/4, max 4*avg; mean chunk ~77 KiB on weights).
#: bench/bench_codec.py on the 1 GiB checkpoint: fine-tune dedup is identical at 32/64/128 KiB
#: (cuts are tensor-aligned: new bytes = the changed tensors) and stored/size within 0.2%;
#: 32 KiB doubles the chunk count (index, manifests, per-chunk CPU); 128 KiB saves ~10% CPU but
#: halves dedup granularity inside a tensor and for files that are not safetensors.
DEFAULT_AVG_SIZE = 64 * 1024

#: Codec hints for the dtypes whose bytes the codec knows how to group.
DTYPE_HINTS = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


@dataclass(slots=True)
class Chunk:
    """One chunk of the stream and what the codec may exploit about it."""

    data: bytes | memoryview  # a view of the fed piece, read-only
    hint: str  # "bf16" | "f16" | "f32" | ""


@dataclass(slots=True)
class TensorInfo:
    """A tensor of a safetensors file; ``offset`` is the absolute file offset of its bytes."""

    name: str
    dtype: str
    shape: list[int]
    offset: int
    length: int
    digest: str  # BLAKE3 (unkeyed) of the tensor's bytes, first 8 bytes as 16 hex digits


@dataclass(slots=True)
class _Segment:
    length: int | None  # None: to the end of the stream
    hint: str = ""
    align: int = 1
    tensor: TensorSpan | None = None


class StreamChunker:
    """Feed bytes in pieces of any size; get the same chunks as for the stream in one piece."""

    def __init__(self, avg_size: int = DEFAULT_AVG_SIZE, *, tensor_aware: bool = True,
                 defer_digests: bool = False) -> None:
        """``defer_digests``: leave the tensor digests' hashing to the caller (another thread):
        take_digest_work() after each feed/finish, run every update in order, then read tensors."""
        self._cdc = FastCDC(avg_size)  # min = avg/4, max = 4*avg; one per chunker (not shareable)
        self._max = self._cdc.max_size
        self._probing = tensor_aware
        self._head = bytearray()  # bytes held while deciding whether this is safetensors
        self._layout: SafetensorsLayout | None = None
        self._segments: list[_Segment] = []
        self._seg_index = 0
        self._seg_left: int | None = None  # bytes still to come in the current segment
        self._tail: bytes | memoryview = b""  # bytes of the current segment not yet cut (< max_size)
        self._hasher: blake3.blake3 | None = None
        self._hashers: list[blake3.blake3] = []  # one per tensor, in order
        self._defer = defer_digests
        self._digest_work: list[tuple[blake3.blake3, memoryview]] = []
        self._finished = False
        self._published: SafetensorsLayout | None = None
        self.metadata: dict[str, str] | None = None
        if not tensor_aware:
            self._start_plain()

    @property
    def avg_size(self) -> int:
        return self._cdc.avg_size

    @property
    def max_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a chunk (for the caller's memory accounting)."""
        return len(self._head) + len(self._tail)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Chunk]:
        """Complete chunks so far, in order. Chunks are views of ``data`` when it is immutable
        (bytes): feed large pieces to save copies. Mutable buffers are copied first."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not data:
            return []
        if not isinstance(data, bytes) and not (isinstance(data, memoryview) and isinstance(data.obj, bytes)):
            data = bytes(data)
        if self._probing:
            if self._head:
                self._head += data
                view = memoryview(self._head)
            else:
                view = memoryview(data)  # decide on the first piece itself when it is enough
            if not self._probe(view, at_end=False):
                if not self._head:
                    self._head += view
                return []
            self._head = bytearray()
            return self._run(view)
        return self._run(memoryview(data))

    def finish(self) -> list[Chunk]:
        """The remaining chunks; afterwards ``tensors`` and ``metadata`` are set (safetensors)."""
        if self._finished:
            return []
        out: list[Chunk] = []
        if self._probing:
            view = memoryview(self._head)
            self._probe(view, at_end=True)
            self._head = bytearray()
            out = self._run(view)
        # Completed segments were flushed as they ended; flush the open one. It is the open-ended
        # last segment unless the stream stopped inside the layout (a truncated file).
        out += self._cut(memoryview(b""), self._segments[self._seg_index], final=True)
        self._finished = True
        if self._layout is not None and self._seg_left is None:
            self._publish_tensors(self._layout)
        return out

    # -- recognising the header ---------------------------------------------------------

    def _probe(self, head: memoryview, *, at_end: bool) -> bool:
        """Decide plain vs. safetensors once enough of the head is here; True when decided."""
        if len(head) < 9 and not at_end:
            return False
        n = header_length(head[:9])
        if n is not None and len(head) < 8 + n and not at_end:
            return False
        layout = parse_layout(head[: 8 + n]) if n is not None else None
        if layout is not None:
            self._start_layout(layout)
        else:
            self._start_plain()
        self._probing = False
        return True

    def _start_plain(self) -> None:
        self._segments = [_Segment(None)]
        self._begin_segment()

    def _start_layout(self, layout: SafetensorsLayout) -> None:
        self._layout = layout
        segs = [_Segment(layout.data_start)]
        cursor = 0
        for t in layout.tensors:
            if t.begin > cursor:
                segs.append(_Segment(t.begin - cursor))
            segs.append(_Segment(t.length, DTYPE_HINTS.get(t.dtype, ""), t.item_size, t))
            cursor = t.end
        segs.append(_Segment(None))
        self._segments = segs
        self._begin_segment()

    # -- segments -------------------------------------------------------------------------

    def _begin_segment(self) -> None:
        """Enter segment ``_seg_index``, closing zero-length ones on the way."""
        while True:
            seg = self._segments[self._seg_index]
            self._seg_left = seg.length
            self._hasher = blake3.blake3() if seg.tensor is not None else None
            if seg.length != 0:
                return
            self._close_segment()
            self._seg_index += 1

    def _close_segment(self) -> None:
        if self._hasher is not None:
            self._hashers.append(self._hasher)
            self._hasher = None

    def _run(self, data: memoryview) -> list[Chunk]:
        out: list[Chunk] = []
        while data:
            seg = self._segments[self._seg_index]
            take = len(data) if self._seg_left is None else min(len(data), self._seg_left)
            piece, data = data[:take], data[take:]
            if self._hasher is not None:
                if self._defer:
                    self._digest_work.append((self._hasher, piece))
                else:
                    self._hasher.update(piece)
            if self._seg_left is not None:
                self._seg_left -= take
            done = self._seg_left == 0
            out += self._cut(piece, seg, final=done)
            if done:
                self._close_segment()
                self._seg_index += 1
                self._begin_segment()
        return out

    def _cut(self, piece: memoryview, seg: _Segment, *, final: bool) -> list[Chunk]:
        """Cut tail + piece; keep the tail whose cuts could still depend on later bytes.

        A cut is final once its chunk start has ``max_size`` bytes after it (or the segment has
        ended). The tail kept is therefore shorter than ``max_size``: chunks that start in it
        need at most ``max_size`` bytes of the next piece, so only that much is copied next to
        it; the rest of a piece is cut where it lies, and its chunks are views of it (no copy:
        the pieces are immutable, and a chunk keeps its piece alive until it is encoded).
        """
        out: list[Chunk] = []
        tail, max_size = self._tail, self._max
        offset = 0
        if tail:
            head = piece[:max_size]
            work = memoryview(b"".join((tail, head)))
            n = len(work)
            if len(head) == len(piece):  # the whole piece fits next to the tail
                pos = self._cuts(work, 0, n if final else n - max_size + 1, seg, out)
                self._tail = work[pos:]
                return out
            offset = self._cuts(work, 0, len(tail), seg, out) - len(tail)  # chunks starting in the tail
        n = len(piece)
        pos = self._cuts(piece, offset, n if final else n - max_size + 1, seg, out)
        self._tail = piece[pos:]
        return out

    def _cuts(self, work: memoryview, pos: int, stop: int, seg: _Segment, out: list[Chunk]) -> int:
        """Append the chunks of ``work`` that start before ``stop``; the position after them.

        One cut_buf generator runs over the rest of ``work``: a cut depends only on the
        ``max_size`` bytes after its chunk's start, all present for a start before ``stop``.
        A cut rounded down to whole items moves the next start, so the generator restarts there.
        """
        align, hint = seg.align, seg.hint
        cdc = self._cdc
        while pos < stop:
            for c in cdc.cut_buf(work[pos:]):
                length = c.length
                if align > 1 and length % align and length > align:
                    out.append(Chunk(work[pos : pos + length - length % align], hint))
                    pos += length - length % align
                    break
                out.append(Chunk(work[pos : pos + length], hint))
                pos += length
                if pos >= stop:
                    break
            else:
                break  # work is exhausted (final)
        return pos

    def _publish_tensors(self, layout: SafetensorsLayout) -> None:
        self._published = layout
        self.metadata = dict(layout.metadata) if layout.metadata is not None else None

    def take_digest_work(self) -> list[tuple[blake3.blake3, memoryview]]:
        """With defer_digests: the (hasher, bytes) updates to run, in order, before ``tensors``."""
        work, self._digest_work = self._digest_work, []
        return work

    @property
    def tensors(self) -> list[TensorInfo] | None:
        """The tensors of a safetensors stream, after finish(); None for other streams."""
        layout = self._published
        if layout is None:
            return None
        base = layout.data_start
        return [
            TensorInfo(t.name, t.dtype, list(t.shape), base + t.begin, t.length, h.hexdigest(length=8))
            for t, h in zip(layout.tensors, self._hashers, strict=True)
        ]
